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
from fractions import Fraction
from typing import Any

import numpy as np

from tilepipe.errors import InputError, StoreError
from tilepipe.geometry import AxisFootprint, Footprint, TileGrid, Window, round_up
from tilepipe.model.facts import ModelFacts
from tilepipe.store.info import STATUS_FREE, STATUS_NOT_DONE, ResultInfo, SceneInfo

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_BATCH_GPU",
    "EMPTY_BATCH",
    "JOIN_MARGIN",
    "JOIN_MAX",
    "RunPlan",
    "TileJob",
    "batches",
    "plan_jobs",
    "plan_result",
    "output_grid",
    "output_transform",
    "joins_pay",
    "plan_run",
    "shifted",
    "touching",
    "touches_border",
]

#: Busy tiles per task, and whole tile windows per model call, where no batch size is given
#: (:func:`tilepipe.run`, :func:`tilepipe.conv_sparse`): a GPU takes bigger batches.
DEFAULT_BATCH, DEFAULT_BATCH_GPU = 8, 32

#: Empty tiles per task at most. Each costs a copied chunk (its class's bytes, compressed once per
#: worker), a millisecond or so. Empty tiles are spread over about two tasks per worker, whatever
#: their number, so that a grid's perimeter (16,380 border tiles on a 2^22 px grid of 1024-px tiles)
#: makes as many tasks as a small grid's: the task count follows the busy tiles, not the grid. This
#: bound only keeps one task to seconds (and a retried one cheap) on grids past 2^24 px a side.
EMPTY_BATCH = 8192

#: Empty tiles per task at least, where there are few: spread over the workers like busy ones.
_EMPTY_MIN = 16


@dataclass(frozen=True, slots=True)
class TileJob:
    """One output tile: its core in output pixels, the input window that computes it
    exactly, and the stored window of the scene tile ``source`` that holds that input.

    ``(row, col)`` number the tile in the result's grid; ``source`` is the scene
    tile read for it (the same tile, except for output that a model grows past
    the scene's last tile). ``need`` may reach past the scene into the zero
    padding of a strided model's reference (see :mod:`tilepipe.geometry.footprint`):
    only its part inside the scene is stored. ``empty`` says the stored window
    holds no value: the output is the model's response to zeros, which depends
    only on ``need.shape`` and where the core sits in it (which scene borders
    the window touches).
    """

    row: int
    col: int
    out_core: Window
    need: Window
    stored: Window
    empty: bool
    source: tuple[int, int] | None = None
    produced: Window | None = None  # the output of a model run on ``need``; None: ``need`` itself (stride 1)

    @property
    def tile(self) -> tuple[int, int]:
        """The scene tile ``(row, col)`` whose stored window holds this job's input."""
        return self.source or (self.row, self.col)

    @property
    def core_in_output(self) -> Window:
        """The core relative to the output of a model run on ``need``."""
        return self.out_core.relative_to(self.produced or self.need)

    @property
    def empty_class(self) -> tuple[tuple[int, int], Window]:
        """Key of the empty-tile response class: window shape and core position in it."""
        return (self.need.shape, self.core_in_output)


def output_grid(scene_shape: tuple[int, int], tile_size: tuple[int, int], footprint: Footprint) -> tuple[int, int]:
    """The result's tile size ``(rows, cols)`` in output pixels: the scene's, times the output's scale.

    Raises
    ------
    StoreError
        Where a strided model needs tiles that are multiples of its stride and
        the scene's are not (a scene of one tile along an axis needs nothing).
    """
    out = []
    axes = (footprint.rows, footprint.cols)
    for tile, length, axis, name in zip(tile_size, scene_shape, axes, ("rows", "cols"), strict=True):
        if tile >= length:  # one tile along this axis: it takes the whole output
            out.append(max(1, axis.output_length(length)))
            continue
        if tile % axis.step:
            raise StoreError(
                f"the model's stride is {axis.step} px but the scene's tiles are {tile} px along {name}; "
                f"ingest again with a tile size that is a multiple of {axis.step} "
                f"(e.g. --tile-size {round_up(tile, axis.step)})"
            )
        out.append(int(tile * Fraction(axis.scale)))
    return (out[0], out[1])


