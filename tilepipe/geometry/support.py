"""Where a tile's output can differ from the zero response, and a few rectangles that cover it.

An output pixel's value depends only on the input inside its footprint. Where that
footprint holds no value, the pixel equals the model's response to zeros (of the
tile's window class), which tilepipe already knows. So only the *affected* pixels,
the data dilated by the footprint, need the model: this module finds them and covers
them with a few rectangles, so that a tile with one detection costs a small window,
not a whole one (SBNet's active blocks, made exact everywhere by the zero response).
The rectangles start as ``block``-sized squares and are then merged and cut by what
their *windows* cost (rectangle grown by the footprint): the model runs on windows,
and two windows that overlap are computed twice.

All functions are pure numpy and work in ``(row, col)`` order.
"""

from __future__ import annotations

from fractions import Fraction
from math import ceil, floor

import numpy as np

from tilepipe.geometry.footprint import AxisFootprint, Footprint
from tilepipe.geometry.window import Window

__all__ = ["affected", "cover", "rounded"]


def _dilate(mask: np.ndarray, axis: int, before: int, after: int) -> np.ndarray:
    """``out[q] = any(mask[q - before : q + after + 1])`` along ``axis`` (clipped at the ends).

    Boolean ORs of shifted copies, the shift doubling each time: ``log2(before + after + 1)``
    passes over the mask, not one per pixel of the footprint.
    """
    length = before + after + 1
    n = mask.shape[axis]
    moved = np.moveaxis(mask, axis, 0)
    # Padded with ``before`` empty rows in front: then out[q] = any(padded[q .. q + length - 1])
    # = any(mask[q - before .. q + after]), windows cut short at either end included.
    out = np.zeros((n + before, *moved.shape[1:]), dtype=bool)
    out[before:] = moved
    total = n + before
    span = 1  # out[q] = any(padded[q .. q + span - 1]) so far
    while span < length:
        step = min(span, length - span)
        if step < total:  # a shift past the end adds nothing (and a negative stop would wrap round)
            out[: total - step] |= out[step:]
        span += step
    return np.moveaxis(out[:n], 0, axis)


