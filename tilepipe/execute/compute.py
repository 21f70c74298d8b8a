"""From tile windows to output cores: the per-tile model work, wherever it runs.

Used by the Dask tasks (reading tiles from a scene store) and in-process by
:func:`tilepipe.conv_sparse`. Knows tiles as :class:`~tilepipe.plan.TileJob`
values and their data as :class:`~tilepipe.store.codec.TileData`; knows nothing
of Zarr or Dask.

Block-sparse inside a tile, and why it is exact
-----------------------------------------------
An output pixel whose footprint holds no value equals the model's response to zeros
of the tile's window class, which :func:`~tilepipe.model.responses.empty_response`
already gives for empty tiles. So a busy tile's core starts as that response; the
pixels its data can reach (:func:`tilepipe.geometry.support.affected`) are covered
with a few rectangles (:func:`~tilepipe.geometry.support.cover`), and each rectangle
is computed from its own window, made by :meth:`Footprint.input_window` exactly as a
tile's window is (grown by the footprint, aligned to the stride, clipped to the
padded scene), and pasted over. Rectangles of one window shape, from every tile of a
task, go through the model together, ``batch_size`` a call (:func:`plan_pieces`). Where the
rectangles' windows, each counted with
a fixed overhead (:data:`PIECE_OVERHEAD`), add up to more than the tile's window, the
whole window is cheaper and is computed as before.

Many small pieces of many shapes (thin lines, scattered points: a piece each) would each
cost a call. Those whose windows nothing clipped (away from the scene's borders) are laid
side by side in one input instead, a mosaic, each at a multiple of the model's total
stride: an output pixel depends only on the input within its footprint, which is inside
its piece's window, so what lies beside the window cannot change it; and the stride's
phase is the piece's own. A task lays its small pieces on sheets the shape of a tile window
(their rows cut to :data:`MOSAIC_ROWS`), where that costs fewer pixels than their calls
would (each call counted :data:`PIECE_OVERHEAD` pixels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from math import ceil
from typing import Any

import numpy as np

from tilepipe.geometry import Footprint, Window
from tilepipe.geometry.support import affected, cover
from tilepipe.model.responses import empty_response
from tilepipe.model.runner import CompiledModel, densify
from tilepipe.plan import DEFAULT_BATCH, TileJob, joins_pay, touching
from tilepipe.store.codec import TileData

__all__ = ["DENSE_FRACTION", "PIECE_OVERHEAD", "Computed", "PiecePlan", "compute_tiles", "empty_core",
           "plan_pieces"]

#: What one more model input costs beyond its pixels, in pixels (a call's and a small window's
#: overhead): about 1,500 for both the demo model and the U-Net on this kind of machine
#: (``benchmarks/crossover.py``: rectangles of one 32-px block match the whole window's cost at
#: 0.45 and 0.93 of its pixels). :func:`~tilepipe.geometry.support.cover` weighs it too: two
#: rectangles become one where that costs fewer pixels than this.
PIECE_OVERHEAD = 1500
#: A busy tile is computed whole where its rectangles cost more than this fraction of its window.
DENSE_FRACTION = 1.0
#: Side of the squares the affected pixels are first gathered into, in output pixels (rounded up
#: to a multiple of the model's output stride); rectangles are then shrunk to their pixels, merged
#: and cut by what their windows cost (pixels plus :data:`PIECE_OVERHEAD`), on a grid of half a
#: block, and their sides rounded up to half a block (up to two blocks) or a block (see
#: :func:`~tilepipe.geometry.support.cover`). On the demo scene at 5 %: model pixels 1.90x the
#: affected pixels, 64 pieces of 42 window shapes (before, 16-px blocks kept whole: 2.01x, 118
#: pieces, 41 shapes); whole 8-px blocks gave 1.83x with 234 pieces of 63 shapes.
BLOCK = 16


@dataclass(frozen=True, slots=True)
class Computed:
    """The cores of a batch of busy tiles, with what it cost.

    ``model_pixels``: input pixels the model ran on (windows of rectangles or tiles);
    ``affected_pixels``: core pixels whose footprint holds a value (all that had to be
    computed); ``sparse_tiles``: tiles computed by rectangles, the rest whole;
    ``model_calls``: batches the model ran.
    """

    cores: list[np.ndarray]
    model_pixels: int
    affected_pixels: int
    sparse_tiles: int
    model_calls: int = 0
    mosaic_calls: int = 0


@dataclass(frozen=True, slots=True)
class _Piece:
    """One model input: a window of tile ``tile``, and where its output goes in that tile's core."""

    tile: int
    window: Window  # scene input pixels
    take: Window  # output pixels to keep, relative to the model's output on ``window``
    put: Window  # where they go, relative to the tile's core
    free: bool = False  # nothing clipped ``window``: its kept output does not depend on what lies around it
    at: tuple[int, int] = (0, 0)  # where ``window`` lies in its mosaic sheet, input pixels
    sheet: int = 0  # which sheet of its call's mosaic holds it
    # A piece across neighbouring tiles (see :func:`_joined`): its output's parts in the other tiles'
    # cores, ``(tile, take, put)`` each, and the tiles whose stored windows hold ``window``'s input.
    more: tuple[tuple[int, Window, Window], ...] = ()
    sources: tuple[int, ...] = ()

    @property
    def outputs(self) -> tuple[tuple[int, Window, Window], ...]:
        """Every part of the kept output: ``(tile, take, put)``."""
        return ((self.tile, self.take, self.put), *self.more)