@dataclass(frozen=True, slots=True)
class _Axis:
    """One axis of the output tile grid, each entry per output tile along it: its core
    ``[out_start, out_stop)``, the scene tile holding its input, the input window ``need``, the
    stored window of that scene tile, and the output a model run on ``need`` produces."""

    out: list[tuple[int, int]]
    source: list[int]
    need: list[tuple[int, int]]
    stored: list[tuple[int, int]]
    produced: list[tuple[int, int]]
    touches: np.ndarray  # bool: ``need`` reaches an end of the (padded) scene

    def __len__(self) -> int:
        return len(self.out)


def _plan_axis(axis: AxisFootprint, length: int, out_len: int, out_size: int, tile: int, halo: int,
               scene_tiles: int) -> _Axis:
    out, source, need, stored, produced = [], [], [], [], []
    padded = axis.padded(length)
    for start, stop, src in _axis_spans(out_len, out_size, scene_tiles):
        a, b = axis.span(start, stop, length)
        s0 = src * tile
        window = (max(s0 - halo, 0), min(s0 + tile + halo, length))
        inside = (max(a, 0), min(b, length))
        if not (window[0] <= inside[0] and inside[1] <= window[1]):
            raise ValueError(f"Expected the stored window {window} to contain {inside}.")
        made = axis.output_span(a, b)
        if not (made[0] <= start and stop <= made[1]):
            raise ValueError(f"Expected the output {made} of {(a, b)} to contain {(start, stop)}.")
        out.append((start, stop))
        source.append(src)
        need.append((a, b))
        stored.append(window)
        produced.append(made)
    touches = np.array([a == 0 or b == padded for a, b in need], dtype=bool)
    return _Axis(out, source, need, stored, produced, touches)


def _axes(grid: TileGrid, footprint: Footprint) -> tuple[_Axis, _Axis]:
    out_shape = footprint.output_shape(grid.shape)
    out_tile = output_grid(grid.shape, grid.tile_size, footprint)
    fps = (footprint.rows, footprint.cols)
    made = [_plan_axis(fps[k], grid.shape[k], out_shape[k], out_tile[k], grid.tile_size[k], grid.halo,
                       grid.grid_shape[k]) for k in range(2)]
    return made[0], made[1]


def _job(rows: _Axis, cols: _Axis, i: int, j: int, empty: bool) -> TileJob:
    (r0, r1), (c0, c1) = rows.out[i], cols.out[j]
    src = (rows.source[i], cols.source[j])
    (na, nb), (ma, mb) = rows.need[i], cols.need[j]
    (sa, sb), (ta, tb) = rows.stored[i], cols.stored[j]
    (pa, pb), (qa, qb) = rows.produced[i], cols.produced[j]
    return TileJob(i, j, Window(r0, r1, c0, c1), Window(na, nb, ma, mb), Window(sa, sb, ta, tb), empty,
                   None if src == (i, j) else src, Window(pa, pb, qa, qb))


def plan_jobs(grid: TileGrid, footprint: Footprint, nnz: np.ndarray | None = None,
              only: np.ndarray | None = None) -> list[TileJob]:
    """Plan the output tiles of a scene tiled by ``grid`` (whose halo must cover the footprint).

    Output tiles are the scene's tiles scaled by the model's output scale; the
    last along each axis also takes any output past the scene's last tile.
    ``nnz`` is the per-tile count of values in the stored windows (None: all non-empty).
    ``only``: a boolean mask over the output tile grid; only those tiles are planned
    (the others never become Python objects). Costs O(tile rows + tile cols) plus
    O(tiles planned).
    """
    rows, cols = _axes(grid, footprint)
    if only is None:
        picked: Iterable[tuple[int, int]] = ((i, j) for i in range(len(rows)) for j in range(len(cols)))
    else:
        picked = zip(*(idx.tolist() for idx in np.nonzero(only)), strict=True)
    return [_job(rows, cols, i, j, nnz is not None and int(nnz[rows.source[i], cols.source[j]]) == 0)
            for i, j in picked]


