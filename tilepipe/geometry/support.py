"""Where a tile's output can differ from the zero response, and a few rectangles that cover it.

An output pixel's value depends only on the input inside its footprint. Where that
footprint holds no value, the pixel equals the model's response to zeros (of the
tile's window class), which tilepipe already knows. So only the *affected* pixels,
the data dilated by the footprint, need the model: this module finds them and covers
them with a few rectangles made of ``block``-sized squares, so that a tile with one
detection costs a small window, not a whole one (SBNet's active blocks, made exact
everywhere by the zero response).

Both functions are pure numpy and work in ``(row, col)`` order.
"""

from __future__ import annotations

from fractions import Fraction
from math import ceil, floor

import numpy as np

from tilepipe.geometry.footprint import AxisFootprint, Footprint
from tilepipe.geometry.window import Window

__all__ = ["affected", "cover"]


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


def cover(mask: np.ndarray, block: int, margin: tuple[int, int] = (0, 0)) -> list[Window]:
    """Rectangles (``mask``-local, clipped to it) that cover every True pixel of ``mask``.

    ``mask`` is cut into ``block x block`` squares; squares holding a True pixel are
    joined along rows into runs, and runs with the same columns in consecutive block
    rows into rectangles. Then two rectangles become their bounding box wherever that
    box, grown by ``margin = (rows, cols)`` (what the model's window adds to a
    rectangle), costs no more pixels than the two grown apart: a cluster of detections
    is one window, not many that each pay the footprint's margins. Sides are multiples
    of ``block`` except where clipped at the mask's far edges, so few distinct shapes
    arise.
    """
    height, width = mask.shape
    ny, nx = ceil(height / block), ceil(width / block)
    padded = np.zeros((ny * block, nx * block), dtype=bool)
    padded[:height, :width] = mask
    active: np.ndarray = np.asarray(padded.reshape(ny, block, nx, block).any(axis=(1, 3)))
    open_runs: dict[tuple[int, int], int] = {}  # (first block col, stop block col) -> first block row
    rects: list[tuple[int, int, int, int]] = []
    for by in range(ny + 1):
        runs: set[tuple[int, int]] = set()
        if by < ny:
            row = np.concatenate([[False], active[by], [False]])
            edges = np.flatnonzero(row[1:] != row[:-1])
            runs = {(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)}
        for run in list(open_runs):
            if run not in runs:
                rects.append((open_runs.pop(run), by, *run))
        for run in runs:
            open_runs.setdefault(run, by)
    if len(rects) <= _MERGE_LIMIT:
        rects = _merge(rects, margin[0] / block, margin[1] / block)
    return [Window(r0 * block, min(r1 * block, height), c0 * block, min(c1 * block, width))
            for r0, r1, c0, c1 in sorted(rects)]


#: More rectangles than this in one tile are left unmerged (the tile is then usually computed whole).
_MERGE_LIMIT = 256


def _merge(rects: list[tuple[int, int, int, int]], mr: float, mc: float) -> list[tuple[int, int, int, int]]:
    """Join rectangles (block units) whose grown bounding box costs no more than they do grown apart;
    the pair that saves most first, until no pair saves anything."""
    boxes = np.array(rects, dtype=np.int64).reshape(-1, 4)
    while len(boxes) > 1:
        cost = (boxes[:, 1] - boxes[:, 0] + mr) * (boxes[:, 3] - boxes[:, 2] + mc)
        lo_r = np.minimum.outer(boxes[:, 0], boxes[:, 0])
        hi_r = np.maximum.outer(boxes[:, 1], boxes[:, 1])
        lo_c = np.minimum.outer(boxes[:, 2], boxes[:, 2])
        hi_c = np.maximum.outer(boxes[:, 3], boxes[:, 3])
        gain = cost[:, None] + cost[None, :] - (hi_r - lo_r + mr) * (hi_c - lo_c + mc)
        np.fill_diagonal(gain, -np.inf)
        i, j = np.unravel_index(int(np.argmax(gain)), gain.shape)
        if gain[i, j] < 0:
            break
        boxes[i] = (lo_r[i, j], hi_r[i, j], lo_c[i, j], hi_c[i, j])
        boxes = np.delete(boxes, j, axis=0)
    return _drop_covered([(int(a), int(b), int(c), int(d)) for a, b, c, d in boxes])


def _drop_covered(rects: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Rectangles not inside another one (a merge may swallow a third rectangle)."""
    def inside(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
        return b[0] <= a[0] and a[1] <= b[1] and b[2] <= a[2] and a[3] <= b[3]

    return [a for n, a in enumerate(rects) if not any(m != n and inside(a, b) and (a != b or m < n)
                                                         for m, b in enumerate(rects))]
