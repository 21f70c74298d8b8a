"""From tile windows to output cores: the per-tile model work, wherever it runs.

Used by the Dask tasks (reading tiles from a scene store) and in-process by
:func:`tilepipe.conv_sparse`. Knows tiles as :class:`~tilepipe.plan.TileJob`
values and their data as :class:`~tilepipe.store.codec.TileData`; knows nothing
of Zarr or Dask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tilepipe.geometry import Footprint
from tilepipe.model.responses import empty_response
from tilepipe.model.runner import CompiledModel, densify
from tilepipe.plan import TileJob
from tilepipe.store.codec import TileData

__all__ = ["compute_tiles", "empty_core"]


def _crop_coo(data: TileData, job: TileJob) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Entries of ``data`` (a stored window) that fall in ``job.need``, need-local.

    ``need`` may reach past the stored window into a strided model's zero
    padding beyond the scene: there are no entries there.
    """
    r, c, b, v = data.coords()
    stored, need = job.stored, job.need
    r0, c0 = need.row_start - stored.row_start, need.col_start - stored.col_start
    if need.shape != stored.shape or (r0, c0) != (0, 0):
        keep = (r >= r0) & (r < r0 + need.height) & (c >= c0) & (c < c0 + need.width)
        r, c, b, v = r[keep], c[keep], b[keep], v[keep]
    return r - r0, c - c0, b, v


def _dense_window(data: TileData, job: TileJob) -> np.ndarray:
    """A tile stored dense, cut (or zero-padded past the scene) to ``job.need``: ``(rows, cols, bands)``."""
    overlap = job.need.clip(job.stored.row_stop, job.stored.col_stop)
    out = np.zeros((*job.need.shape, data.values.shape[-1]), dtype=np.float32)
    out[overlap.relative_to(job.need).slices] = data.values[overlap.relative_to(job.stored).slices]
    return out


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
                    batch[k] = _dense_window(data[i], jobs[i])
            out = model(batch)
            for k, i in enumerate(chunk):
                results[i] = out[k][jobs[i].core_in_output.slices]
    return [r for r in results if r is not None]


def empty_core(model: CompiledModel, job: TileJob, bands: int, footprint: Footprint) -> np.ndarray:
    """The output core of an empty tile: the model's response to zeros of its window's class."""
    return empty_response(model, job.need.shape, job.core_in_output, bands, footprint)
