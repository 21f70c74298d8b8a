"""Ingest: a source read into a tiled, sparse scene store, one block of tiles per task."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from tilepipe.errors import InputError, StoreError
from tilepipe.execute.executor import Task, execute
from tilepipe.execute.models import facts_on_worker, model_file
from tilepipe.execute.preflight import check_workers
from tilepipe.execute.tasks import BlockDone, ingest_coo_block, ingest_raster_block
from tilepipe.geometry import parse_tile_size
from tilepipe.location import Location, existing_output
from tilepipe.sources import GeoTiffSource, TileBuckets, as_coo, parse_crs, parse_transform, probe_geotiff
from tilepipe.store._zarr import remove_store
from tilepipe.store.scene import SceneInfo, SceneStore, source_identity

__all__ = ["DEFAULT_HALO", "ingest"]

DEFAULT_HALO = 16


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
        :class:`~tilepipe.sources.CooScene`.
    store
        Where the Zarr v3 scene store goes (a folder, or a URL zarr opens).
    tile_size
        Core size of a tile in pixels, int or ``(rows, cols)``.
    halo
        Pixels of overlap stored around each core. Default: what ``model``
        needs when one is given, else 16. A halo smaller than ``model`` needs
        is refused.
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
    location = Location.of(store)
    try:
        tile = parse_tile_size(tile_size)
    except ValueError as exc:
        raise InputError(f"tile_size: {exc}") from exc
    halo = _resolve_halo(halo, model, client)
    if isinstance(source, (str, os.PathLike)):
        raster = probe_geotiff(os.fspath(source), bands=tuple(bands) if bands else None, nodata=nodata)
        if client is not None:
            check_workers(client, inputs=[raster.path], outputs=[str(location)])
        info = _raster_info(raster, tile, halo)
        blocks = _blocks(info)
        return _write(location, info, overwrite, client, progress,
                      lambda _store: [Task(ingest_raster_block, (raster, str(location), b)) for b in blocks])
    scene = as_coo(source)
    info = SceneInfo(
        shape=scene.shape[:2], bands=scene.shape[2], dtype=str(scene.values.dtype), tile_size=tile, halo=halo,
        crs_wkt=parse_crs(crs), transform=parse_transform(transform),
        source={"kind": "coo", "sha256": scene.sha256()},
    )

    def coo_tasks(store: SceneStore) -> list[Task[BlockDone]]:
        buckets = TileBuckets(scene, info.grid, name="input")  # points sorted by tile once
        return [Task(ingest_coo_block, (buckets, store, b)) for b in _blocks(info)]

    # Points in memory are written from here, on local threads: shipping them to workers would copy the scene.
    return _write(location, info, overwrite, None, progress, coo_tasks)


def _raster_info(raster: GeoTiffSource, tile: tuple[int, int], halo: int) -> SceneInfo:
    """The scene store's description of a raster source, with the source's identity."""
    location = Location.of(raster.path)
    identity: dict[str, Any] = source_identity(location.path) if location.is_local else {"path": raster.path}
    identity.update({"bands": list(raster.bands), "nodata": raster.nodata})
    return SceneInfo(
        shape=raster.shape, bands=len(raster.bands), dtype=raster.dtype, tile_size=tile, halo=halo,
        nodata=raster.nodata, crs_wkt=raster.crs_wkt, transform=raster.transform, source=identity,
    )


def _blocks(info: SceneInfo) -> list[tuple[int, int]]:
    ny, nx = info.grid.grid_shape
    by, bx = info.block
    return [(r, c) for r in range(-(-ny // by)) for c in range(-(-nx // bx))]


def _resolve_halo(halo: int | None, model: Any, client: Any) -> int:
    if halo is not None and (isinstance(halo, bool) or not isinstance(halo, int) or halo < 0):
        raise InputError(f"halo: expected an integer >= 0, got {halo!r}")
    if model is None:
        return DEFAULT_HALO if halo is None else halo
    if client is not None and isinstance(model, (str, os.PathLike)):
        # A worker reads the model's footprint: this process needs no TensorFlow.
        with model_file(model) as mf:
            need = facts_on_worker(client, mf, None).footprint.halo
    else:
        from tilepipe.model.loader import resolve_model  # noqa: PLC0415 - TensorFlow only where no worker can do it
        from tilepipe.model.receptive import footprint_of  # noqa: PLC0415 - as above

        need = footprint_of(resolve_model(model)).halo
    if halo is not None and halo < need:
        raise InputError(f"halo {halo} is less than the {need} pixels the model needs")
    return need if halo is None else halo


def _write(
    location: Location, info: SceneInfo, overwrite: bool, client: Any, progress: bool,
    make_tasks: Callable[[SceneStore], list[Task[BlockDone]]],
) -> SceneStore:
    """Reuse a store of the same scene, or create one, run its block tasks and mark it complete."""

    def same_scene() -> bool:
        try:
            existing = SceneStore.open(location)
        except StoreError:
            return False
        return existing.info == info and existing.info.source == info.source

    decision = existing_output(location, overwrite=overwrite, reusable=same_scene, holds="another scene")
    if decision == "reuse":
        return SceneStore.open(location)
    if decision == "replace":
        remove_store(location)
    store = SceneStore.create(location, info)
    entries = 0

    def add(_task: Task[BlockDone], done: BlockDone) -> None:
        nonlocal entries
        entries += done.entries

    try:
        execute(make_tasks(store), add, client=client, name="ingest", progress=progress, unit="block")
    except BaseException:
        remove_store(location)  # nothing half-written that looks like a scene
        raise
    store.mark_complete(nnz_total=entries)
    return SceneStore.open(location)
