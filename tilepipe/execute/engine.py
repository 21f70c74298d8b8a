"""From tile windows to output cores: the per-tile work, wherever it runs.

Used by the Dask tasks (reading tiles from a scene store) and in-process by
:func:`tilepipe.conv_sparse`. Knows tiles as :class:`TileJob` values and
windows; knows nothing of Zarr or Dask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tilepipe.geometry import Footprint, TileGrid, Window

if TYPE_CHECKING:
    from tilepipe.model.runner import CompiledModel
from tilepipe.store.codec import TileData

__all__ = ["TileJob", "compute_tiles", "empty_response", "plan_jobs", "zero_response_interior"]


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
        """The core relative to the output of a model run on ``need``."""
        out = Window(self.need.row_start, self.need.row_stop, self.need.col_start, self.need.col_stop)
        return Window(
            self.out_core.row_start - out.row_start,
            self.out_core.row_stop - out.row_start,
            self.out_core.col_start - out.col_start,
            self.out_core.col_stop - out.col_start,
        )

    @property
    def empty_class(self) -> tuple[tuple[int, int], Window]:
        """Key of the empty-tile response class: window shape and core position in it."""
        return (self.need.shape, self.core_in_output)


def plan_jobs(grid: TileGrid, footprint: Footprint, nnz: np.ndarray | None = None) -> list[TileJob]:
    """Plan every output tile of a scene tiled by ``grid`` (whose halo must cover the footprint).

    ``nnz`` is the per-tile count of values in the stored windows (None: all non-empty).
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


def _crop_coo(data: TileData, job: TileJob) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Entries of ``data`` (a stored window) that fall in ``job.need``, need-local."""
    r, c, b, v = data.coords()
    rel = job.need.relative_to(job.stored)
    if rel.shape != job.stored.shape:
        keep = (r >= rel.row_start) & (r < rel.row_stop) & (c >= rel.col_start) & (c < rel.col_stop)
        r, c, b, v = r[keep], c[keep], b[keep], v[keep]
    return r - rel.row_start, c - rel.col_start, b, v


def compute_tiles(
    model: CompiledModel,
    jobs: Sequence[TileJob],
    data: Sequence[TileData],
    bands: int,
    *,
    batch_size: int = 8,
) -> list[np.ndarray]:
    """Run the model over non-empty tiles; returns each core as ``(rows, cols, out_bands)``.

    Tiles whose windows have the same shape go through the model together, in
    batches of up to ``batch_size``; each batch is densified from COO through
    one ``tf.SparseTensor``.
    """
    from tilepipe.model.runner import densify

    results: list[np.ndarray | None] = [None] * len(jobs)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(job.need.shape, []).append(i)
    for shape, members in groups.items():
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            idx_parts, val_parts = [], []
            dense_members = []
            for k, i in enumerate(chunk):
                if data[i].is_dense:
                    dense_members.append((k, i))
                    continue
                r, c, b, v = _crop_coo(data[i], jobs[i])
                idx_parts.append(np.stack([np.full(r.size, k), r, c, b], axis=1))
                val_parts.append(v)
            full_shape = (len(chunk), shape[0], shape[1], bands)
            batch: Any
            if idx_parts:
                indices = np.concatenate(idx_parts).astype(np.int64, copy=False)
                batch = densify(full_shape, indices, np.concatenate(val_parts))
            else:
                batch = np.zeros(full_shape, dtype=np.float32)
            if dense_members:  # tiles stored dense go in as they are, beside the densified ones
                batch = np.array(batch)
                for k, i in dense_members:
                    rel = jobs[i].need.relative_to(jobs[i].stored)
                    batch[k] = data[i].values[rel.slices].astype(np.float32)
            out = model(batch)
            for k, i in enumerate(chunk):
                results[i] = out[k][jobs[i].core_in_output.slices]
    return [r for r in results if r is not None]


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


def empty_response(model: CompiledModel, job: TileJob, bands: int, footprint: Footprint) -> np.ndarray:
    """The model's output core for an all-zero window shaped like ``job.need``.

    Computed on a small proxy window (see :func:`_proxy_axis`: a few dozen
    pixels a side, not a whole tile) and cached on the model per class
    (window shape, core position).
    """
    key = job.empty_class
    hit = model.empty_cache.get(key)
    if hit is not None:
        return hit
    r, c = footprint.rows, footprint.cols
    rows_in, row_map = _proxy_axis(job.need.height, r.shrink, r.before + r.after)
    cols_in, col_map = _proxy_axis(job.need.width, c.shrink, c.before + c.after)
    proxy = model(np.zeros((1, rows_in, cols_in, bands), dtype=np.float32))[0]
    core = job.core_in_output
    full = proxy[np.ix_(row_map[core.row_start : core.row_stop], col_map[core.col_start : core.col_stop])]
    model.empty_cache[key] = full
    if len(model.empty_cache) > 64:
        model.empty_cache.pop(next(iter(model.empty_cache)))
    return full


def zero_response_interior(model: CompiledModel, footprint: Footprint, bands: int) -> np.ndarray:
    """Per-band output of the model deep inside an all-zero scene, shape ``(out_bands,)``.

    A window of ``before + after + 1`` pixels per axis holds exactly the
    footprint of its output pixel ``before``, so that pixel sees no edge.
    """
    r, c = footprint.rows, footprint.cols
    zeros = np.zeros((1, r.before + r.after + 1, c.before + c.after + 1, bands), dtype=np.float32)
    return np.asarray(model(zeros)[0, r.before, c.before, :], dtype=np.float32)
