"""The ``tilepipe`` command: one small module per subcommand.

The group knows its subcommands from a name -> module table and imports a
module only when its command is asked for (click's "lazy group"), so
``tilepipe.cli.cli`` is complete when used from Python or ``CliRunner``, and
importing this package loads no subcommand.

Library errors (:class:`~tilepipe.errors.TilepipeError`) become one line on
stderr and exit code 1 here, at the CLI's edge; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from tilepipe._version import __version__
from tilepipe.errors import TilepipeError

__all__ = ["cli", "main"]

#: Subcommand name -> the module whose ``command`` it is; imported on first use.
SUBCOMMANDS: dict[str, str] = {
    "ingest": "tilepipe.cli.ingest",
    "run": "tilepipe.cli.run",
    "export": "tilepipe.cli.export",
    "info": "tilepipe.cli.info",
    "quicklook": "tilepipe.cli.quicklook",
}


class _Group(click.Group):
    """Loads subcommands from :data:`SUBCOMMANDS` on demand; turns library errors into one line."""
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *SUBCOMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = SUBCOMMANDS.get(cmd_name)
        if module is None:
            return super().get_command(ctx, cmd_name)
        command: click.Command = importlib.import_module(module).command
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TilepipeError as exc:
            raise click.ClickException(str(exc)) from None


@click.group("tilepipe", cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tilepipe")
def cli() -> None:
    """Run Keras Conv2D models over huge, sparse scenes, tiled exactly, on Dask."""


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(cli.main(prog_name="tilepipe", standalone_mode=True))
