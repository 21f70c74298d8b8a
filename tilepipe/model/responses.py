"""The model's response to all-zero windows: what an empty tile's output is, without a tile-sized call.

For a local, translation-equivariant model the output of an all-zero window depends
only on the window's shape and where the wanted core sits in it (which scene
borders the window touches). Responses are computed on a small proxy window and
kept on the :class:`~tilepipe.model.runner.CompiledModel`, per class.
"""

from __future__ import annotations

from fractions import Fraction
from math import ceil

import numpy as np

from tilepipe.geometry import AxisFootprint, Footprint, Window
from tilepipe.model.runner import CompiledModel

__all__ = ["empty_response", "zero_response_interior"]

#: Empty-tile classes kept per model: interior, four edges, four corners, times a few window shapes.
MAX_CLASSES = 64


def _reach(axis: AxisFootprint) -> tuple[int, int, int]:
    """Output pixels from each window edge an edge can influence, and the period of the interior.

    Beyond ``before * scale`` output pixels from the low edge and
    ``after * scale - shrink`` from the high edge, a zero window's output is the
    endless zero scene's, which repeats every ``step * scale`` output pixels (a
    strided model is equivariant to shifts by its stride; with stride 1 the
    interior is one value).
    """
    scale = Fraction(axis.scale)
    return int(axis.before * scale), max(0, int(axis.after * scale) - axis.shrink), int(axis.step * scale)


def _proxy_axis(length: int, axis: AxisFootprint) -> tuple[int, np.ndarray]:
    """A shorter zero window along one axis that gives the same output, and where to read it.

    ``length`` is a window's input length (a multiple of the stride). Output
    ``j`` of the real window is proxy output ``j`` near the low edge, the same
    distance from the high edge near it, and the proxy pixel of the same phase
    (``j`` modulo the period) in between. Returns ``(proxy input length, index map)``.
    """
    low, high, period = _reach(axis)
    out_len = axis.output_span(0, length)[1]
    proxy = _proxy_length(axis, low + high + period)
    proxy_out = axis.output_span(0, proxy)[1]
    if out_len <= proxy_out:
        return length, np.arange(out_len)
    j = np.arange(out_len)
    middle = low + (j - low) % period
    return proxy, np.where(j < low, j, np.where(j >= out_len - high, j - (out_len - proxy_out), middle))


def _proxy_length(axis: AxisFootprint, out_len: int) -> int:
    """The shortest window (a multiple of the stride, long enough to run) with at least ``out_len`` outputs."""
    scale, step = Fraction(axis.scale), axis.step
    length = max(axis.min_length, ceil((out_len + axis.shrink) / scale / step) * step)
    return int(length)


def empty_response(
    model: CompiledModel, window: tuple[int, int], core: Window, bands: int, footprint: Footprint
) -> np.ndarray:
    """The output ``core`` (window-local output pixels) of the model on zeros of ``window = (rows, cols)``.

    Returns ``(rows, cols, out_bands)`` float32, computed on a proxy window a few
    dozen pixels a side (see :func:`_proxy_axis`) and kept per ``(window, core)``.
    """
    key = (window, core)
    with model.lock:
        hit = model.empty_cache.get(key)
    if hit is not None:
        return hit
    rows_in, row_map = _proxy_axis(window[0], footprint.rows)
    cols_in, col_map = _proxy_axis(window[1], footprint.cols)
    proxy = model(np.zeros((1, rows_in, cols_in, bands), dtype=np.float32))[0]
    full = proxy[np.ix_(row_map[core.row_start : core.row_stop], col_map[core.col_start : core.col_stop])]
    with model.lock:
        model.empty_cache[key] = full
        while len(model.empty_cache) > MAX_CLASSES:
            model.empty_cache.popitem(last=False)
    return full


def zero_response_interior(model: CompiledModel, footprint: Footprint, bands: int) -> np.ndarray:
    """The model's output deep inside an all-zero scene: one period, ``(rows, cols, out_bands)``.

    A period is ``step * scale`` output pixels per axis (one pixel for a
    stride-1 model): a strided model's response to zeros may repeat with its
    stride (a transposed convolution adds a different number of kernel taps
    to even and odd pixels) rather than be one value.
    """
    (r_low, r_high, r_period), (c_low, c_high, c_period) = _reach(footprint.rows), _reach(footprint.cols)
    rows = _proxy_length(footprint.rows, r_low + r_high + r_period)
    cols = _proxy_length(footprint.cols, c_low + c_high + c_period)
    out = model(np.zeros((1, rows, cols, bands), dtype=np.float32))[0]
    return np.asarray(out[r_low : r_low + r_period, c_low : c_low + c_period, :], dtype=np.float32)