@dataclass(frozen=True, slots=True)
class _Call:
    """One model call: ``pieces`` stacked (``shape`` is their window's), or laid side by side on
    ``sheets`` inputs of ``shape`` (a mosaic: each piece at its ``at`` on its ``sheet``)."""

    pieces: tuple[_Piece, ...]
    shape: tuple[int, int]
    sheets: int = 0  # 0: not a mosaic

    @property
    def mosaic(self) -> bool:
        return self.sheets > 0

    @property
    def inputs(self) -> int:
        """Inputs stacked on the batch axis."""
        return self.sheets or len(self.pieces)

    @property
    def pixels(self) -> int:
        """Input pixels the model runs on."""
        return self.inputs * self.shape[0] * self.shape[1]

    def stack(self, windows: Sequence[np.ndarray]) -> np.ndarray:
        """The call's input from its pieces' windows ``(rows, cols, bands)`` each, in order:
        ``(n, rows, cols, bands)``."""
        if not self.mosaic:
            return np.stack(windows)
        out = np.zeros((self.sheets, *self.shape, windows[0].shape[-1]), dtype=np.float32)
        for piece, window in zip(self.pieces, windows, strict=True):
            (r, c), (h, w) = piece.at, window.shape[:2]
            out[piece.sheet, r : r + h, c : c + w] = window
        return out


def _entries(coords: tuple[np.ndarray, ...], stored: Window, window: Window) -> tuple[np.ndarray, ...]:
    """Entries ``coords = (rows, cols, bands, values)`` of a stored window that fall in ``window``,
    ``window``-local. ``rows`` ascend (entries are stored in C order), so the rows of ``window``
    are one slice, found by bisection: a tile cut into many rectangles is not scanned whole for each.

    ``window`` may reach past the stored window into a strided model's zero padding
    beyond the scene: there are no entries there.
    """
    r, c, b, v = coords
    r0, c0 = window.row_start - stored.row_start, window.col_start - stored.col_start
    if window.shape != stored.shape or (r0, c0) != (0, 0):
        lo, hi = np.searchsorted(r, (r0, r0 + window.height))
        r, c, b, v = r[lo:hi], c[lo:hi], b[lo:hi], v[lo:hi]
        keep = (c >= c0) & (c < c0 + window.width)
        r, c, b, v = r[keep], c[keep], b[keep], v[keep]
    return r - r0, c - c0, b, v


def _steps(footprint: Footprint) -> tuple[int, int]:
    """``(block, align)``: :data:`BLOCK`, and the model's output stride it is rounded up to a multiple of
    (a rectangle starting on it has a window whose shape does not depend on where it lies)."""
    align = 1
    for axis in (footprint.rows, footprint.cols):
        align = max(align, ceil(axis.step * axis.scale))
    return ceil(BLOCK / align) * align, align


def _cover(hit: np.ndarray, footprint: Footprint, *, thorough: bool = True) -> list[Window]:
    """:func:`~tilepipe.geometry.support.cover` of ``hit`` (output pixels) with this model's block, stride
    alignment, window margins and piece overhead (``thorough``: its every-way cuts too)."""
    block, align = _steps(footprint)
    # What a rectangle's window adds and a piece costs, in output pixels (cover's unit).
    fr, fc = footprint.rows, footprint.cols
    scale = Fraction(fr.scale) * Fraction(fc.scale)
    margin = (ceil((fr.before + fr.after) * Fraction(fr.scale)), ceil((fc.before + fc.after) * Fraction(fc.scale)))
    return cover(hit, block, margin, overhead=ceil(PIECE_OVERHEAD * scale), align=align, partition=thorough)


