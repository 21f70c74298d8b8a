"""Planning a run: a scene's description, a model's facts and a status grid in, a frozen plan out.

Pure: no I/O, no Dask, no TensorFlow. :func:`plan_result` says what the result
store of a run is (output shape, grid, fill value, georeferencing, identity);
:func:`plan_run` says which tiles to compute, which empty tiles are free, and
how tiles are batched into tasks. Both are plain functions of their arguments,
so tests drive them directly.

Order of ideas: a :class:`TileJob` is one output tile (its core, the input
window that computes it exactly, the stored window that holds that input);
:func:`plan_jobs` lists them for a tile grid; a :class:`RunPlan` groups the ones
still to do.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tilepipe.errors import InputError, StoreError
from tilepipe.geometry import Footprint, TileGrid, Window
from tilepipe.model.facts import ModelFacts
from tilepipe.store.result import STATUS_NOT_DONE, ResultInfo
from tilepipe.store.scene import SceneInfo

__all__ = [
    "EMPTY_BATCH",
    "RunPlan",
    "TileJob",
    "batches",
    "plan_jobs",
    "plan_result",
    "plan_run",
    "shifted",
    "touches_border",
]

#: Empty tiles per task: each costs a write, not a model call.
EMPTY_BATCH = 16


@dataclass(frozen=True, slots=True)
class TileJob:
    """One output tile: its core in output pixels, the input window that computes it
    exactly, and the stored window of the scene tile that holds that input.

    ``empty`` says the stored window holds no value: the output is the model's
    response to zeros, which depends only on ``need.shape`` and where the core
    sits in it (which scene borders the window touches).
    """

    row: int
    col: int
    out_core: Window
    need: Window
    stored: Window
    empty: bool

    @property
    def core_in_output(self) -> Window:
        """The core relative to the output of a model run on ``need`` (output pixels start where ``need`` does)."""
        return Window(
            self.out_core.row_start - self.need.row_start,
            self.out_core.row_stop - self.need.row_start,
            self.out_core.col_start - self.need.col_start,
            self.out_core.col_stop - self.need.col_start,
        )

    @property
    def empty_class(self) -> tuple[tuple[int, int], Window]:
        """Key of the empty-tile response class: window shape and core position in it."""
        return (self.need.shape, self.core_in_output)


def plan_jobs(grid: TileGrid, footprint: Footprint, nnz: np.ndarray | None = None) -> list[TileJob]:
    """Plan every output tile of a scene tiled by ``grid`` (whose halo must cover the footprint).

    ``nnz`` is the per-tile count of values in the stored windows (None: all non-empty).
    Tiles whose core lies wholly past an output that ``valid`` layers shrank have no job.
    """
    out_rows, out_cols = footprint.output_shape(grid.shape)
    jobs = []
    for tile in grid:
        out_core = tile.core.clip(out_rows, out_cols)
        if out_core.size == 0:
            continue
        need = footprint.input_window(out_core, grid.shape)
        if not tile.window.contains(need):
            raise ValueError(f"Expected the stored window {tile.window} to contain {need}.")
        empty = nnz is not None and int(nnz[tile.row, tile.col]) == 0
        jobs.append(TileJob(tile.row, tile.col, out_core, need, tile.window, empty))
    return jobs


def touches_border(job: TileJob, shape: tuple[int, int]) -> bool:
    """Whether the tile's input window touches an edge of a scene of ``shape = (rows, cols)``."""
    n = job.need
    return n.row_start == 0 or n.col_start == 0 or n.row_stop == shape[0] or n.col_stop == shape[1]


def shifted(transform: Sequence[float], dx: int, dy: int) -> tuple[float, float, float, float, float, float]:
    """The affine transform moved by ``(dx, dy)`` pixels (the output offset of ``valid`` layers)."""
    a, b, c, d, e, f = (float(v) for v in transform[:6])
    return (a, b, c + a * dx + b * dy, d, e, f + d * dx + e * dy)


