"""Planning and running a model over a scene store into a result store, on Dask."""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tilepipe._version import __version__
from tilepipe.errors import InputError, StoreError, TilepipeError
from tilepipe.execute.engine import TileJob, plan_jobs
from tilepipe.execute.tasks import RunSpec, run_jobs
from tilepipe.store._zarr import remove_store, store_exists
from tilepipe.store.result import STATUS_EMPTY, STATUS_NOT_DONE, ResultStore
from tilepipe.store.scene import SceneStore

__all__ = ["RunReport", "run_model"]


@dataclass(frozen=True, slots=True)
class RunReport:
    """What a run did. Times in seconds; throughput in output megapixels per second."""

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
        return (
            f"tiles total {self.tiles_total} / computed {self.computed} / empty {self.empty} / "
            f"failed {self.failed}; wall {self.wall_seconds:.2f} s; "
            f"{self.megapixels_per_second:.3g} Mpx/s"
        )


def _touches_border(job: TileJob, shape: tuple[int, int]) -> bool:
    n = job.need
    return n.row_start == 0 or n.col_start == 0 or n.row_stop == shape[0] or n.col_stop == shape[1]


def _batches(jobs: list[TileJob], size: int, workers: int) -> list[tuple[TileJob, ...]]:
    """Tasks: same-shaped jobs together, non-empty first.

    Non-empty tiles go in tasks of up to ``size``, but small enough that every
    worker gets about two tasks (a few busy tiles must not all land on one
    worker); empty tiles, which cost a write each, go 16 to a task.
    """
    busy = sum(1 for j in jobs if not j.empty)
    busy_size = max(1, min(size, -(-busy // (2 * max(workers, 1)))))
    ordered = sorted(jobs, key=lambda j: (j.empty, j.need.shape, j.row, j.col))
    out: list[tuple[TileJob, ...]] = []
    current: list[TileJob] = []
    for job in ordered:
        new_group = (current[0].empty, current[0].need.shape) != (job.empty, job.need.shape) if current else False
        limit = 16 if current and current[0].empty else busy_size
        if current and (len(current) >= limit or new_group):
            out.append(tuple(current))
            current = []
        current.append(job)
    if current:
        out.append(tuple(current))
    return out


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

    A result store of the same scene and model that is complete is left as it
    is (the report says ``up_to_date``); an incomplete one is resumed, and only
    tiles not yet done are computed. A different existing store is replaced
    only with ``overwrite``.
    """
    from tilepipe.execute.preflight import check_workers
    from tilepipe.model.facts import ModelFacts, model_facts
    from tilepipe.model.loader import file_sha256, model_sha256

    t_start = time.perf_counter()
    scene = SceneStore.open(scene_path)
    info = scene.info
    tmpdir = None
    if isinstance(model, (str, os.PathLike)):
        model_path = os.fspath(model)
        sha = model_sha256(model_path)
    else:
        # A model object: saved for the workers to load. TensorFlow is here already.
        from tilepipe.conv import resolve_model

        model_path, tmpdir = _model_file(model, resolve_model(model))
        sha = file_sha256(model_path)
    try:
        # Every worker checks it can open the inputs and write the output, and starts
        # TensorFlow, all at once: the first worker up does not take every task then.
        check_workers(client, inputs=[scene_path, model_path], outputs=[result_path], start_tensorflow=True)
        # A worker loads the model (and keeps it for the tasks); this process needs no TensorFlow.
        facts: ModelFacts | None = _FACTS.get((sha, info.bands))
        if facts is None:
            facts = client.submit(
                model_facts, model_path, sha, info.bands, pure=False, resources={"GPU": 1} if gpu else None
            ).result()
            _FACTS[(sha, info.bands)] = facts
        footprint = facts.footprint
        if footprint.halo > info.halo:
            raise StoreError(
                f"{scene_path}: the model needs a halo of {footprint.halo} px but the store holds {info.halo}; "
                f"ingest again with halo >= {footprint.halo} (tilepipe ingest --halo {footprint.halo})"
            )
        out_rows, out_cols = footprint.output_shape(info.shape)
        if out_rows <= 0 or out_cols <= 0:
            raise InputError(
                f"{scene_path}: a {info.shape[0]} x {info.shape[1]} scene is smaller than the model's footprint"
            )
        interior = np.asarray(facts.interior, dtype=np.float32)
        fill = float(interior[0])
        identity = {
            "scene": {**info.source, "tile_size": list(info.tile_size), "halo": info.halo},
            "model_sha256": sha,
        }
        grid = info.grid
        result, resumed = _open_or_create(
            result_path, identity, overwrite,
            create=lambda: ResultStore.create(
                result_path,
                shape=(int(interior.size), out_rows, out_cols),
                tile_size=info.tile_size,
                # Tiles whose core lies past an output that 'valid' layers shrank have no output.
                grid_shape=(-(-out_rows // info.tile_size[0]), -(-out_cols // info.tile_size[1])),
                fill_value=fill,
                crs_wkt=info.crs_wkt,
                transform=_shifted(info.transform, footprint.cols.offset, footprint.rows.offset),
                provenance={
                    "identity": identity,
                    "model_sha256": sha,
                    "model_path": os.path.abspath(model_path) if "://" not in model_path else model_path,
                    "footprint": footprint.describe(),
                    "halo": info.halo,
                    "tile_size": list(info.tile_size),
                    "tilepipe_version": __version__,
                    "scene_store": scene_path,
                    "run_id": uuid.uuid4().hex,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
            ),
        )
        if result.complete and resumed:
            stored = result.attrs.get("report") or {}
            report = RunReport.from_dict({**stored, "up_to_date": True, "result": result_path})
            return report
        run_id = result.attrs["provenance"]["run_id"]
        jobs = plan_jobs(grid, footprint, scene.index())
        status = result.status() if resumed else None
        todo = [j for j in jobs if status is None or status[j.row, j.col] == STATUS_NOT_DONE]
        already = len(jobs) - len(todo)
        free_interior = bool(np.all(interior == np.float32(fill)))
        free = [j for j in todo if j.empty and free_interior and not _touches_border(j, info.shape)]
        free_ids = {(j.row, j.col) for j in free}
        work = [j for j in todo if (j.row, j.col) not in free_ids]
        _record(result, [(j.row, j.col, STATUS_EMPTY) for j in free])  # nothing to compute or write
        size = batch_size or (32 if gpu else 8)  # tiles per task
        spec = RunSpec(scene_path, result_path, model_path, sha, footprint, info.bands, batch_size or 0, run_id)
        per_worker: Counter[str] = Counter()
        computed = empty = 0
        model_seconds = 0.0
        batches = _batches(work, size, len(client.scheduler_info().get("workers", {})))
        failed, first_error = 0, None
        if batches:
            futures = {
                client.submit(
                    run_jobs, spec, batch,
                    key=f"tilepipe-run-{run_id[:8]}-{i}",
                    resources={"GPU": 1} if gpu else None,
                    pure=False,
                    retries=1,
                    # Busy tiles first: they are the long tasks, empty ones fill the gaps.
                    priority=0 if batch[0].empty else 1,
                ): batch
                for i, batch in enumerate(batches)
            }
            from distributed import as_completed

            bar = _progress(len(jobs), "run", progress, initial=len(jobs) - len(work))
            pending: list[tuple[int, int, int]] = []
            for future in as_completed(futures):
                batch = futures[future]
                try:
                    out = future.result()
                except TilepipeError:
                    raise  # a user's mistake (bad model, bad store): every tile would fail alike
                except Exception as exc:  # noqa: BLE001 - a tile failure is counted, the run goes on
                    failed += len(batch)
                    first_error = first_error or f"{type(exc).__name__}: {exc}"
                    continue
                pending.extend(out["status"])
                if len(pending) >= _STATUS_FLUSH:
                    _record(result, pending)
                per_worker[out["worker"]] += out["computed"] + out["empty"]
                computed += out["computed"]
                empty += out["empty"]
                model_seconds += out["model_seconds"]
                if bar is not None:
                    bar.update(out["computed"] + out["empty"])
            _record(result, pending)
            if bar is not None:
                bar.close()
        empty += len(free)
        wall = time.perf_counter() - t_start
        report = RunReport(
            result=result_path,
            tiles_total=len(jobs),
            computed=computed,
            empty=empty,
            failed=failed,
            already_done=already,
            wall_seconds=wall,
            megapixels_per_second=out_rows * out_cols / 1e6 / wall if wall > 0 else 0.0,
            tiles_per_worker=dict(per_worker),
            model_seconds=model_seconds,
            run_id=run_id,
        )
        if failed:
            result.update_attrs(complete=False, report=report.to_dict())
            raise TilepipeError(
                f"{result_path}: {failed} of {len(jobs)} tiles failed ({first_error}); "
                "the result is incomplete: run again to resume"
            )
        result.update_attrs(complete=True, report=report.to_dict())
        result.consolidate()
        return report
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()


# What workers said of models this process ran before, by (sha256, input bands).
_FACTS: dict[tuple[str, int], Any] = {}

# Statuses are written in groups: each write rewrites the block chunks it touches.
_STATUS_FLUSH = 256


def _record(result: ResultStore, pending: list[tuple[int, int, int]]) -> None:
    """Write pending ``(row, col, status)`` records and empty the list."""
    if not pending:
        return
    table = np.asarray(pending, dtype=np.int64)
    for value in np.unique(table[:, 2]):
        sel = table[:, 2] == value
        result.set_status(table[sel, 0], table[sel, 1], int(value))
    pending.clear()


def _shifted(transform: tuple[float, ...], dx: int, dy: int) -> tuple[float, ...]:
    """The affine transform moved by ``(dx, dy)`` pixels (output offset of ``valid`` layers)."""
    a, b, c, d, e, f = transform
    return (a, b, c + a * dx + b * dy, d, e, f + d * dx + e * dy)


def _model_file(model: Any, keras_model: Any) -> tuple[str, Any]:
    """A ``.keras`` path workers can load: the given path, or the model saved to a temp folder."""
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model), None
    tmpdir = tempfile.TemporaryDirectory(prefix="tilepipe-model-")
    path = os.path.join(tmpdir.name, "model.keras")
    keras_model.save(path)
    return path, tmpdir


def _open_or_create(path: str, identity: dict[str, Any], overwrite: bool, create: Any) -> tuple[ResultStore, bool]:
    if store_exists(path):
        try:
            existing = ResultStore.open(path)
        except StoreError:
            existing = None
        same = existing is not None and existing.attrs.get("provenance", {}).get("identity") == identity
        if same and not overwrite:
            assert existing is not None
            return existing, True
        if not overwrite:
            raise StoreError(
                f"{path}: already exists and holds another run; pass overwrite=True (--overwrite) to replace it"
            )
        remove_store(path)
    return create(), False


def _progress(total: int, desc: str, enabled: bool, initial: int = 0) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="tile", initial=initial)

