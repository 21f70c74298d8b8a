"""A run: a model over a scene store into a result store. Lock, open or create the store, plan, execute,
check, record.

The result store is locked (:func:`tilepipe.store.lock.store_lock`) from before
anything looks at it until its record is written, so a second run on the same
output is refused, ``--overwrite`` included. A store is marked complete only
after :meth:`ResultStore.verify` found every tile done and every chunk its
status promises. A rerun that finds a damaged store (a chunk deleted, a tile
not done in a store marked complete) does not call it up to date: it records
those tiles as not done and computes them again (``RunReport.repaired``).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from tilepipe._version import __version__
from tilepipe.errors import IncompleteRunError, StoreError
from tilepipe.execute.cluster import worker_count
from tilepipe.execute.executor import Task, execute
from tilepipe.execute.models import ModelFile, facts_on_worker, model_file
from tilepipe.execute.preflight import check_workers
from tilepipe.execute.tasks import BatchDone, RunSpec, run_tiles
from tilepipe.location import Location, existing_output, refuse_overlaps
from tilepipe.model.facts import ModelFacts
from tilepipe.plan import DEFAULT_BATCH, DEFAULT_BATCH_GPU, RunPlan, plan_result, plan_run
from tilepipe.store import remove_store
from tilepipe.store.info import utc_timestamp
from tilepipe.store.lock import store_lock
from tilepipe.store.result import (
    STATUS_COMPUTED,
    STATUS_EMPTY,
    STATUS_FREE,
    STATUS_NOT_DONE,
    ResultInfo,
    ResultStore,
    chunks_touched,
)
from tilepipe.store.scene import SceneStore

__all__ = ["RunReport", "run_model"]

@dataclass(frozen=True, slots=True)
class RunReport:
    """What a run did. Times in seconds; throughput in output megapixels per second.

    ``repaired``: tiles of a damaged store (a chunk missing, or not done in a store
    marked complete) that this run recorded as not done and computed again.
    ``model_pixels``: input pixels the model ran on; ``affected_pixels``: output pixels
    of busy tiles whose footprint holds a value (the data dilated by the footprint),
    the least any exact run must compute. Their ratio is the block-sparse overhead.
    """

    result: str
    tiles_total: int
    computed: int
    empty: int
    failed: int
    already_done: int
    wall_seconds: float
    megapixels_per_second: float
    tiles_per_worker: dict[str, int] = field(default_factory=dict)
    model_seconds: float = 0.0
    up_to_date: bool = False
    run_id: str = ""
    repaired: int = 0
    model_pixels: int = 0
    affected_pixels: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunReport:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def summary(self) -> str:
        """One human line."""
        if self.up_to_date:
            return f"{self.result}: up to date ({self.tiles_total} tiles), nothing to do"
        repaired = f" ({self.repaired} damaged tiles found and recomputed)" if self.repaired else ""
        pixels = ""
        if self.computed:
            pixels = (f"; model on {self.model_pixels / 1e6:.3g} Mpx for "
                      f"{self.affected_pixels / 1e6:.3g} Mpx affected by data")
        return (
            f"tiles total {self.tiles_total} / computed {self.computed} / empty {self.empty} / "
            f"failed {self.failed}; wall {self.wall_seconds:.2f} s; "
            f"{self.megapixels_per_second:.3g} Mpx/s{pixels}{repaired}"
        )


class _Tally:
    """The client's record of finished tasks: the status grid, counts per worker.

    The client alone writes the status chunks, as tasks finish, and only after a
    task's writes succeeded. The grid is kept here; the chunks whose tiles changed
    are written every :attr:`FLUSH` tiles, every :attr:`FLUSH_SECONDS` seconds where
    tiles were done since, and at the end: a killed run loses at most that many
    tiles' records, or a few seconds of work, which a rerun computes again. Writes
    follow the tiles done, never the grid: a flush rewrites only the chunks it must.
    """

    FLUSH = 256
    FLUSH_SECONDS = 5.0

    def __init__(self, result: ResultStore, status: np.ndarray | None) -> None:
        self.result = result
        self.status = (np.full(result.info.grid_shape, result.status_fill, np.uint8) if status is None
                       else status.copy())
        self.chunks = result.status_chunks
        self.dirty = np.zeros(tuple(-(-n // c) for n, c in zip(self.status.shape, self.chunks, strict=True)), bool)
        self.unwritten = 0
        self.flushed = time.monotonic()
        self.per_worker: dict[str, int] = {}
        self.computed = self.empty = 0
        self.model_seconds = 0.0
        self.model_pixels = self.affected_pixels = 0

    def add(self, _task: Task[BatchDone], done: BatchDone) -> None:
        self.set(done.computed, STATUS_COMPUTED)
        self.set(done.empty, STATUS_EMPTY)
        self.computed += len(done.computed)
        self.empty += len(done.empty)
        self.per_worker[done.worker] = self.per_worker.get(done.worker, 0) + len(done.computed) + len(done.empty)
        self.model_seconds += done.model_seconds
        self.model_pixels += done.model_pixels
        self.affected_pixels += done.affected_pixels
        if self.unwritten >= self.FLUSH or time.monotonic() - self.flushed >= self.FLUSH_SECONDS:
            self.flush()

    def set(self, tiles: tuple[tuple[int, int], ...], status: int) -> None:
        cy, cx = self.chunks
        for row, col in tiles:
            self.status[row, col] = status
            self.dirty[row // cy, col // cx] = True
        self.unwritten += len(tiles)

    def set_mask(self, mask: np.ndarray, status: int) -> None:
        """Record ``status`` for the tiles of ``mask`` (only those whose status changes are written)."""
        changed = mask & (self.status != status)
        self.status[changed] = status
        self.dirty |= chunks_touched(changed, self.chunks)
        self.unwritten += int(np.count_nonzero(changed))

    def flush(self) -> None:
        if self.unwritten:
            self.result.write_status(self.status, self.dirty)
            self.dirty[...] = False
            self.unwritten = 0
        self.flushed = time.monotonic()


def run_model(
    scene_path: str,
    model: Any,
    result_path: str,
    *,
    client: Any,
    gpu: bool = False,
    batch_size: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> RunReport:
    """Run ``model`` over the scene store at ``scene_path`` into ``result_path`` on ``client``.

    A result store of the same scene and model that is complete, and whose
    chunks agree with its record, is left as it is (the report says
    ``up_to_date``); an incomplete or damaged one is resumed, and only tiles
    not yet done (or damaged) are computed. A different existing store is
    replaced only with ``overwrite``.

    Raises
    ------
    InputError
        The result would be, contain or lie inside the scene store or the model file.
    StoreError
        Another process holds the result store's lock; or the store was found
        damaged at the end of the run (removed or changed under it).
    IncompleteRunError
        Tiles failed; it carries the report, and the store stays incomplete.
    """
    started = time.perf_counter()
    model_path = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
    refuse_overlaps([result_path], [scene_path, model_path])  # before anything is written or removed
    location = Location.of(result_path)
    # Held from before anything looks at the result store until its record is written: a
    # second run is refused at once, before it starts anything on the cluster.
    with store_lock(location, by="run"):
        scene = SceneStore.open(scene_path)
        with model_file(model) as mf:
            # Every worker checks it can open the inputs and write the output, and starts
            # TensorFlow, all at once: the first worker up does not take every task then.
            check_workers(client, inputs=[scene_path, mf.path], outputs=[result_path], start_tensorflow=True)
            facts = facts_on_worker(client, mf, scene.info.bands, gpu=gpu)
            layout, fills = plan_result(scene.info, facts, scene_name=scene_path)
            layout = replace(layout, provenance=_provenance(scene, mf, facts))
            result, resumed = _open_or_create(location, layout, fills, overwrite)
            repaired = _repair(result) if resumed else 0
            if resumed and result.complete:
                stored = result.info.report or {}
                return RunReport.from_dict({**stored, "up_to_date": True, "result": result_path})
            result.mark_incomplete()
            status = result.status() if resumed else None
            plan = plan_run(
                scene.info, facts, scene.index(),
                status=status,
                # The store's own: a resumed format 2 store has band 0's for every band.
                fill_values=result.fill_values,
                batch_size=batch_size or (DEFAULT_BATCH_GPU if gpu else DEFAULT_BATCH),
                workers=worker_count(client),
            )
            spec = RunSpec(scene_path, result_path, mf.path, mf.sha256, facts.footprint, scene.info.bands,
                           batch_size or 0, str(result.info.provenance.get("run_id", "")))
            return _execute(plan, spec, result, status, client, gpu, progress, started, repaired)

def _repair(result: ResultStore) -> int:
    """Record the tiles whose chunks disagree with their status as not done (and the store incomplete).

    Returns how many tiles the run must compute again. A complete store whose
    record is exact is left untouched.
    """
    tiles: set[tuple[int, int]] = set()
    ny, nx = result.info.grid_shape
    for d in result.damage():
        if d.problem == "status missing":  # every tile its chunk recorded is unknown now
            rows, cols = result.status_chunk_tiles(d.row, d.col)
            tiles.update((r, c) for r in range(rows.start, min(rows.stop, ny))
                         for c in range(cols.start, min(cols.stop, nx)))
        else:
            tiles.add((d.row, d.col))
    if tiles:
        result.mark_incomplete()  # first: a run killed while resetting leaves a store that says so
        result.reset(sorted(tiles))
    return len(tiles)


def _provenance(scene: SceneStore, mf: ModelFile, facts: ModelFacts) -> dict[str, Any]:
    """What the result store records of how it was made (a run id and time are added when it is created)."""
    return {
        "model_sha256": mf.sha256,
        "model_path": mf.shown,
        "footprint": facts.footprint.describe(),
        "halo": scene.info.halo,
        "tile_size": list(scene.info.tile_size),
        "tilepipe_version": __version__,
        "scene_store": _shown(scene.path),
    }


def _shown(path: str) -> str:
    """A store's path as recorded in provenance: absolute where it is local, as the model's is."""
    location = Location.of(path)
    return location.path if location.is_local else path


def _open_or_create(
    location: Location, layout: ResultInfo, fills: tuple[float, ...], overwrite: bool
) -> tuple[ResultStore, bool]:
    """The result store to write: an existing one of the same run (resumed), or a new one for ``layout``."""

    def same_run() -> bool:
        try:
            return ResultStore.open(location).info.identity == layout.identity
        except StoreError:
            return False

    decision = existing_output(location, overwrite=overwrite, reusable=same_run, holds="another run")
    if decision == "reuse":
        return ResultStore.open(location), True
    if decision == "replace":
        remove_store(location)
    provenance = {
        **layout.provenance,
        "run_id": uuid.uuid4().hex,
        "created": utc_timestamp(),
    }
    return ResultStore.create(location, replace(layout, provenance=provenance), fill_values=fills), False


def _execute(
    plan: RunPlan, spec: RunSpec, result: ResultStore, status: np.ndarray | None, client: Any, gpu: bool,
    progress: bool, started: float, repaired: int = 0,
) -> RunReport:
    """Run the plan's tasks, record every tile as it is done, check the store, and write the report."""
    tally = _Tally(result, status)
    tally.set_mask(plan.free, STATUS_FREE)  # nothing to compute or write
    # Every tile the run must do is recorded "not done" before any task starts: where free is
    # what an absent status chunk reads as, a run killed now must not leave them looking free.
    if plan.work is not None:
        tally.set_mask(plan.work & (tally.status == STATUS_FREE), STATUS_NOT_DONE)
    tally.flush()
    tasks = [
        # Busy tiles first: they are the long tasks, empty ones fill the gaps.
        Task(run_tiles, (spec, batch), weight=len(batch), priority=0 if batch[0].empty else 1, gpu=gpu)
        for batch in plan.tasks
    ]
    try:
        execution = execute(
            tasks, tally.add, client=client, name="run", progress=progress,
            total=plan.total, initial=plan.total - plan.todo, tolerate_failures=True,
        )
    except BaseException:
        # Whatever stopped the run, the tiles whose writes succeeded stay recorded (a rerun skips them).
        with contextlib.suppress(Exception):
            tally.flush()
        raise
    tally.flush()
    wall = time.perf_counter() - started
    _, rows, cols = result.info.shape
    report = RunReport(
        result=result.path,
        tiles_total=plan.total,
        computed=tally.computed,
        empty=tally.empty + plan.free_count,
        failed=execution.failed_weight,
        already_done=plan.already_done,
        wall_seconds=wall,
        megapixels_per_second=rows * cols / 1e6 / wall if wall > 0 else 0.0,
        tiles_per_worker=tally.per_worker,
        model_seconds=tally.model_seconds,
        run_id=spec.run_id,
        repaired=repaired,
        model_pixels=tally.model_pixels,
        affected_pixels=tally.affected_pixels,
    )
    if execution.failed:
        # Tiles fail when the store was removed or replaced under the run: that is the error to report.
        result.still_here()
        result.finish(complete=False, report=report.to_dict())
        raise IncompleteRunError(
            f"{result.path}: {execution.failed_weight} of {plan.total} tiles failed ({execution.first_error}); "
            "the result is incomplete: run again to resume",
            report,
        )
    # Proven, not assumed: every tile done and every chunk its status promises present. This also
    # catches a store removed or replaced under this run (by hand, or by a process that ignored the lock).
    result.verify(all_done=True)
    result.finish(complete=True, report=report.to_dict())
    return report