def batches(jobs: Iterable[TileJob], size: int, workers: int) -> list[tuple[TileJob, ...]]:
    """Tasks: same-shaped jobs together, non-empty first.

    Non-empty tiles go in tasks of up to ``size``, but small enough that every
    worker gets about two tasks (a few busy tiles must not all land on one
    worker); empty tiles, which cost a write each, go :data:`EMPTY_BATCH` to a task.
    """
    ordered = sorted(jobs, key=lambda j: (j.empty, j.need.shape, j.row, j.col))
    busy = sum(1 for j in ordered if not j.empty)
    busy_size = max(1, min(size, -(-busy // (2 * max(workers, 1)))))
    out: list[tuple[TileJob, ...]] = []
    current: list[TileJob] = []
    for job in ordered:
        if current:
            same_group = (current[0].empty, current[0].need.shape) == (job.empty, job.need.shape)
            limit = EMPTY_BATCH if current[0].empty else busy_size
            if len(current) >= limit or not same_group:
                out.append(tuple(current))
                current = []
        current.append(job)
    if current:
        out.append(tuple(current))
    return out


def run_identity(scene: SceneInfo, model_sha256: str) -> dict[str, Any]:
    """What makes two runs the same run: the scene's source and tiling, and the model file."""
    return {
        "scene": {**scene.source, "tile_size": list(scene.tile_size), "halo": scene.halo},
        "model_sha256": model_sha256,
    }


def plan_result(scene: SceneInfo, facts: ModelFacts, *, scene_name: str = "") -> tuple[ResultInfo, float]:
    """The result store a run of ``facts``' model over ``scene`` writes, and its fill value.

    The output is the scene's grid shrunk by ``valid`` layers and moved by their
    offset; tiles keep the scene's tile size. The fill value is band 0's response
    deep inside an all-zero scene: what the tiles :func:`plan_run` finds free read as.

    Raises
    ------
    StoreError
        The scene store holds less halo than the model needs.
    InputError
        The scene is smaller than the model's footprint.
    """
    footprint = facts.footprint
    if footprint.halo > scene.halo:
        raise StoreError(
            f"{scene_name}: the model needs a halo of {footprint.halo} px but the store holds {scene.halo}; "
            f"ingest again with halo >= {footprint.halo} (tilepipe ingest --halo {footprint.halo})"
        )
    out_rows, out_cols = footprint.output_shape(scene.shape)
    if out_rows <= 0 or out_cols <= 0:
        raise InputError(
            f"{scene_name}: a {scene.shape[0]} x {scene.shape[1]} scene is smaller than the model's footprint"
        )
    info = ResultInfo(
        shape=(len(facts.interior), out_rows, out_cols),
        transform=shifted(scene.transform, footprint.cols.offset, footprint.rows.offset),
        crs_wkt=scene.crs_wkt,
        tile_size=scene.tile_size,
        identity=run_identity(scene, facts.sha256),
    )
    return info, float(np.float32(facts.interior[0]))


@dataclass(frozen=True, slots=True)
class RunPlan:
    """What one run does. Tiles are :class:`TileJob` values; counts are tiles.

    ``free`` are empty tiles away from every scene border whose response is the
    store's fill value in every band: recorded :data:`~tilepipe.store.result.STATUS_FREE`,
    never computed or written (the one case where an absent chunk is a value).
    ``tasks`` hold every other tile still to do, batched; each of them writes
    every band's chunk.
    """

    total: int
    already_done: int
    free: tuple[TileJob, ...]
    tasks: tuple[tuple[TileJob, ...], ...]

    @property
    def todo(self) -> int:
        """Tiles that go to the workers."""
        return sum(len(batch) for batch in self.tasks)

    @property
    def empty_classes(self) -> frozenset[tuple[tuple[int, int], Window]]:
        """Distinct empty-tile classes the workers will meet (each costs one small model call per worker)."""
        return frozenset(job.empty_class for batch in self.tasks for job in batch if job.empty)


def plan_run(
    scene: SceneInfo,
    facts: ModelFacts,
    nnz: np.ndarray,
    *,
    status: np.ndarray | None = None,
    fill_value: float,
    batch_size: int,
    workers: int,
) -> RunPlan:
    """Plan the tiles of a run of ``facts``' model over ``scene``.

    Parameters
    ----------
    scene, facts
        The scene store's description and the model's facts.
    nnz
        Values per stored tile window, ``(tile_rows, tile_cols)``: zero means empty.
    status
        The result store's status grid of an earlier, unfinished run of the same
        identity: tiles not ``STATUS_NOT_DONE`` are skipped. None: a new run.
    fill_value
        What the chunks of free tiles, never written, read as.
    batch_size, workers
        Busy tiles per task at most, and how many workers share the tasks.
    """
    jobs = plan_jobs(scene.grid, facts.footprint, nnz)
    todo = [j for j in jobs if status is None or status[j.row, j.col] == STATUS_NOT_DONE]
    # An empty interior tile is free only where every band's response is the fill value.
    free_interior = bool(np.all(np.asarray(facts.interior, dtype=np.float32) == np.float32(fill_value)))
    free = tuple(j for j in todo if j.empty and free_interior and not touches_border(j, scene.shape))
    free_ids = {(j.row, j.col) for j in free}
    work = [j for j in todo if (j.row, j.col) not in free_ids]
    return RunPlan(
        total=len(jobs),
        already_done=len(jobs) - len(todo),
        free=free,
        tasks=tuple(batches(work, batch_size, workers)),
    )
