"""``tilepipe export RESULT OUT.tif``."""

from __future__ import annotations

import click

from tilepipe.cli import options
from tilepipe.export import Classes, Product, Scale, Threshold, export_geotiff

#: A scaled product's defaults (its range), shown by --help.
_SCALE = Scale()


@click.command("export")
@click.argument("result")
@click.argument("out")
@click.option("--cog", is_flag=True, help="Write a Cloud-Optimized GeoTIFF.")
@click.option("--classes", is_flag=True, help="Write the class map (argmax over bands, with a colour table).")
@click.option("--threshold", type=float, default=None, metavar="VALUE",
              help="Write a binary uint8 mask: band > VALUE (255 where NaN).")
@click.option("--scale", "scaled", is_flag=True, help="Write uint8 codes with scale/offset (see --scale-range).")
@click.option("--scale-range", nargs=2, type=float, default=(_SCALE.min, _SCALE.max), show_default=True,
              metavar="MIN MAX",
              help="The values codes 0 and 255 stand for, with --scale.")
@click.option("--scale-nodata", type=click.Choice(["0", "255"]), default=None,
              help="With --scale: the code kept for NaN, [MIN, MAX] spread over the other 255 "
                   "(default: none, and a result holding NaN is refused).")
@click.option("--band", type=int, default=None, help="Zero-based band of --threshold (needed for several bands).")
@click.option("--band-names", default=None, metavar="A,B,...", help="Names of the result's bands, comma-separated.")
@click.option("--bounds", nargs=4, type=float, default=None, metavar="MINX MINY MAXX MAXY",
              help="Export only the pixels this box touches, in the result's CRS.")
@click.option("--window", nargs=4, type=int, default=None, metavar="ROW COL HEIGHT WIDTH",
              help="Export only these result pixels.")
@options.overwrite
@options.progress
def command(result: str, out: str, cog: bool, classes: bool, threshold: float | None, scaled: bool,
            scale_range: tuple[float, float], scale_nodata: str | None, band: int | None, band_names: str | None,
            bounds: tuple[float, float, float, float] | None, window: tuple[int, int, int, int] | None,
            overwrite: bool, progress: bool) -> None:
    """Export a RESULT store, or one product of it, to a tiled, compressed GeoTIFF at OUT (windowed)."""
    asked = [name for name, on in (("--classes", classes), ("--threshold", threshold is not None),
                                   ("--scale", scaled)) if on]
    if len(asked) > 1:
        raise click.UsageError(f"give at most one of --classes, --threshold, --scale (got {', '.join(asked)})")
    if band is not None and threshold is None:
        raise click.UsageError("--band goes with --threshold")
    if scale_nodata is not None and not scaled:
        raise click.UsageError("--scale-nodata goes with --scale")
    if bounds is not None and window is not None:
        raise click.UsageError("give --bounds or --window, not both")
    product: Product | None = None
    if classes:
        product = Classes()
    elif threshold is not None:
        product = Threshold(threshold, band)
    elif scaled:
        product = Scale(*scale_range, nodata=None if scale_nodata is None else int(scale_nodata))
    names = [name.strip() for name in band_names.split(",")] if band_names is not None else None
    path = export_geotiff(result, out, cog=cog, overwrite=overwrite, progress=progress, product=product,
                          band_names=names, window=window, bounds=bounds)
    click.echo(f"wrote {path}")