def _plan_tile(
    i: int, job: TileJob, data: TileData, footprint: Footprint, scene_shape: tuple[int, int],
    dense_fraction: float, coords: tuple[np.ndarray, ...] | None = None, *, thorough: bool = True,
) -> tuple[list[_Piece], int, np.ndarray | None]:
    """The pieces that compute tile ``i`` (rectangles, or its whole window), its affected pixel count, and
    its affected pixels where the pieces are rectangles (pasted over the zero response; none where no
    entry reaches the core), else None. ``thorough``: see :func:`_cover` (a tile with neighbours in its
    task is covered with them again)."""
    whole = [_Piece(i, job.need, job.core_in_output, Window(0, job.out_core.height, 0, job.out_core.width))]
    if data.is_dense:  # stored dense because it is nearly full: whole, without looking for its support
        return whole, job.out_core.size, None
    r, c, _, _ = _entries(coords or data.coords(), job.stored, job.need)
    hit = affected(r, c, job.need, job.out_core, footprint)
    count = int(np.count_nonzero(hit))
    if dense_fraction <= 0:
        return whole, count, None
    pieces, cost = [], 0
    for rect in _cover(hit, footprint, thorough=thorough):
        out = Window(rect.row_start + job.out_core.row_start, rect.row_stop + job.out_core.row_start,
                     rect.col_start + job.out_core.col_start, rect.col_stop + job.out_core.col_start)
        window = footprint.input_window(out, scene_shape)
        if not job.need.contains(window):
            return whole, count, None  # a rectangle lengthened past the tile's window: compute it whole
        cost += window.size + PIECE_OVERHEAD
        pieces.append(_Piece(i, window, out.relative_to(footprint.output_window(window)), rect,
                             free=window == footprint.free_window(out)))
    if cost > dense_fraction * job.need.size:
        return whole, count, None
    return pieces, count, hit


@dataclass(frozen=True, slots=True)
class PiecePlan:
    """What :func:`compute_tiles` runs the model on, planned without running it.

    ``calls``: the model calls, each a tuple of same-shaped pieces; ``sparse``: the tiles
    computed by rectangles (the rest whole); ``affected_pixels``: core pixels whose footprint
    holds a value.
    """

    calls: tuple[_Call, ...]
    sparse: frozenset[int]
    affected_pixels: int

    @property
    def pieces(self) -> int:
        """Model inputs: rectangles' windows and whole tile windows."""
        return sum(len(call.pieces) for call in self.calls)

    @property
    def model_pixels(self) -> int:
        """Input pixels the model runs on (a mosaic's gaps included)."""
        return sum(call.pixels for call in self.calls)

    @property
    def window_shapes(self) -> int:
        """Distinct input shapes (each traced once per worker)."""
        return len({call.shape for call in self.calls})


