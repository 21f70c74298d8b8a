"""``tilepipe ingest SOURCE STORE``."""

from __future__ import annotations

import click

from tilepipe.api import ingest
from tilepipe.cli import options
from tilepipe.errors import InputError
from tilepipe.execute.cluster import connect, resolve_address


@click.command("ingest")
@click.argument("source")
@click.argument("store")
@click.option("--tile-size", type=int, default=1024, show_default=True, help="Tile core size in pixels.")
@click.option("--halo", type=int, default=None, help="Overlap in pixels (default: what --model needs, else 16).")
@click.option("--model", "model", default=None, help="A .keras model whose footprint sets the halo.")
@click.option("--nodata", type=float, default=None, help="Override the source's nodata value.")
@click.option("--bands", default=None, help="Comma-separated 1-based bands to read (default: all).")
@options.scheduler
@options.overwrite
def command(source: str, store: str, tile_size: int, halo: int | None, model: str | None, nodata: float | None,
            bands: str | None, scheduler: str | None, overwrite: bool) -> None:
    """Ingest a raster SOURCE (GeoTIFF) into a sparse, tiled scene STORE (Zarr v3).

    Reads windows on local threads, or on a Dask cluster with --scheduler (or $DASK_SCHEDULER_ADDRESS).
    """
    try:
        band_list = tuple(int(b) for b in bands.split(",")) if bands else None
    except ValueError:
        raise InputError(f"--bands: expected comma-separated integers, got {bands!r}") from None
    address = resolve_address(scheduler)
    if address:
        with connect(address) as client:
            scene = ingest(source, store, tile_size=tile_size, halo=halo, model=model, nodata=nodata,
                           bands=band_list, overwrite=overwrite, client=client)
    else:
        scene = ingest(source, store, tile_size=tile_size, halo=halo, model=model, nodata=nodata,
                       bands=band_list, overwrite=overwrite)
    nnz = scene.index()
    ny, nx = nnz.shape
    click.echo(f"{store}: {scene.info.shape[0]} x {scene.info.shape[1]} x {scene.info.bands} {scene.info.dtype}, "
               f"{ny} x {nx} tiles of {scene.info.tile_size[0]} px (halo {scene.info.halo}), "
               f"{int((nnz > 0).sum())} occupied")
