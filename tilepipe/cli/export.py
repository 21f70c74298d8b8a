"""``tilepipe export RESULT OUT.tif``."""

from __future__ import annotations

import click

from tilepipe.cli import options
from tilepipe.export import export_geotiff


@click.command("export")
@click.argument("result")
@click.argument("out")
@click.option("--cog", is_flag=True, help="Write a Cloud-Optimized GeoTIFF.")
@options.overwrite
@options.progress
def command(result: str, out: str, cog: bool, overwrite: bool, progress: bool) -> None:
    """Export a RESULT store to a tiled, compressed GeoTIFF at OUT (windowed, bounded memory)."""
    path = export_geotiff(result, out, cog=cog, overwrite=overwrite, progress=progress)
    click.echo(f"wrote {path}")
