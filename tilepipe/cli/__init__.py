"""The ``tilepipe`` command: one small module per subcommand.

Library errors (:class:`~tilepipe.errors.TilepipeError`) become one line on
stderr and exit code 1 here, at the CLI's edge; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from tilepipe._version import __version__
from tilepipe.errors import TilepipeError

__all__ = ["cli", "main"]


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TilepipeError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tilepipe")
def cli() -> None:
    """Run Keras Conv2D models over huge, sparse scenes, tiled exactly, on Dask."""


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tilepipe.cli import export, info, ingest, quicklook, run

    for module in (ingest, run, export, info, quicklook):
        cli.add_command(module.command)
    sys.exit(cli.main(prog_name="tilepipe", standalone_mode=True))
