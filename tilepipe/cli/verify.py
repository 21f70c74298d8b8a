"""``tilepipe verify RESULT``."""

from __future__ import annotations

import click

from tilepipe.verify import DEFAULT_BORDER, DEFAULT_MEMORY, DEFAULT_TILES, DEFAULT_TOLERANCE, verify_result


@click.command("verify")
@click.argument("result")
@click.option("--tiles", type=click.IntRange(min=0), default=DEFAULT_TILES, show_default=True,
              help="Random interior tiles to check, besides the border tiles.")
@click.option("--all", "every", is_flag=True,
              help="Check every tile of the result (cheap where the scene fits --memory).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random draw of tiles.")
@click.option("--tolerance", type=click.FloatRange(min=0), default=DEFAULT_TOLERANCE, show_default=True,
              help="Largest relative difference max|diff| / max|reference| per tile that passes.")
@click.option("--scene", default=None, help="The scene store, where it moved since the run.")
@click.option("--model", default=None, help="The .keras file, where it moved since the run (the same file).")
@click.option("--border", type=click.IntRange(min=0), default=DEFAULT_BORDER, show_default=True,
              help="Border tiles to check at most (every one where the grid has fewer).")
@click.option("--memory", "memory_mb", type=click.IntRange(min=0), default=DEFAULT_MEMORY // 2**20,
              show_default=True, help="MiB of activations within which the whole padded scene is computed at once.")
def command(result: str, tiles: int, every: bool, seed: int, tolerance: float, scene: str | None, model: str | None,
            border: int, memory_mb: int) -> None:
    """Check RESULT against the model recomputed on the scene: every border tile and random interior ones,
    each on a window far larger than the model's footprint (the whole padded scene where it fits).

    Prints one line per tile with its largest relative difference and a final line; exits non-zero
    where a tile differs by more than the tolerance.
    """
    report = verify_result(result, tiles=None if every else tiles, seed=seed, tolerance=tolerance, scene=scene,
                           model=model, border=border, memory=memory_mb * 2**20,
                           on_tile=lambda check: click.echo(check.describe()))
    if not report.passed:
        raise click.ClickException(report.summary())
    click.echo(report.summary())
