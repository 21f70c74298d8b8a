"""``conv_sparse``: a SparseTensor of any size through a Conv2D model, tiled underneath."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from tilepipe.errors import InputError, ModelError
from tilepipe.execute.compute import compute_tiles, empty_core
from tilepipe.geometry import Footprint, TileGrid, parse_tile_size, stride_aligned
from tilepipe.model.cache import compiled
from tilepipe.model.loader import resolve_model
from tilepipe.model.receptive import footprint_of
from tilepipe.model.runner import CompiledModel
from tilepipe.plan import DEFAULT_BATCH, plan_jobs
from tilepipe.sources.coo import CooScene, TileBuckets, coo_from_arrays
from tilepipe.store.codec import TileData

__all__ = ["conv_sparse"]


def conv_sparse(
    sparse_tensor: Any,
    model: Any,
    *,
    tile_size: int | tuple[int, int] = 512,
    halo: int | None = None,
    batch_size: int = DEFAULT_BATCH,
) -> np.ndarray:
    """Run ``model`` on the dense form of ``sparse_tensor`` without ever densifying it whole.

    Parameters
    ----------
    sparse_tensor
        A ``tf.SparseTensor`` of shape ``H x W`` (one band), ``H x W x C`` or a
        batch ``N x H x W x C``.
    model
        A ``keras.Model`` or a path to a ``.keras`` file; every layer must be
        local (see :func:`tilepipe.model.footprint_of`).
    tile_size
        Core size of a tile in pixels, ``int`` or ``(rows, cols)``; rounded up
        to a multiple of a strided model's total stride.
    halo
        Optional larger halo (pixels); never less than the model needs.
    batch_size
        Tiles of the same shape per model call.

    Returns
    -------
    numpy.ndarray
        float32, equal (to float32 round-off) to ``model(to_dense(st)[None])[0]``
        for ``H x W x C``; ``model(to_dense(st)[None, :, :, None])[0]`` for
        ``H x W``; ``model(to_dense(st))`` for a batch. For a strided model
        (a U-Net) the reference is the model on the scene padded with zeros at
        the bottom and right to a multiple of its total stride, cropped back to
        the output pixels that cover the scene.
    """
    try:
        tile = parse_tile_size(tile_size)
    except ValueError as exc:
        raise InputError(f"tile_size: {exc}") from exc
    keras_model = resolve_model(model)
    footprint = footprint_of(keras_model, name=os.fspath(model) if isinstance(model, (str, os.PathLike)) else None)
    need = footprint.halo
    tile = stride_aligned(tile, footprint.step)  # a strided model's windows align to its stride
    if halo is not None and halo < need:
        raise InputError(f"halo {halo} is less than the {need} pixels the model needs")
    # Kept with the model object: a second call traces nothing it traced before.
    model_fn = compiled(keras_model)
    try:
        indices = np.asarray(sparse_tensor.indices)
        values = np.asarray(sparse_tensor.values)
        shape = tuple(int(s) for s in np.asarray(sparse_tensor.dense_shape))
    except AttributeError as exc:
        raise InputError(f"sparse_tensor: expected a tf.SparseTensor, got {type(sparse_tensor).__name__}") from exc
    if len(shape) == 4:
        images = []
        for n in range(shape[0]):
            sel = indices[:, 0] == n
            scene = coo_from_arrays(indices[sel, 1:], values[sel], shape[1:], name="SparseTensor")
            images.append(_run_scene(scene, model_fn, footprint, tile, max(need, halo or 0), batch_size))
        return np.stack(images)
    scene = coo_from_arrays(indices, values, shape, name="SparseTensor")
    return _run_scene(scene, model_fn, footprint, tile, max(need, halo or 0), batch_size)


def _run_scene(
    scene: CooScene, model: CompiledModel, footprint: Footprint, tile: tuple[int, int], halo: int, batch_size: int
) -> np.ndarray:
    rows, cols, bands = scene.shape
    if model.in_channels is not None and model.in_channels != bands:
        raise ModelError(f"the model expects {model.in_channels} input channels, the SparseTensor has {bands}")
    out_rows, out_cols = footprint.output_shape((rows, cols))
    padded = footprint.padded_shape((rows, cols))
    too_short = padded[0] < footprint.rows.min_length or padded[1] < footprint.cols.min_length
    if out_rows <= 0 or out_cols <= 0 or too_short:
        raise InputError(f"a {rows} x {cols} scene is smaller than the model's valid footprint")
    grid = TileGrid((rows, cols), (min(tile[0], rows), min(tile[1], cols)), halo)
    buckets = TileBuckets(scene, grid, name="SparseTensor")
    jobs = plan_jobs(grid, footprint)
    out: np.ndarray | None = None
    busy_jobs, busy_data = [], []
    empties = []
    for job in jobs:
        shape, flat, vals = buckets.window_entries(grid.tile(*job.tile))
        if flat.size == 0:
            empties.append(job)
        else:
            busy_jobs.append(job)
            busy_data.append(TileData(shape, vals, flat))
    cores = compute_tiles(model, busy_jobs, busy_data, bands, footprint=footprint, scene_shape=(rows, cols),
                          batch_size=batch_size).cores
    empty_cores = [(j, empty_core(model, j, bands, footprint)) for j in empties]
    for job, core in [*zip(busy_jobs, cores, strict=True), *empty_cores]:
        if out is None:
            out = np.empty((out_rows, out_cols, core.shape[2]), dtype=np.float32)
        out[job.out_core.slices] = core
    assert out is not None
    return out
