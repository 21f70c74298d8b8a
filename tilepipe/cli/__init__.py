"""The ``tilepipe`` command: one small module per subcommand.

The group knows its subcommands from a name -> module table and imports a
module only when its command is asked for (click's "lazy group"), so
``tilepipe.cli.cli`` is complete when used from Python or ``CliRunner``, and
importing this package loads no subcommand.

Library errors (:class:`~tilepipe.errors.TilepipeError`) and faults of the
machine (``OSError``: disk full, read-only folders) become one line on stderr
and exit code 1 here, at the CLI's edge; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from tilepipe._version import __version__
from tilepipe.errors import TilepipeError
from tilepipe.logs import current_log_file, to_file

__all__ = ["cli", "main"]

#: Subcommand name -> the module whose ``command`` it is; imported on first use.
SUBCOMMANDS: dict[str, str] = {
    "ingest": "tilepipe.cli.ingest",
    "run": "tilepipe.cli.run",
    "export": "tilepipe.cli.export",
    "info": "tilepipe.cli.info",
    "quicklook": "tilepipe.cli.quicklook",
    "verify": "tilepipe.cli.verify",
    "watch": "tilepipe.cli.watch",
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
            raise click.ClickException(str(exc) + _log_hint()) from None
        except OSError as exc:
            # A fault of the machine (disk full, read-only, permissions) that no layer below named:
            # still one line, naming the file where the system said which.
            where = f"{exc.filename}: " if exc.filename else ""
            raise click.ClickException(f"{where}{exc.strerror or exc}{_log_hint()}") from None


def _log_hint() -> str:
    """Where the details are, when the log file holds any."""
    path = current_log_file()
    if path and os.path.isfile(path) and os.path.getsize(path) > 0:
        return f" (details in {path})"
    return ""


@click.group("tilepipe", cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tilepipe")
@click.option("-v", "--verbose", is_flag=True, help="Show library and worker log records on the terminal too.")
def cli(verbose: bool) -> None:
    """Run Keras Conv2D models over huge, sparse scenes, tiled exactly, on Dask.

    Log records of the libraries and of the workers of an embedded cluster go to a
    log file (in $TILEPIPE_LOG_DIR, else a tilepipe-logs folder in the temporary
    folder), which an error line names.
    """
    to_file(verbose=verbose)


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(cli.main(prog_name="tilepipe", standalone_mode=True))
