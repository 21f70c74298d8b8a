"""Sources of scenes, and their ingest: GeoTIFFs, SparseTensors and COO arrays into scene stores."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import uuid
from typing import Any

import numpy as np

from tilepipe.errors import InputError, StoreError
from tilepipe.geometry import parse_tile_size
from tilepipe.sources.coo import CooScene, TileBuckets, coo_from_arrays, coo_from_sparse_tensor
from tilepipe.sources.geotiff import GeoTiffSource, probe_geotiff
from tilepipe.sources.synthetic import synthetic_scene
from tilepipe.sources.tasks import ingest_coo_block, ingest_geotiff_block
from tilepipe.store._zarr import remove_store, store_exists
from tilepipe.store.scene import SceneInfo, SceneStore, source_identity

__all__ = ["DEFAULT_HALO", "CooScene", "ingest", "synthetic_scene"]

DEFAULT_HALO = 16
_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def ingest(
    source: Any,
    store: str | os.PathLike[str],
    *,
    tile_size: int | tuple[int, int] = 1024,
    halo: int | None = None,
    model: Any = None,
    nodata: float | None = None,
    bands: tuple[int, ...] | list[int] | None = None,
    crs: Any = None,
    transform: Any = None,
    overwrite: bool = False,
    client: Any = None,
    progress: bool = False,
) -> SceneStore:
    """Ingest a scene into a tiled, sparse scene store.

    Parameters
    ----------
    source
        A raster path (GeoTIFF or anything rasterio opens; ``nodata`` pixels
        become absent entries), a ``tf.SparseTensor`` (``H x W`` or
        ``H x W x C``), a ``(indices, values, shape)`` tuple of COO arrays, or a
        :class:`CooScene`.
    store
        Where the Zarr v3 scene store goes (a folder, or a URL zarr opens).
    tile_size
        Core size of a tile in pixels, int or ``(rows, cols)``.
    halo
        Pixels of overlap stored around each core. Default: what ``model``
        needs when one is given, else 16. Never less than ``model`` needs.
    model
        Optional ``keras.Model`` or ``.keras`` path whose footprint sets the halo.
    nodata, bands
        For rasters: override the file's nodata; 1-based bands to read.
    crs, transform
        For in-memory sources: a CRS (anything ``rasterio.crs.CRS.from_user_input``
        takes) and an affine transform (``affine.Affine`` or 6 numbers).
    overwrite
        Replace an existing store. Without it, an existing complete store of
        the same source and tiling is reused, and anything else is refused.
    client
        A ``distributed.Client``: raster windows are then read by its workers,
        and a worker reads the model's footprint. Without one, tasks run on
        local threads. Scenes already in memory are always written from here.
    """
    store_path = os.fspath(store)
    try:
        tile = parse_tile_size(tile_size)
    except ValueError as exc:
        raise InputError(f"tile_size: {exc}") from exc
    halo = _resolve_halo(halo, model, client)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        raster = probe_geotiff(path, bands=tuple(bands) if bands else None, nodata=nodata)
        identity = source_identity(path) if "://" not in path else {"path": path}
        identity.update({"bands": list(raster.bands), "nodata": raster.nodata})
        info = SceneInfo(
            shape=raster.shape, bands=len(raster.bands), dtype=raster.dtype, tile_size=tile, halo=halo,
            nodata=raster.nodata, crs_wkt=raster.crs_wkt, transform=raster.transform, ndim=3, source=identity,
        )
        return _write(store_path, info, overwrite, lambda s: _write_raster(raster, s, client, progress))
    scene = _as_coo(source)
    identity = {"kind": "coo", "sha256": _coo_sha256(scene)}
    info = SceneInfo(
        shape=scene.shape[:2], bands=scene.shape[2], dtype=str(scene.values.dtype), tile_size=tile, halo=halo,
        crs_wkt=_crs_wkt(crs), transform=_transform(transform), ndim=scene.ndim, source=identity,
    )
    return _write(store_path, info, overwrite, lambda s: _write_coo(scene, s, progress))


def _resolve_halo(halo: int | None, model: Any, client: Any = None) -> int:
    if halo is not None and (isinstance(halo, bool) or not isinstance(halo, int) or halo < 0):
        raise InputError(f"halo: expected an integer >= 0, got {halo!r}")
    if model is None:
        return DEFAULT_HALO if halo is None else halo
    if client is not None and isinstance(model, (str, os.PathLike)):
        # A worker reads the model's footprint: this process needs no TensorFlow.
        from tilepipe.model.facts import model_facts
        from tilepipe.model.loader import model_sha256

        path = os.fspath(model)
        need = client.submit(model_facts, path, model_sha256(path), None, pure=False).result().footprint.halo
    else:
        from tilepipe.conv import resolve_model
        from tilepipe.model import footprint_of

        need = footprint_of(resolve_model(model)).halo
    if halo is not None and halo < need:
        raise InputError(f"halo {halo} is less than the {need} pixels the model needs")
    return need if halo is None else halo


def _as_coo(source: Any) -> CooScene:
    if isinstance(source, CooScene):
        return source
    if isinstance(source, tuple) and len(source) == 3:
        return coo_from_arrays(*source)
    if hasattr(source, "indices") and hasattr(source, "dense_shape"):
        return coo_from_sparse_tensor(source)
    raise InputError(
        f"expected a raster path, a tf.SparseTensor or (indices, values, shape), got {type(source).__name__}"
    )


def _coo_sha256(scene: CooScene) -> str:
    digest = hashlib.sha256(str(scene.shape).encode())
    for arr in (scene.rows, scene.cols, scene.bands, scene.values):
        digest.update(np.ascontiguousarray(arr).tobytes())
    return digest.hexdigest()


def _crs_wkt(crs: Any) -> str | None:
    if crs is None:
        return None
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        return str(CRS.from_user_input(crs).to_wkt())
    except (CRSError, ValueError, TypeError) as exc:
        raise InputError(f"crs: not a coordinate reference system: {crs!r}") from exc


def _transform(transform: Any) -> tuple[float, float, float, float, float, float]:
    if transform is None:
        return _IDENTITY
    values = tuple(float(v) for v in tuple(transform)[:6])
    if len(values) != 6:
        raise InputError(f"transform: expected 6 affine coefficients, got {transform!r}")
    return values  # type: ignore[return-value]


def _write(path: str, info: SceneInfo, overwrite: bool, fill: Any) -> SceneStore:
    if store_exists(path):
        if not overwrite:
            try:
                existing = SceneStore.open(path)
            except StoreError:
                existing = None
            if existing is not None and existing.info == info and existing.info.source == info.source:
                return existing
            raise StoreError(f"{path}: already exists and holds another scene; pass overwrite=True (--overwrite)")
        remove_store(path)
    store = SceneStore.create(path, info)
    try:
        nnz = fill(store)
    except BaseException:
        remove_store(path)  # nothing half-written that looks like a scene
        raise
    store.mark_complete(nnz_total=int(nnz))
    return SceneStore.open(path)


def _write_raster(raster: GeoTiffSource, store: SceneStore, client: Any, progress: bool) -> int:
    blocks = store.blocks()
    if client is not None:
        from distributed import as_completed

        token = uuid.uuid4().hex[:8]
        futures = [
            client.submit(ingest_geotiff_block, raster, store.path, b, pure=False,
                          key=f"tilepipe-ingest-{token}-{b[0]}-{b[1]}")
            for b in blocks
        ]
        try:
            return _sum_completed(futures, as_completed(futures), progress)
        except BaseException:
            # Stop the rest and let running ones end before the store is removed under them.
            from distributed import wait

            client.cancel(futures)
            with contextlib.suppress(Exception):
                wait(futures, timeout=60)
            raise
    return _run_local([functools.partial(ingest_geotiff_block, raster, store.path, b) for b in blocks], progress)


def _run_local(calls: list[Any], progress: bool) -> int:
    """Run block tasks on local threads; on a failure, wait for the running ones before raising.

    (Dask's threaded scheduler raises while other tasks still write, and the
    store would be removed under them.)
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        futures = [pool.submit(call) for call in calls]
        try:
            return _sum_completed(futures, as_completed(futures), progress)
        except BaseException:
            for future in futures:
                future.cancel()
            raise  # leaving the with-block waits for the tasks already running


def _sum_completed(futures: list[Any], completed: Any, progress: bool) -> int:
    """Sum the results of block tasks as they complete, with an optional progress bar."""
    bar = _bar(len(futures), "ingest", progress)
    total = 0
    try:
        for future in completed:
            total += future.result()
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return total


def _bar(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="block")


def _write_coo(scene: CooScene, store: SceneStore, progress: bool) -> int:
    buckets = TileBuckets(scene, store.info.grid, name="input")
    return _run_local([functools.partial(ingest_coo_block, buckets, store, b) for b in store.blocks()], progress)
