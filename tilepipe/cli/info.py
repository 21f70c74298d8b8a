"""``tilepipe info STORE``."""

from __future__ import annotations

import json

import click

from tilepipe.api import info


@click.command("info")
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def command(store: str, as_json: bool) -> None:
    """Describe a scene store (shape, bands, CRS, tile grid, occupancy) or a result store
    (shape, provenance, per-tile status, run report)."""

    d = info(store)
    if as_json:
        click.echo(json.dumps(d, indent=2, default=str))
        return
    for key, value in d.items():
        if isinstance(value, dict):
            click.echo(f"{key}:")
            for k, v in value.items():
                click.echo(f"  {k}: {v}")
        else:
            click.echo(f"{key}: {value}")
