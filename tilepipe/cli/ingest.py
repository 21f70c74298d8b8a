"""``tilepipe ingest SOURCE... STORE``."""

from __future__ import annotations

import click

from tilepipe.api import ingest
from tilepipe.cli import options
from tilepipe.errors import InputError
from tilepipe.execute.cluster import connect
from tilepipe.execute.ingest import DEFAULT_HALO
from tilepipe.geometry import DEFAULT_TILE_SIZE


@click.command("ingest")
@click.argument("sources", nargs=-1, required=True)
@click.argument("store")
@click.option("--tile-size", type=int, default=DEFAULT_TILE_SIZE, show_default=True, help="Tile core size in pixels.")
@click.option("--halo", type=int, default=None,
              help=f"Overlap in pixels (default: what --model needs, else {DEFAULT_HALO}).")
@click.option("--model", "model", default=None, help="A .keras model whose footprint sets the halo.")
@click.option("--nodata", type=float, default=None, help="Override every band's nodata value.")
@click.option("--mask/--ignore-mask", default=True, show_default=True,
              help="Honour a raster's mask (internal or .msk mask, alpha band): masked pixels are absent, "
                   "as nodata pixels are. --ignore-mask reads them as data.")
@click.option("--bands", default=None, help="Comma-separated 1-based bands of a single raster (default: all).")
@click.option("--assets", default=None, help="Comma-separated asset keys to stack, for a STAC item SOURCE.")
@options.scheduler
@options.overwrite
def command(sources: tuple[str, ...], store: str, tile_size: int, halo: int | None, model: str | None,
            nodata: float | None, mask: bool, bands: str | None, assets: str | None, scheduler: str | None,
            overwrite: bool) -> None:
    """Ingest a raster SOURCE into a sparse, tiled scene STORE (Zarr v3).

    SOURCE is a GeoTIFF, a VRT or anything rasterio opens; several SOURCEs are a band
    stack (rasters on one grid, their bands stacked in the order given); a STAC item
    JSON takes --assets. Reads windows on local threads, or on a Dask cluster with
    --scheduler (or $DASK_SCHEDULER_ADDRESS).
    """
    try:
        band_list = tuple(int(b) for b in bands.split(",")) if bands else None
    except ValueError:
        raise InputError(f"--bands: expected comma-separated integers, got {bands!r}") from None
    asset_list = tuple(a.strip() for a in assets.split(",")) if assets is not None else None
    if asset_list is not None and not all(asset_list):
        raise InputError(f"--assets: expected comma-separated asset keys, got {assets!r}")
    source: str | list[str] = sources[0] if len(sources) == 1 else list(sources)
    with connect(scheduler, embedded=False) as client:  # no scheduler: None, and windows are read on local threads
        scene = ingest(source, store, tile_size=tile_size, halo=halo, model=model, nodata=nodata, mask=mask,
                       bands=band_list, assets=asset_list, overwrite=overwrite, client=client)
    nnz = scene.index()
    ny, nx = nnz.shape
    click.echo(f"{store}: {scene.info.shape[0]} x {scene.info.shape[1]} x {scene.info.bands} {scene.info.dtype}, "
               f"{ny} x {nx} tiles of {scene.info.tile_size[0]} px (halo {scene.info.halo}), "
               f"{int((nnz > 0).sum())} occupied")
