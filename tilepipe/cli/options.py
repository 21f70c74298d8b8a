"""Options shared by several subcommands."""

from __future__ import annotations

import click

overwrite = click.option("--overwrite", is_flag=True, help="Replace an existing output.")
scheduler = click.option(
    "--scheduler",
    metavar="ADDRESS",
    default=None,
    help="Dask scheduler address (tcp://host:8786). Default: the workflow's cluster.address, "
    "else $DASK_SCHEDULER_ADDRESS, else an embedded local cluster.",
)
gpu = click.option(
    "--gpu/--no-gpu", default=None, help="Send model tasks to workers with the GPU resource (default: the workflow's)."
)
progress = click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
