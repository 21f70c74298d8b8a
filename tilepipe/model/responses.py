"""The model's response to all-zero windows: what an empty tile's output is, without a tile-sized call.

For a local, translation-equivariant model the output of an all-zero window depends
only on the window's shape and where the wanted core sits in it (which scene
borders the window touches). Responses are computed on a small proxy window and
kept on the :class:`~tilepipe.model.runner.CompiledModel`, per class.
"""

from __future__ import annotations

import numpy as np

from tilepipe.geometry import Footprint, Window
from tilepipe.model.runner import CompiledModel

__all__ = ["empty_response", "zero_response_interior"]

#: Empty-tile classes kept per model: interior, four edges, four corners, times a few window shapes.
MAX_CLASSES = 64


def _proxy_axis(length: int, shrink: int, reach: int) -> tuple[int, np.ndarray]:
    """A shorter zero window along one axis that gives the same output, and where to read it.

    In an all-zero window an output pixel's value depends only on its distances
    to the window's two edges, and not at all once both exceed ``reach`` (the
    footprint). So a window of ``2 * reach + 1`` output pixels holds every
    distinct value: output ``j`` of the real window is proxy output ``j`` near
    the low edge, the same distance from the high edge near it, and the middle
    one elsewhere. Returns ``(proxy input length, index map)``.
    """
    out_len = length - shrink
    proxy_out = 2 * reach + 1
    if out_len <= proxy_out:
        return length, np.arange(out_len)
    j = np.arange(out_len)
    mapped = np.where(j < reach, j, np.where(j >= out_len - reach, j - (out_len - proxy_out), reach))
    return proxy_out + shrink, mapped


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
    r, c = footprint.rows, footprint.cols
    rows_in, row_map = _proxy_axis(window[0], r.shrink, r.before + r.after)
    cols_in, col_map = _proxy_axis(window[1], c.shrink, c.before + c.after)
    proxy = model(np.zeros((1, rows_in, cols_in, bands), dtype=np.float32))[0]
    full = proxy[np.ix_(row_map[core.row_start : core.row_stop], col_map[core.col_start : core.col_stop])]
    with model.lock:
        model.empty_cache[key] = full
        while len(model.empty_cache) > MAX_CLASSES:
            model.empty_cache.popitem(last=False)
    return full


def zero_response_interior(model: CompiledModel, footprint: Footprint, bands: int) -> np.ndarray:
    """Per-band output of the model deep inside an all-zero scene, shape ``(out_bands,)``.

    A window of ``before + after + 1`` pixels per axis holds exactly the
    footprint of its output pixel ``before``, so that pixel sees no edge.
    """
    r, c = footprint.rows, footprint.cols
    zeros = np.zeros((1, r.before + r.after + 1, c.before + c.after + 1, bands), dtype=np.float32)
    return np.asarray(model(zeros)[0, r.before, c.before, :], dtype=np.float32)