def plan_pieces(
    jobs: Sequence[TileJob],
    data: Sequence[TileData],
    *,
    footprint: Footprint,
    scene_shape: tuple[int, int],
    batch_size: int = DEFAULT_BATCH,
    dense_fraction: float = DENSE_FRACTION,
    coords: Sequence[tuple[np.ndarray, ...] | None] | None = None,
    mosaic: bool | None = None,
    join: bool | None = None,
) -> PiecePlan:
    """The pieces that compute non-empty tiles, grouped into model calls; pure (no model, no I/O).

    Pieces of one window shape, from every tile, share calls of up to ``batch_size`` pieces.
    (Filling a call with as many small pieces as fit in ``batch_size`` whole windows' pixels
    was tried: 2-8x fewer calls, but 35-45 % slower runs on CPU workers, 5 % and 100 % of the
    demo scene alike, ``bench.py`` on 2026-12-02.) Small pieces whose windows nothing clipped
    go in mosaics instead (see the module docstring) where that is cheaper; ``mosaic``: True
    lays them so always, False never. Neighbouring tiles of the task computed by rectangles are
    covered together where that costs fewer pixels (:func:`_joined`), for a model whose windows add
    wide margins (:func:`~tilepipe.plan.joins_pay`: where a run puts touching tiles in one task);
    ``join``: True always, False never.
    """
    if join is None:
        join = joins_pay(footprint)
    if coords is None:
        coords = [None if d.is_dense else d.coords() for d in data]
    planned: list[list[_Piece]] = []
    hits: dict[int, np.ndarray] = {}
    counted = 0
    with_neighbours = {i for g in touching(jobs) if len(g) > 1 for i in g} if join else set()
    for i, job in enumerate(jobs):
        tile_pieces, count, hit = _plan_tile(i, job, data[i], footprint, scene_shape, dense_fraction, coords[i],
                                             thorough=i not in with_neighbours)
        counted += count
        if hit is not None:
            hits[i] = hit
        planned.append(tile_pieces)
    sparse = set(hits)
    pieces = _joined(jobs, planned, hits, footprint, scene_shape) if join else [p for ps in planned for p in ps]
    window = (max(j.need.height for j in jobs), max(j.need.width for j in jobs)) if jobs else (1, 1)
    sheet = _sheet(window, footprint)
    small = [p for p in pieces if p.free and p.tile in sparse and p.window.height <= sheet[0]
             and p.window.width <= sheet[1] and 2 * p.window.size <= sheet[0] * sheet[1]]
    # Sheets per call: as many as the pixels of ``batch_size`` whole tile windows.
    per_call = max(1, batch_size * window[0] * window[1] // (sheet[0] * sheet[1]))
    calls = _mosaics(small, sheet, per_call, footprint.step) if len(small) > 1 and mosaic is not False else []
    if calls and mosaic is None and (len(small) < MOSAIC_SHARE * len(pieces)
                                     or _cost(calls) >= _cost(_batched(small, batch_size))):
        calls = []  # not a task of small pieces, or the sheets' gaps cost more than the calls they save
    placed = {(p.tile, p.put) for call in calls for p in call.pieces}  # a piece's output is its own
    calls.extend(_batched([p for p in pieces if (p.tile, p.put) not in placed], batch_size))
    return PiecePlan(tuple(calls), frozenset(sparse), counted)


def _joined(jobs: Sequence[TileJob], planned: list[list[_Piece]], hits: dict[int, np.ndarray],
            footprint: Footprint, scene_shape: tuple[int, int]) -> list[_Piece]:
    """The task's pieces, neighbouring tiles computed by rectangles covered together where that is cheaper.

    A tile busy only because its neighbour's data reaches into its window computes a thin strip of
    its core, whose window reaches far into the neighbour's, whose own rectangles read much the
    same input. Where tiles of one task touch (8-neighbours), their affected pixels are covered as
    one mask over their cores; each rectangle's window is made as any rectangle's is (in scene
    coordinates: grown by the footprint, aligned to the stride, clipped to the padded scene), its
    input gathered from the stored windows of the group's tiles, and its output cut along the
    tiles' cores. Exact: a kept output pixel depends only on the input within its footprint, which
    lies inside its own tile's stored window (that is what a stored window is), so input of the
    window that no tile of the group holds (a busy tile of another task: read as zeros here)
    cannot change it; the rest of such a rectangle's output is not kept. Used where the windows
    cost fewer pixels (and :data:`PIECE_OVERHEAD` each) than the tiles' own pieces.
    """
    out = [p for i, ps in enumerate(planned) if i not in hits for p in ps]
    tiles = sorted(hits)
    for group in ([tiles[k] for k in members] for members in touching([jobs[i] for i in tiles])):
        own = [p for i in group for p in planned[i]]
        joint = _group_pieces(group, jobs, hits, footprint, scene_shape) if len(group) > 1 else []
        if joint and _pixels(joint) < _pixels(own):
            out.extend(joint)
        else:
            out.extend(own)
    return out


def _pixels(pieces: list[_Piece]) -> int:
    return sum(p.window.size + PIECE_OVERHEAD for p in pieces)


def _group_pieces(group: list[int], jobs: Sequence[TileJob], hits: dict[int, np.ndarray],
                  footprint: Footprint, scene_shape: tuple[int, int]) -> list[_Piece]:
    """Rectangles over the group's cores together (see :func:`_joined`)."""
    cores = [jobs[i].out_core for i in group]
    frame = Window(min(c.row_start for c in cores), max(c.row_stop for c in cores),
                   min(c.col_start for c in cores), max(c.col_stop for c in cores))
    mask = np.zeros(frame.shape, dtype=bool)
    for i, core in zip(group, cores, strict=True):
        mask[core.relative_to(frame).slices] = hits[i]
    stored = [jobs[i].stored for i in group]
    pieces: list[_Piece] = []
    for rect in _cover(mask, footprint):
        out = Window(rect.row_start + frame.row_start, rect.row_stop + frame.row_start,
                     rect.col_start + frame.col_start, rect.col_stop + frame.col_start)
        window = footprint.input_window(out, scene_shape)
        produced = footprint.output_window(window)
        parts = []
        for i, core in zip(group, cores, strict=True):
            part = _overlap(out, core)
            if part is not None:
                parts.append((i, part.relative_to(produced), part.relative_to(core)))
        if not parts:  # a rectangle of the group's bounding box outside its cores: nothing to keep
            continue
        sources = tuple(i for i, s in zip(group, stored, strict=True) if _overlap(window, s) is not None)
        (tile, take, put), *more = parts
        pieces.append(_Piece(tile, window, take, put, free=window == footprint.free_window(out), more=tuple(more),
                             sources=sources))
    return pieces


def _overlap(a: Window, b: Window) -> Window | None:
    """The pixels ``a`` and ``b`` share; None where they share none."""
    r0, r1 = max(a.row_start, b.row_start), min(a.row_stop, b.row_stop)
    c0, c1 = max(a.col_start, b.col_start), min(a.col_stop, b.col_stop)
    return Window(r0, r1, c0, c1) if r0 < r1 and c0 < c1 else None


def _batched(pieces: list[_Piece], batch_size: int) -> list[_Call]:
    """Pieces of one window shape stacked, ``batch_size`` a call."""
    groups: dict[tuple[int, int], list[_Piece]] = {}
    for piece in pieces:
        groups.setdefault(piece.window.shape, []).append(piece)
    return [_Call(tuple(members[k : k + batch_size]), shape)
            for shape, members in groups.items() for k in range(0, len(members), batch_size)]


def _cost(calls: list[_Call]) -> int:
    """What ``calls`` cost, in input pixels: their pixels, and :data:`PIECE_OVERHEAD` each."""
    return sum(call.pixels + PIECE_OVERHEAD for call in calls)


#: A mosaic sheet is at most a tile window (the shape whole busy tiles run in), its rows cut to
#: what it holds, rounded up to a multiple of this: a run has a few mosaic shapes (four widths,
#: four heights of a 1024-px tile's window), each traced once per worker for all its tasks and runs.
MOSAIC_ROWS = 256


#: A task lays its small pieces on sheets only where they are at least this share of its pieces: a
#: task of thin lines or scattered points is one of many calls, each costing more than its pixels.
#: Where most pieces are large (100 % occupancy: 57 small pieces among 1,536), the few sheets'
#: shapes were new to the workers in the first warm runs and cost more than they saved (``bench.py``,
#: 100 %: 1.99 - 2.56 s against 1.68 - 1.82 s without mosaics, back to back).
MOSAIC_SHARE = 0.5


def _sheet(window: tuple[int, int], footprint: Footprint) -> tuple[int, int]:
    """The shape of a mosaic's sheets, for tiles whose windows are ``window``: the window, on the stride."""
    return tuple(  # type: ignore[return-value]
        max(step, side // step * step) for side, step in zip(window, footprint.step, strict=True)
    )


def _mosaics(pieces: list[_Piece], sheet: tuple[int, int], per_call: int, step: tuple[int, int]) -> list[_Call]:
    """Small pieces laid side by side on sheets of at most ``sheet`` pixels, ``per_call`` sheets a model call.

    Exact because each piece is free (nothing clipped its window, so its kept output depends
    on its window alone) and lies at a multiple of the total stride ``step`` (the stride's
    phase is the one it has in the scene; every window's sides, and the sheet's, are
    multiples of it). Laid tallest first, each where its top edge ends highest-up, then
    leftmost (a skyline), on sheets a quarter, a half, three quarters or all of ``sheet``
    wide, whichever fills fewest pixels (a few tall pieces beside many small ones fill a
    narrow sheet better); a sheet's rows are cut to what it holds, rounded up to
    :data:`MOSAIC_ROWS`. So a run has a few sheet shapes, each traced once per worker.
    """
    ordered = sorted(pieces, key=lambda p: (-p.window.height, -p.window.width))
    widest = max(p.window.width for p in pieces)
    widths = sorted({max(step[1], sheet[1] * k // 4 // step[1] * step[1]) for k in (1, 2, 3, 4)})
    tried = [_laid(ordered, (sheet[0], w), per_call, step[0]) for w in widths if w >= widest]
    return min(tried, key=lambda calls: (sum(c.pixels for c in calls), len(calls)))


def _laid(ordered: list[_Piece], sheet: tuple[int, int], per_call: int, step: int) -> list[_Call]:
    """``ordered`` laid in that order on sheets of ``sheet`` pixels, ``per_call`` a call (see :func:`_mosaics`)."""
    laid: list[_Piece] = []
    sheets = 0
    skyline = _Skyline(sheet[1])
    for piece in ordered:
        at = skyline.place(*piece.window.shape, sheet[0])
        if at is None:  # this sheet is full: the next one
            sheets, skyline = sheets + 1, _Skyline(sheet[1])
            at = skyline.place(*piece.window.shape, sheet[0])
            assert at is not None  # a small piece fits an empty sheet
        laid.append(replace(piece, at=at, sheet=sheets))
    calls = []
    quantum = ceil(MOSAIC_ROWS / step) * step
    for first in range(0, sheets + 1, per_call):
        members = tuple(replace(p, sheet=p.sheet - first) for p in laid if first <= p.sheet < first + per_call)
        rows = max(p.at[0] + p.window.height for p in members)
        shape = (min(sheet[0], -(-rows // quantum) * quantum), sheet[1])
        calls.append(_Call(members, shape, sheets=min(per_call, sheets + 1 - first)))
    return calls


class _Skyline:
    """The top edge of what a mosaic holds: ``(col, row)`` steps, the row below which each span is filled."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.steps: list[tuple[int, int]] = [(0, 0)]  # (first col, filled rows) of each span, left to right

    def place(self, h: int, w: int, height: int) -> tuple[int, int] | None:
        """Where a ``h`` x ``w`` piece goes ``(row, col)``, taken from the skyline; None where it does not fit."""
        best: tuple[int, int] | None = None
        for i, (col, _) in enumerate(self.steps):
            if col + w > self.width:
                break
            top = 0
            for c, r in self.steps[i:]:
                if c >= col + w:
                    break
                top = max(top, r)
            if top + h <= height and (best is None or top < best[0]):  # leftmost among the highest
                best = (top, col)
        if best is None:
            return None
        self._raise(best[1], best[1] + w, best[0] + h)
        return best

    def _raise(self, start: int, stop: int, row: int) -> None:
        """Columns ``[start, stop)`` filled down to ``row``."""
        steps = [(c, r) for c, r in self.steps if c < start] + [(start, row)]
        if stop < self.width:
            steps.append((stop, next(r for c, r in reversed(self.steps) if c <= stop)))
        steps += [(c, r) for c, r in self.steps if c > stop]
        self.steps = [step for k, step in enumerate(steps) if k == 0 or steps[k - 1][1] != step[1]]


def compute_tiles(
    model: CompiledModel,
    jobs: Sequence[TileJob],
    data: Sequence[TileData],
    bands: int,
    *,
    footprint: Footprint,
    scene_shape: tuple[int, int],
    batch_size: int = DEFAULT_BATCH,
    dense_fraction: float = DENSE_FRACTION,
    mosaic: bool | None = None,
    join: bool | None = None,
) -> Computed:
    """Run the model over non-empty tiles; each core as ``(rows, cols, out_bands)``, exact.

    Each tile is computed from rectangles that cover its affected pixels, pasted over
    its class's zero response, or whole where that is cheaper (``dense_fraction``; 0:
    always whole). Model inputs of the same shape go through the model together
    (:func:`plan_pieces`: up to ``batch_size`` a call), each batch
    densified from COO through one ``tf.SparseTensor``.
    """
    coords = [None if d.is_dense else d.coords() for d in data]  # unpacked once per tile
    plan = plan_pieces(jobs, data, footprint=footprint, scene_shape=scene_shape, batch_size=batch_size,
                       dense_fraction=dense_fraction, coords=coords, mosaic=mosaic, join=join)
    cores: list[np.ndarray | None] = [None] * len(jobs)
    for i in plan.sparse:
        job = jobs[i]
        # The tile's class response: exact wherever no rectangle is pasted.
        cores[i] = np.array(empty_response(model, job.need.shape, job.core_in_output, bands, footprint))
    for call in plan.calls:
        out = model(_batch(call, jobs, data, coords, bands), recurring=call.mosaic)
        for k, piece in enumerate(call.pieces):
            for tile, take, put in piece.outputs:
                got = out[piece.sheet if call.mosaic else k][_kept(piece, take, footprint).slices]
                core = cores[tile]
                if core is None:  # a tile computed whole: its window's output is the core
                    cores[tile] = got
                else:
                    core[put.slices] = got
    done = [c for c in cores if c is not None]
    assert len(done) == len(jobs)
    return Computed(done, plan.model_pixels, plan.affected_pixels, len(plan.sparse), len(plan.calls),
                    sum(call.mosaic for call in plan.calls))


def _kept(piece: _Piece, take: Window, footprint: Footprint) -> Window:
    """Kept output pixels ``take`` of ``piece`` in its call's output: moved by where its window lies there."""
    rows, cols = (at * Fraction(axis.scale) for at, axis in zip(piece.at, (footprint.rows, footprint.cols),
                                                                  strict=True))
    assert rows.denominator == cols.denominator == 1  # a mosaic places windows at multiples of the stride
    return Window(take.row_start + int(rows), take.row_stop + int(rows),
                  take.col_start + int(cols), take.col_stop + int(cols))


def _batch(call: _Call, jobs: Sequence[TileJob], data: Sequence[TileData],
           coords: Sequence[tuple[np.ndarray, ...] | None], bands: int) -> Any:
    """The dense model input of ``call``: ``(n, rows, cols, bands)``, from COO through one SparseTensor
    (tiles stored dense go in as they are, beside the densified ones; a mosaic holds none)."""
    idx_parts, val_parts, dense = [], [], []
    for k, piece in enumerate(call.pieces):
        unpacked = coords[piece.tile]
        if unpacked is None:
            dense.append((k, piece))
            continue
        if piece.sources:
            r, c, b, v = _gathered(piece, jobs, coords)
        else:
            r, c, b, v = _entries(unpacked, jobs[piece.tile].stored, piece.window)
        n = piece.sheet if call.mosaic else k
        idx_parts.append(np.stack([np.full(r.size, n), r + piece.at[0], c + piece.at[1], b], axis=1))
        val_parts.append(v)
    full_shape = (call.inputs, call.shape[0], call.shape[1], bands)
    batch: Any
    if idx_parts and sum(p.size for p in val_parts):
        indices = np.concatenate(idx_parts).astype(np.int64, copy=False)
        batch = densify(full_shape, indices, np.concatenate(val_parts))
    else:
        batch = np.zeros(full_shape, dtype=np.float32)
    if dense:
        batch = np.array(batch)
        for k, piece in dense:
            batch[k] = _dense_window(data[piece.tile], jobs[piece.tile].stored, piece.window)
    return batch


def _gathered(piece: _Piece, jobs: Sequence[TileJob], coords: Sequence[tuple[np.ndarray, ...] | None]
              ) -> tuple[np.ndarray, ...]:
    """The entries of a piece across tiles: each source's stored window's inside ``piece.window``,
    ``window``-local, once each (neighbouring stored windows overlap by their halos and hold the
    same values there)."""
    parts = []
    for i in piece.sources:
        unpacked = coords[i]
        assert unpacked is not None  # only tiles stored sparse are covered together
        parts.append(_entries(unpacked, jobs[i].stored, piece.window))
    r, c, b, v = (np.concatenate(column) for column in zip(*parts, strict=True))
    bands = int(b.max()) + 1 if b.size else 1
    flat = (r.astype(np.int64) * piece.window.width + c) * bands + b
    _, first = np.unique(flat, return_index=True)  # sorted: C order, as stored
    return r[first], c[first], b[first], v[first]


def _dense_window(data: TileData, stored: Window, window: Window) -> np.ndarray:
    """A tile stored dense, cut (or zero-padded past the scene) to ``window``: ``(rows, cols, bands)``."""
    overlap = window.clip(stored.row_stop, stored.col_stop)
    out = np.zeros((*window.shape, data.values.shape[-1]), dtype=np.float32)
    out[overlap.relative_to(window).slices] = data.values[overlap.relative_to(stored).slices]
    return out


def empty_core(model: CompiledModel, job: TileJob, bands: int, footprint: Footprint) -> np.ndarray:
    """The output core of an empty tile: the model's response to zeros of its window's class."""
    return empty_response(model, job.need.shape, job.core_in_output, bands, footprint)