def _axis_spans(out_len: int, size: int, scene_tiles: int) -> list[tuple[int, int, int]]:
    """Output tiles along one axis: ``(start, stop, scene tile that holds its input)``.

    Output a model grows past the scene (``ZeroPadding2D`` not undone) is read
    from the scene's last tile.
    """
    count = max(1, -(-out_len // size))
    return [(i * size, min((i + 1) * size, out_len), min(i, scene_tiles - 1)) for i in range(count)]


def touches_border(job: TileJob, padded_shape: tuple[int, int]) -> bool:
    """Whether the tile's input window touches an edge of the (padded) scene of ``padded_shape = (rows, cols)``."""
    n = job.need
    return n.row_start == 0 or n.col_start == 0 or n.row_stop == padded_shape[0] or n.col_stop == padded_shape[1]


def shifted(transform: Sequence[float], dx: int, dy: int) -> tuple[float, float, float, float, float, float]:
    """The affine transform moved by ``(dx, dy)`` pixels (the output offset of ``valid`` layers)."""
    return output_transform(transform, (Fraction(1), Fraction(1)), (Fraction(dy), Fraction(dx)))


def output_transform(
    transform: Sequence[float], scale: tuple[Fraction, Fraction], offset: tuple[Fraction | int, Fraction | int]
) -> tuple[float, float, float, float, float, float]:
    """The transform of an output whose pixel ``(j, i)`` has its corner at input ``(j / scale + offset)``.

    ``scale`` and ``offset`` are ``(rows, cols)``; the transform is rasterio's
    ``(a, b, c, d, e, f)``, mapping ``(col, row)`` to ``(x, y)``.
    """
    a, b, c, d, e, f = (float(v) for v in transform[:6])
    (sy, sx), (oy, ox) = scale, offset
    return (
        a / float(sx), b / float(sy), c + a * float(ox) + b * float(oy),
        d / float(sx), e / float(sy), f + d * float(ox) + e * float(oy),
    )


def batches(jobs: Iterable[TileJob], size: int, workers: int, *, join: bool = False) -> list[tuple[TileJob, ...]]:
    """Tasks: busy tiles first, then empty tiles of one shape together.

    Non-empty tiles go in tasks of up to ``size``, but small enough that every
    worker gets about two tasks (a few busy tiles must not all land on one
    worker), tiles of one window shape together. With ``join`` (see
    :func:`joins_pay`), busy tiles that touch (8-neighbours) go in one task where
    they are at most :data:`JOIN_MAX` (a cluster or a road across a tile edge is
    then covered by rectangles across it, see :func:`tilepipe.execute.compute.plan_pieces`);
    a larger group is cut row by row. Empty tiles, which cost a write each, are
    spread likewise, in tasks of 16 to :data:`EMPTY_BATCH`.
    """
    ordered = sorted(jobs, key=lambda j: (j.empty, j.need.shape, j.row, j.col))
    busy = [j for j in ordered if not j.empty]
    empty = ordered[len(busy):]
    busy_size = max(1, min(size, -(-len(busy) // (2 * max(workers, 1)))))
    empty_size = max(_EMPTY_MIN, min(EMPTY_BATCH, -(-len(empty) // (2 * max(workers, 1)))))
    out = _joined_tasks(busy, busy_size) if join else _same_shaped(busy, busy_size)
    out.extend(_same_shaped(empty, empty_size))
    return out


def _same_shaped(jobs: list[TileJob], size: int) -> list[tuple[TileJob, ...]]:
    """``jobs`` (sorted by window shape) cut into tasks of up to ``size``, one window shape each."""
    out: list[tuple[TileJob, ...]] = []
    current: list[TileJob] = []
    for job in jobs:
        if current and (len(current) >= size or current[0].need.shape != job.need.shape):
            out.append(tuple(current))
            current = []
        current.append(job)
    if current:
        out.append(tuple(current))
    return out


def _joined_tasks(busy: list[TileJob], size: int) -> list[tuple[TileJob, ...]]:
    """Busy ``jobs`` in tasks of up to ``size``, a group of touching tiles of up to :data:`JOIN_MAX` in one."""
    out: list[tuple[TileJob, ...]] = []
    current: list[TileJob] = []
    for indices in touching(busy):
        group = sorted((busy[k] for k in indices), key=lambda j: (j.need.shape, j.row, j.col))
        if len(group) > max(size, JOIN_MAX):  # a large group: cut row by row, neighbours mostly together
            group.sort(key=lambda j: (j.row, j.col))
            out.extend(tuple(group[k : k + size]) for k in range(0, len(group), size))
        elif len(current) + len(group) <= size:
            current.extend(group)
        else:
            if current:
                out.append(tuple(current))
            current = list(group)
    if current:
        out.append(tuple(current))
    return out


#: Busy tiles that touch share a task only where the model's windows add at least this many pixels to
#: a rectangle (``before + after`` on an axis): a strip of a tile made busy by its neighbour's data then
#: costs a wide window of its own (a U-Net's 96 px). Below it (the demo model's 6 px) the strip is cheap,
#: and the tiles stay spread over the workers.
JOIN_MARGIN = 32


def joins_pay(footprint: Footprint) -> bool:
    """Whether a run of a model of this ``footprint`` puts touching busy tiles in one task (:func:`batches`)."""
    return max(footprint.rows.before + footprint.rows.after, footprint.cols.before + footprint.cols.after) \
        >= JOIN_MARGIN


#: Busy tiles that touch go in one task up to this many (a 3 x 3 neighbourhood), beyond the task size.
JOIN_MAX = 9


def touching(jobs: Sequence[TileJob]) -> list[list[int]]:
    """Indices of ``jobs`` in groups of tiles that touch (8-neighbours in the output tile grid), each group
    in ascending order, the groups in order of their first member."""
    at = {(j.row, j.col): k for k, j in enumerate(jobs)}
    group_of = [-1] * len(jobs)
    groups: list[list[int]] = []
    for first in range(len(jobs)):
        if group_of[first] >= 0:
            continue
        group_of[first] = len(groups)
        members, todo = [], [first]
        while todo:
            k = todo.pop()
            members.append(k)
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    n = at.get((jobs[k].row + dr, jobs[k].col + dc))
                    if n is not None and group_of[n] < 0:
                        group_of[n] = len(groups)
                        todo.append(n)
        groups.append(sorted(members))
    return groups


def run_identity(scene: SceneInfo, model_sha256: str) -> dict[str, Any]:
    """What makes two runs the same run: the scene's source and tiling, and the model file."""
    return {
        "scene": {**scene.source, "tile_size": list(scene.tile_size), "halo": scene.halo},
        "model_sha256": model_sha256,
    }


def plan_result(
    scene: SceneInfo, facts: ModelFacts, *, scene_name: str = ""
) -> tuple[ResultInfo, tuple[float, ...]]:
    """The result store a run of ``facts``' model over ``scene`` writes, and its fill values.

    The output covers the scene at the model's output scale, shrunk by ``valid``
    layers and moved by their offset; its tiles are the scene's, scaled. The
    fill values, one per output band (float32 values), are each band's response
    deep inside an all-zero scene: what the tiles :func:`plan_run` finds free
    read as, in every band.

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
    padded = footprint.padded_shape(scene.shape)
    if padded[0] < footprint.rows.min_length or padded[1] < footprint.cols.min_length:
        raise InputError(
            f"{scene_name}: a {scene.shape[0]} x {scene.shape[1]} scene is smaller than the model's footprint "
            f"({footprint.rows.min_length} x {footprint.cols.min_length} px at least)"
        )
    tile_size = output_grid(scene.shape, scene.tile_size, footprint)
    info = ResultInfo(
        shape=(len(facts.interior), out_rows, out_cols),
        transform=output_transform(
            scene.transform, footprint.scale, (footprint.rows.offset, footprint.cols.offset)
        ),
        crs_wkt=scene.crs_wkt,
        tile_size=tile_size,
        identity=run_identity(scene, facts.sha256),
    )
    return info, tuple(float(np.float32(v)) for v in facts.interior)


@dataclass(frozen=True, slots=True)
class RunPlan:
    """What one run does. Tiles are :class:`TileJob` values; counts are tiles.

    ``free`` is a boolean mask over the output tile grid: empty tiles away from every
    scene border whose response is, in every band, that band's fill value in the store,
    recorded :data:`~tilepipe.store.result.STATUS_FREE`, never computed or written (the
    one case where an absent chunk is a value). They are never Python objects: a grid of
    millions of tiles costs a byte per tile here. ``tasks`` hold every other tile still
    to do, batched; each of them writes every band's chunk.
    """

    total: int
    already_done: int
    free: np.ndarray
    tasks: tuple[tuple[TileJob, ...], ...]
    #: The tiles of ``tasks``, a boolean mask over the output tile grid.
    work: np.ndarray | None = None

    @property
    def todo(self) -> int:
        """Tiles that go to the workers."""
        return sum(len(batch) for batch in self.tasks)

    @property
    def free_count(self) -> int:
        """Tiles recorded free."""
        return int(np.count_nonzero(self.free))

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
    fill_values: Sequence[float],
    batch_size: int,
    workers: int,
) -> RunPlan:
    """Plan the tiles of a run of ``facts``' model over ``scene``, in O(tiles that become tasks).

    Which tiles are done, empty, free or on a border is decided with numpy over the
    grids (a byte or two per tile); only the tiles that go to the workers are listed.

    Parameters
    ----------
    scene, facts
        The scene store's description and the model's facts.
    nnz
        Values per stored tile window, ``(tile_rows, tile_cols)``: zero means empty.
    status
        The result store's status grid of an earlier, unfinished run of the same
        identity: tiles not ``STATUS_NOT_DONE`` are skipped. None: a new run.
    fill_values
        What the chunks of free tiles, never written, read as: one value per
        output band (the result store's, :attr:`~tilepipe.store.result.ResultStore.fill_values`).
    batch_size, workers
        Busy tiles per task at most, and how many workers share the tasks.
    """
    rows, cols = _axes(scene.grid, facts.footprint)
    shape = (len(rows), len(cols))
    empty = np.asarray(nnz)[np.ix_(rows.source, cols.source)] == 0
    todo = np.ones(shape, bool) if status is None else np.asarray(status) == STATUS_NOT_DONE
    # An empty interior tile is free only where every band's response is that band's fill value:
    # true by construction of a new store (its fill values are the interior responses), not
    # necessarily of a format 2 store being resumed (band 0's response for every band).
    interior = np.asarray(facts.interior, dtype=np.float32)
    fills = np.asarray(fill_values, dtype=np.float32)
    free_interior = facts.interior_uniform and interior.shape == fills.shape and bool(np.all(interior == fills))
    border = rows.touches[:, None] | cols.touches[None, :]
    if status is not None:
        # A tile recorded free that cannot be free (it holds data, lies on a border, or the store's
        # fill values are not the interior response) was never done: its status was lost before it
        # was first written (a run killed at its start), and free is what an absent chunk reads as.
        todo |= (np.asarray(status) == STATUS_FREE) & ~(empty & ~border & free_interior)
    free = todo & empty & ~border if free_interior else np.zeros(shape, bool)
    work = todo & ~free
    jobs = [_job(rows, cols, i, j, bool(empty[i, j])) for i, j in zip(*(x.tolist() for x in np.nonzero(work)),
                                                                           strict=True)]
    total = shape[0] * shape[1]
    return RunPlan(
        total=total,
        already_done=total - int(np.count_nonzero(todo)),
        free=free,
        tasks=tuple(batches(jobs, batch_size, workers, join=joins_pay(facts.footprint))),
        work=work,
    )
