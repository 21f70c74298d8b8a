"""``tilepipe quicklook RESULT OUT.png``."""

from __future__ import annotations

import click

from tilepipe.cli import options
from tilepipe.export import quicklook
from tilepipe.export.quicklook import DEFAULT_CMAP, DEFAULT_MAX_SIZE, MIN_SIZE


@click.command("quicklook")
@click.argument("result")
@click.argument("out")
@click.option("--band", type=int, default=0, show_default=True, help="0-based band of the result.")
@click.option("--max-size", type=click.IntRange(min=MIN_SIZE), default=DEFAULT_MAX_SIZE, show_default=True,
              help="Longest side, px.")
@click.option("--cmap", default=DEFAULT_CMAP, show_default=True, help="Matplotlib colour map.")
@options.overwrite
def command(result: str, out: str, band: int, max_size: int, cmap: str, overwrite: bool) -> None:
    """Draw a downsampled, colour-mapped PNG of one band of a RESULT store."""
    path = quicklook(result, out, band=band, max_size=max_size, cmap=cmap, overwrite=overwrite)
    click.echo(f"wrote {path}")
