"""``tilepipe run WORKFLOW.yaml``."""

from __future__ import annotations

import click

from tilepipe.cli import options
from tilepipe.workflow import load_workflow
from tilepipe.workflow_runner import run_workflow


@click.command("run")
@click.argument("workflow", type=click.Path(dir_okay=False))
@options.scheduler
@options.gpu
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Tiles per model call.")
@options.overwrite
@options.progress
def command(workflow: str, scheduler: str | None, gpu: bool | None, batch_size: int | None,
            overwrite: bool, progress: bool) -> None:
    """Run WORKFLOW (a YAML file): ingest, run the model, export.

    Reruns are cheap: a complete result of the same scene and model is left as
    it is, and an interrupted run resumes where it stopped.
    """
    wf = load_workflow(workflow)
    overrides: dict[str, object] = {}
    if scheduler is not None:
        overrides["address"] = scheduler
    if gpu is not None:
        overrides["gpu"] = gpu
    if batch_size is not None:
        overrides["batch_size"] = batch_size
    if overrides:
        wf = wf.with_overrides(**overrides)  # type: ignore[arg-type]
    outcome = run_workflow(wf, overwrite=overwrite, progress=progress, echo=lambda line: click.echo(line, err=True))
    r = outcome.report
    click.echo(r.summary())
    if not r.up_to_date:
        click.echo(f"tiles per worker: {', '.join(f'{w}: {n}' for w, n in sorted(r.tiles_per_worker.items())) or '-'}")
    click.echo(f"workflow wall time {outcome.wall_seconds:.1f} s; result {outcome.result}"
               + (f"; geotiff {outcome.geotiff}" if outcome.geotiff else "")
               + (f"; quicklook {outcome.quicklook}" if outcome.quicklook else ""))