def _grows(counts: np.ndarray, axis: int, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Whether the prefix sums ``counts`` grow between ``lo`` and ``hi`` (per index, along ``axis``)."""
    return (np.take(counts, hi, axis=axis) - np.take(counts, lo, axis=axis)) > 0


def _input_ranges(axis: AxisFootprint, out_start: int, out_stop: int, in_start: int) -> tuple[np.ndarray, np.ndarray]:
    """For output pixels ``[out_start, out_stop)``: the input pixels ``[lo, hi)`` (relative to ``in_start``)
    at their own position, before the footprint's margins (what :meth:`AxisFootprint.span` grows)."""
    scale = Fraction(axis.scale)
    if scale == 1:
        lo = np.arange(out_start, out_stop, dtype=np.int64) - in_start
        return lo, lo + 1
    j = range(out_start, out_stop)
    lo = np.fromiter((floor(Fraction(v) / scale) for v in j), np.int64, len(j)) - in_start
    hi = np.fromiter((ceil(Fraction(v + 1) / scale) for v in j), np.int64, len(j)) - in_start
    return lo, hi


def affected(rows: np.ndarray, cols: np.ndarray, need: Window, out_core: Window, footprint: Footprint) -> np.ndarray:
    """The output pixels of ``out_core`` whose footprint holds one of the entries: ``out_core.shape`` bool.

    ``rows``, ``cols`` are the entries' pixels relative to ``need``, the input window
    that computes ``out_core``. Conservative (the footprint's margins include the
    stride alignment): a pixel marked False equals the zero response for certain.
    """
    mask = np.zeros(need.shape, dtype=bool)
    mask[rows, cols] = True
    fr, fc = footprint.rows, footprint.cols
    mask = _dilate(_dilate(mask, 0, fr.before, fr.after), 1, fc.before, fc.after)
    if Fraction(fr.scale) == 1 and Fraction(fc.scale) == 1:  # output pixel j sits at input pixel j
        return mask[out_core.row_start - need.row_start : out_core.row_stop - need.row_start,
                    out_core.col_start - need.col_start : out_core.col_stop - need.col_start]
    counts = np.cumsum(mask, axis=0, dtype=np.int32)
    counts = np.concatenate([np.zeros((1, mask.shape[1]), np.int32), counts], axis=0)
    lo, hi = _input_ranges(fr, out_core.row_start, out_core.row_stop, need.row_start)
    by_rows = _grows(counts, 0, np.clip(lo, 0, need.height), np.clip(hi, 0, need.height))
    counts = np.cumsum(by_rows, axis=1, dtype=np.int32)
    counts = np.concatenate([np.zeros((by_rows.shape[0], 1), np.int32), counts], axis=1)
    lo, hi = _input_ranges(fc, out_core.col_start, out_core.col_stop, need.col_start)
    return _grows(counts, 1, np.clip(lo, 0, need.width), np.clip(hi, 0, need.width))


def rounded(length: np.ndarray | int, block: int, align: int = 1) -> np.ndarray:
    """Rectangle sides as :func:`cover` rounds them up: to a multiple of half a ``block`` up to two blocks
    (a detection's rectangle stays small), of a whole ``block`` beyond (few distinct sides, so few
    traced window shapes). Both steps are multiples of ``align``."""
    fine = max(align, block // 2 // align * align)
    x = np.asarray(length, dtype=np.int64)
    step = np.where(x <= 2 * block, fine, block)
    return np.asarray(-(-x // step) * step)


def cover(mask: np.ndarray, block: int, margin: tuple[int, int] = (0, 0), *, overhead: int = 0,
          align: int = 1, partition: bool = True) -> list[Window]:
    """Rectangles (``mask``-local, inside it) that cover every True pixel of ``mask``, at little cost.

    A rectangle costs its window: its sides rounded up (:func:`rounded`), grown by
    ``margin = (rows, cols)`` (what the model's window adds), multiplied, plus ``overhead``
    (what one more model input costs, in the same pixels). Overlapping windows are paid
    twice, as the model computes them twice.

    1. ``mask`` is cut into ``block x block`` squares; squares holding a True pixel are joined
       along rows into runs, and runs with the same columns in consecutive block rows into
       rectangles, each shrunk to the True pixels it holds.
    2. Two rectangles become their bounding box wherever that costs no more than the two
       (the pair that saves most first): a cluster of detections is one window, not many that
       each pay the margins.
    3. Each box is cut in two, along rows or columns on a half-block grid, where the parts' tight
       boxes cost less, and so on (an L-shaped cluster is two windows, not its bounding box).
       Where the margins are wide (a U-Net's), a cut may pay off only by the cuts that follow it
       (a staircase): then each cluster (squares of :data:`_PARTITION_CELL` px that touch) of up
       to :data:`_PARTITION_CELLS` squares a side is also cut every way on that grid,
       recursively (:func:`_partition`), clusters joined as in step 2, and the cheaper of the two
       covers is kept (``partition=False``: never; a draft cover that may be thrown away).
    4. Sides are rounded up, starts aligned to ``align``, kept inside ``mask``: few distinct
       shapes, each a multiple of the model's stride.
    """
    height, width = mask.shape
    ext = _extents(mask, block)
    active = ext[1] > ext[0]
    ny = active.shape[0]
    open_runs: dict[tuple[int, int], int] = {}  # (first block col, stop block col) -> first block row
    runs_done: list[tuple[int, int, int, int]] = []
    for by in range(ny + 1):
        runs: set[tuple[int, int]] = set()
        if by < ny:
            row = np.concatenate([[False], active[by], [False]])
            edges = np.flatnonzero(row[1:] != row[:-1])
            runs = {(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)}
        for run in list(open_runs):
            if run not in runs:
                runs_done.append((open_runs.pop(run), by, *run))
        for run in runs:
            open_runs.setdefault(run, by)
    # Each run's rectangle shrunk to its True pixels: the extremes of its blocks' extents.
    boxes = [(int(ext[0][r0:r1, c0:c1].min()), int(ext[1][r0:r1, c0:c1].max()),
              int(ext[2][r0:r1, c0:c1].min()), int(ext[3][r0:r1, c0:c1].max()))
             for r0, r1, c0, c1 in sorted(runs_done)]
    cost = _Cost(block, align, margin, overhead)
    if len(boxes) <= _MERGE_LIMIT:
        boxes = _merge(boxes, cost)
    cells = _extents(mask, cost.fine)
    coarse = -(-_PARTITION_CELL // align) * align
    squares = _extents(mask, coarse) if partition and max(margin) >= _PARTITION_MARGIN else None
    parts = [part for box in boxes for part in _split(cells, cost.fine, box, cost)]
    chosen = [_snap(box, cost, height, width) for box in parts]
    every_way = _partitioned(squares, coarse, cost) if squares is not None else None
    if every_way is not None:
        other = [_snap(box, cost, height, width) for box in every_way]
        if _windows(other, cost) < _windows(chosen, cost):
            chosen = other
    return sorted(chosen, key=lambda w: (w.row_start, w.col_start))


def _windows(rects: list[Window], cost: _Cost) -> int:
    """What snapped rectangles cost (as :class:`_Cost` counts a rectangle)."""
    return sum(cost.one(w.height, w.width) for w in rects)


#: More rectangles than this in one tile are left unmerged (the tile is then usually computed whole).
_MERGE_LIMIT = 256

_Box = tuple[int, int, int, int]  # row_start, row_stop, col_start, col_stop (mask pixels, half-open)


class _Cost:
    """What a rectangle's window costs: ``(rounded rows + margin) * (rounded cols + margin) + overhead``."""

    def __init__(self, block: int, align: int, margin: tuple[int, int], overhead: int) -> None:
        self.block, self.align, self.margin, self.overhead = block, align, margin, overhead
        self.fine = max(align, block // 2 // align * align)

    def __call__(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return np.asarray((rounded(rows, self.block, self.align) + self.margin[0])
                          * (rounded(cols, self.block, self.align) + self.margin[1]) + self.overhead)

    def side(self, length: int) -> int:
        """:func:`rounded` of one side (plain ints: called once per box, where numpy would cost more)."""
        step = self.fine if length <= 2 * self.block else self.block
        return -(-length // step) * step

    def one(self, rows: int, cols: int) -> int:
        """The cost of one rectangle."""
        return (self.side(rows) + self.margin[0]) * (self.side(cols) + self.margin[1]) + self.overhead


def _extents(mask: np.ndarray, cell: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per ``cell x cell`` square of ``mask``: the first and stop row, first and stop column of its True
    pixels (``mask``-local; ``+-big`` where it has none), each ``(ceil(rows / cell), ceil(cols / cell))``."""
    ny, nx = ceil(mask.shape[0] / cell), ceil(mask.shape[1] / cell)
    if mask.shape == (ny * cell, nx * cell) and mask.flags.c_contiguous and mask.dtype == np.bool_:
        cells = mask
    else:
        cells = np.zeros((ny * cell, nx * cell), dtype=bool)
        cells[: mask.shape[0], : mask.shape[1]] = mask
    rows_hit: np.ndarray  # (ny, cell, nx): row r of square (y, x) holds a True pixel
    if cell % 8 == 0:  # 8 booleans as one uint64: numpy's any() over short rows is 30 times slower
        words = cells.view(np.uint64).reshape(ny * cell, nx, cell // 8)
        either = words[:, :, 0].copy()
        for k in range(1, cell // 8):
            either |= words[:, :, k]
        rows_hit = (either != 0).reshape(ny, cell, nx)
    else:
        rows_hit = np.asarray(cells.reshape(ny, cell, nx, cell).any(axis=3))
    # (ny, nx, cell): column c of square (y, x) holds a True pixel (ORs of whole rows: fast)
    cols_hit: np.ndarray = np.logical_or.reduce(cells.reshape(ny, cell, nx * cell), axis=1).reshape(ny, nx, cell)
    busy = rows_hit.any(axis=1)
    base_r, base_c = (np.arange(ny) * cell)[:, None], (np.arange(nx) * cell)[None, :]
    return (np.where(busy, base_r + rows_hit.argmax(axis=1), _BIG),
            np.where(busy, base_r + cell - rows_hit[:, ::-1, :].argmax(axis=1), -_BIG),
            np.where(busy, base_c + cols_hit.argmax(axis=2), _BIG),
            np.where(busy, base_c + cell - cols_hit[:, :, ::-1].argmax(axis=2), -_BIG))


_BIG = np.iinfo(np.int64).max // 4


def _merge(rects: list[_Box], cost: _Cost) -> list[_Box]:
    """Join rectangles whose bounding box costs no more than they do apart; the pair that saves most
    first, until no pair saves anything. The gains of every pair are computed once; a merge
    recomputes only the merged box's."""
    boxes = np.array(rects, dtype=np.int64).reshape(-1, 4)
    n = len(boxes)
    if n < 2:
        return rects
    alone = cost(boxes[:, 1] - boxes[:, 0], boxes[:, 3] - boxes[:, 2])

    def joined(i: np.ndarray | int, j: np.ndarray | slice) -> tuple[np.ndarray, ...]:
        return (np.minimum(boxes[i, 0], boxes[j, 0]), np.maximum(boxes[i, 1], boxes[j, 1]),
                np.minimum(boxes[i, 2], boxes[j, 2]), np.maximum(boxes[i, 3], boxes[j, 3]))

    every = np.arange(n)
    r0, r1, c0, c1 = joined(every[:, None], every[None, :])
    gain = (alone[:, None] + alone[None, :] - cost(r1 - r0, c1 - c0)).astype(np.float64)
    np.fill_diagonal(gain, -np.inf)
    alive = np.ones(n, dtype=bool)
    while True:
        i, j = divmod(int(np.argmax(gain)), n)
        if gain[i, j] < 0:
            break
        boxes[i] = [int(v) for v in (min(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1]),
                                     min(boxes[i, 2], boxes[j, 2]), max(boxes[i, 3], boxes[j, 3]))]
        alone[i] = cost.one(int(boxes[i, 1] - boxes[i, 0]), int(boxes[i, 3] - boxes[i, 2]))
        alive[j] = False
        gain[j, :] = gain[:, j] = -np.inf
        r0, r1, c0, c1 = joined(i, slice(None))
        row = (alone[i] + alone - cost(r1 - r0, c1 - c0)).astype(np.float64)
        row[i] = -np.inf
        row[~alive] = -np.inf
        gain[i, :] = gain[:, i] = row
    return _drop_covered([(int(a), int(b), int(c), int(d)) for a, b, c, d in boxes[alive]])


def _split(cells: tuple[np.ndarray, ...], cell: int, box: _Box, cost: _Cost) -> list[_Box]:
    """``box`` cut in two where the parts' tight boxes cost less, recursively, on the ``cell`` grid;
    the parts cover every True pixel inside ``box``.

    ``cells``: the mask's :func:`_extents` per ``cell x cell`` square. So a cut's two tight boxes,
    for every cut position at once, are running minima and maxima of those extents (clipped to
    ``box``: a square across its edge may make a part a little larger than its pixels, never smaller).
    """
    r0, r1, c0, c1 = box
    if r1 - r0 <= 2 * cell and c1 - c0 <= 2 * cell:  # too small to cut into parts that save anything
        return [box]
    y0, y1, x0, x1 = r0 // cell, -(-r1 // cell), c0 // cell, -(-c1 // cell)
    first_r, stop_r = np.maximum(cells[0][y0:y1, x0:x1], r0), np.minimum(cells[1][y0:y1, x0:x1], r1)
    first_c, stop_c = np.maximum(cells[2][y0:y1, x0:x1], c0), np.minimum(cells[3][y0:y1, x0:x1], c1)
    empty = (stop_r <= first_r) | (stop_c <= first_c)
    ext = (np.where(empty, _BIG, first_r), np.where(empty, -_BIG, stop_r),
           np.where(empty, _BIG, first_c), np.where(empty, -_BIG, stop_c))
    ny, nx = ext[0].shape
    out: list[_Box] = []
    todo = [(0, ny, 0, nx)]
    while todo:
        y0, y1, x0, x1 = todo.pop()
        part = [e[y0:y1, x0:x1] for e in ext]
        tight = (int(part[0].min()), int(part[1].max()), int(part[2].min()), int(part[3].max()))
        best, cut = cost.one(tight[1] - tight[0], tight[3] - tight[2]), None
        for axis in (0, 1):
            if part[0].shape[axis] < 2:
                continue
            # Extents per cell row (axis 0) or column (axis 1), then of everything before / after each cut.
            lines = [part[0].min(1 - axis), part[1].max(1 - axis), part[2].min(1 - axis), part[3].max(1 - axis)]
            head = _running(lines, forward=True)
            tail = _running(lines, forward=False)
            h = [e[:-1] for e in head]
            t = [e[1:] for e in tail]
            both = (h[1] > h[0]) & (t[1] > t[0])  # a cut with True pixels on both sides
            total = np.where(both, cost(np.maximum(h[1] - h[0], 1), np.maximum(h[3] - h[2], 1))
                             + cost(np.maximum(t[1] - t[0], 1), np.maximum(t[3] - t[2], 1)), _BIG)
            k = int(np.argmin(total))
            if total[k] < best:
                best, cut = int(total[k]), (axis, k + 1)
        if cut is None:
            out.append(tight)
        elif cut[0] == 0:
            todo += [(y0, y0 + cut[1], x0, x1), (y0 + cut[1], y1, x0, x1)]
        else:
            todo += [(y0, y1, x0, x0 + cut[1]), (y0, y1, x0 + cut[1], x1)]
    return out


#: :func:`_partition`'s grid (px, rounded up to the stride) and the largest box it takes, in squares a side;
#: and the margins (px) from which it is tried: narrow margins make any cut that pays off pay at once.
_PARTITION_CELL = 48
_PARTITION_CELLS = 48
_PARTITION_MARGIN = 32
#: Sub-rectangles :func:`_partition` weighs at most, per cluster (beyond: the greedy cuts stand).
_PARTITION_STATES = 3000


def _partitioned(cells: tuple[np.ndarray, ...], cell: int, cost: _Cost) -> list[_Box] | None:
    """Each cluster of touching squares (8-neighbours) cut by :func:`_partition`, then the parts joined
    where that costs less (:func:`_merge`); None where a cluster is too large to cut every way."""
    active = cells[1] > cells[0]
    seen = np.zeros(active.shape, dtype=bool)
    ny, nx = active.shape
    parts: list[_Box] = []
    for y, x in zip(*np.nonzero(active), strict=True):
        if seen[y, x]:
            continue
        seen[y, x] = True
        todo, members = [(int(y), int(x))], []
        while todo:
            a, b = todo.pop()
            members.append((a, b))
            for na in range(max(a - 1, 0), min(a + 2, ny)):
                for nb in range(max(b - 1, 0), min(b + 2, nx)):
                    if active[na, nb] and not seen[na, nb]:
                        seen[na, nb] = True
                        todo.append((na, nb))
        ys, xs = zip(*members, strict=True)
        box = (int(min(cells[0][a, b] for a, b in members)), int(max(cells[1][a, b] for a, b in members)),
               int(min(cells[2][a, b] for a, b in members)), int(max(cells[3][a, b] for a, b in members)))
        if max(max(ys) - min(ys), max(xs) - min(xs)) >= _PARTITION_CELLS:
            return None
        cut = _partition(cells, cell, box, cost)
        if cut is None:
            return None
        parts.extend(cut)
    return _merge(parts, cost)


def _partition(cells: tuple[np.ndarray, ...], cell: int, box: _Box, cost: _Cost) -> list[_Box] | None:
    """The cheapest cut of ``box`` into tight boxes by straight cuts on the ``cell`` grid, each part cut
    again (every guillotine cut, by dynamic programming over the grid's sub-rectangles); None where
    ``box`` spans more than :data:`_PARTITION_CELLS` squares a side. Parts cover every True pixel
    inside ``box`` (extents clipped to it, as in :func:`_split`)."""
    r0, r1, c0, c1 = box
    y0, y1, x0, x1 = r0 // cell, -(-r1 // cell), c0 // cell, -(-c1 // cell)
    if max(y1 - y0, x1 - x0) > _PARTITION_CELLS:
        return None
    first_r, stop_r = np.maximum(cells[0][y0:y1, x0:x1], r0), np.minimum(cells[1][y0:y1, x0:x1], r1)
    first_c, stop_c = np.maximum(cells[2][y0:y1, x0:x1], c0), np.minimum(cells[3][y0:y1, x0:x1], c1)
    held = (stop_r > first_r) & (stop_c > first_c)
    ext = (np.where(held, first_r, _BIG), np.where(held, stop_r, -_BIG),
           np.where(held, first_c, _BIG), np.where(held, stop_c, -_BIG))

    memo: dict[tuple[int, int, int, int], tuple[int, tuple[_Box, ...]]] = {}

    def best(a: int, b: int, c: int, d: int) -> tuple[int, tuple[_Box, ...]]:
        part = held[a:b, c:d]
        rows, cols = np.flatnonzero(part.any(axis=1)), np.flatnonzero(part.any(axis=0))
        if not rows.size:
            return 0, ()
        a, b, c, d = a + int(rows[0]), a + int(rows[-1]) + 1, c + int(cols[0]), c + int(cols[-1]) + 1
        key = (a, b, c, d)
        if key in memo:
            return memo[key]
        if len(memo) >= _PARTITION_STATES:
            raise _TooMany
        tight = (int(ext[0][a:b, c:d].min()), int(ext[1][a:b, c:d].max()),
                 int(ext[2][a:b, c:d].min()), int(ext[3][a:b, c:d].max()))
        found: tuple[int, tuple[_Box, ...]] = (cost.one(tight[1] - tight[0], tight[3] - tight[2]), (tight,))
        part = held[a:b, c:d]
        for axis in (0, 1):
            for k in _steps_of(part if axis == 0 else part.T):  # where the outline changes: elsewhere a
                if axis == 0:                                    # cut only adds margins
                    one, two = best(a, a + k, c, d), best(a + k, b, c, d)
                else:
                    one, two = best(a, b, c, c + k), best(a, b, c + k, d)
                if one[0] + two[0] < found[0]:
                    found = (one[0] + two[0], one[1] + two[1])
        memo[key] = found
        return found

    try:
        return list(best(0, y1 - y0, 0, x1 - x0)[1])
    except _TooMany:
        return None


class _TooMany(Exception):
    """:func:`_partition` gave up: more sub-rectangles than :data:`_PARTITION_STATES`."""


def _steps_of(part: np.ndarray) -> list[int]:
    """Cuts between rows ``k - 1`` and ``k`` of ``part`` where its outline changes: the first or last
    held square of the row, or whether it holds any."""
    held = part.any(axis=1)
    first = np.where(held, part.argmax(axis=1), -1)
    last = np.where(held, part.shape[1] - part[:, ::-1].argmax(axis=1), -1)
    change = (first[1:] != first[:-1]) | (last[1:] != last[:-1])
    return [int(k) + 1 for k in np.flatnonzero(change)]



def _running(lines: list[np.ndarray], *, forward: bool) -> list[np.ndarray]:
    """Running (min start, max stop, min start, max stop) of per-line extents, from the front or the back."""
    ops = (np.minimum, np.maximum, np.minimum, np.maximum)
    if forward:
        return [op.accumulate(e) for op, e in zip(ops, lines, strict=True)]
    return [op.accumulate(e[::-1])[::-1] for op, e in zip(ops, lines, strict=True)]


def _snap(box: _Box, cost: _Cost, height: int, width: int) -> Window:
    """``box`` with its sides rounded up and its starts aligned (:func:`rounded`), grown about its
    middle and kept inside ``height x width``; it still holds ``box``."""
    (r0, r1), (c0, c1) = (_snap_axis(box[0], box[1], cost, height), _snap_axis(box[2], box[3], cost, width))
    return Window(r0, r1, c0, c1)


def _snap_axis(start: int, stop: int, cost: _Cost, length: int) -> tuple[int, int]:
    align = cost.align
    first = start - start % align
    size = cost.side(stop - first)
    shift = (size - (stop - first)) // 2 // align * align  # grow about the middle, starts stay aligned
    a = max(0, min(first - shift, length - size))
    b = min(a + size, length)
    if a <= start and stop <= b:
        return a, b
    return first, max(stop, min(first + size, length))  # kept aligned where the middle would not hold it


def _drop_covered(rects: list[_Box]) -> list[_Box]:
    """Rectangles not inside another one (a merge may swallow a third rectangle)."""
    def inside(a: _Box, b: _Box) -> bool:
        return b[0] <= a[0] and a[1] <= b[1] and b[2] <= a[2] and a[3] <= b[3]

    return [a for n, a in enumerate(rects) if not any(m != n and inside(a, b) and (a != b or m < n)
                                                         for m, b in enumerate(rects))]
