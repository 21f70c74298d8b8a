"""``tilepipe watch INBOX --workflow WORKFLOW.yaml``: every new scene of an inbox, processed once."""

from __future__ import annotations

import json

import click

from tilepipe.cli import options
from tilepipe.sources.identity import short_identity
from tilepipe.store.info import utc_timestamp
from tilepipe.watch import DEFAULT_PATTERNS, Inbox, Ledger, Outputs, SceneRecord, Watcher, WatchOptions
from tilepipe.watch.service import CLAIMS
from tilepipe.workflow import load_scene_workflow

_SECONDS = click.FloatRange(min=0)
#: The watcher's own defaults, shown by --help: one place decides them (:class:`WatchOptions`).
_DEFAULTS = WatchOptions()


@click.command("watch")
@click.argument("inbox")
@click.option("--workflow", "workflow_path", required=True, type=click.Path(dir_okay=False), metavar="WORKFLOW",
              help="Workflow file without an 'input' section; its output paths hold {scene}, the scene's stem.")
@click.option("--once", is_flag=True, help="One pass, then exit: 0 if every scene it took succeeded, else 1.")
@click.option("--interval", type=_SECONDS, default=_DEFAULTS.interval, show_default=True,
              help="Seconds between passes.")
@click.option("--settle", type=_SECONDS, default=_DEFAULTS.settle, show_default=True,
              help="Seconds a file must be left unchanged before it is taken.")
@click.option("--max-concurrent", type=click.IntRange(min=1), default=_DEFAULTS.max_concurrent, show_default=True,
              help="Scenes run at once on the cluster.")
@click.option("--max-attempts", type=click.IntRange(min=1), default=_DEFAULTS.max_attempts, show_default=True,
              help="Attempts before a failing scene is quarantined.")
@click.option("--backoff", type=_SECONDS, default=_DEFAULTS.backoff, show_default=True,
              help="Seconds before the first retry of a failed scene, doubled for each later one.")
@click.option("--lease", type=click.FloatRange(min=1), default=_DEFAULTS.lease, show_default=True,
              help="Seconds a claim lasts unless renewed (a watcher renews its claims while it runs).")
@options.scheduler
@options.gpu
@click.option("--ledger", "ledger_path", default=None, metavar="PATH",
              help="The SQLite ledger (default: .tilepipe-watch.sqlite beside the outputs). Keep it on a local disk.")
@click.option("--work-dir", default=None, metavar="DIR", help="Where scenes run before their outputs are published.")
@click.option("--claims", type=click.Choice(CLAIMS), default=_DEFAULTS.claims, show_default=True,
              help="ledger: SQLite transactions (watchers on one machine); scheduler: also a lock on the shared "
              "Dask scheduler (watchers on several machines); auto: scheduler when --scheduler is used.")
@click.option("--on-done", default=None, metavar="CMD",
              help="Command run after each finished scene, with the scene and the result as its last two arguments.")
@click.option("--pattern", multiple=True, metavar="GLOB",
              help=f"File names taken as scenes (repeatable; default: {' '.join(DEFAULT_PATTERNS)}).")
@click.option("--ignore", multiple=True, metavar="GLOB",
              help="File names never taken, besides dot-files, *.part, *.tmp, ... (repeatable).")
@click.option("--status", is_flag=True, help="List every scene the ledger knows, and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --status: as JSON.")
@click.option("--retry", "retry_scenes", multiple=True, metavar="SCENE",
              help="Put a failed or quarantined scene (file name, stem or identity) back in the queue, and exit "
              "(repeatable).")
@click.option("--all", "retry_all", is_flag=True, help="With --retry or alone: every failed or quarantined scene.")
@click.option("--dry-run", is_flag=True, help="With --retry: say what would be retried, change nothing.")
def command(inbox: str, workflow_path: str, once: bool, interval: float, settle: float, max_concurrent: int,
            max_attempts: int, backoff: float, lease: float, scheduler: str | None, gpu: bool | None,
            ledger_path: str | None, work_dir: str | None, claims: str, on_done: str | None,
            pattern: tuple[str, ...], ignore: tuple[str, ...], status: bool, as_json: bool,
            retry_scenes: tuple[str, ...], retry_all: bool, dry_run: bool) -> None:
    """Watch INBOX (a folder or s3://bucket/prefix) and run WORKFLOW on each new raster exactly once.

    A scene is taken once it has been left unchanged for --settle seconds; a ledger
    beside the outputs records each one (queued, running, done, failed,
    quarantined). Without --once the watcher polls every --interval seconds and
    keeps its cluster warm; SIGTERM or SIGINT stops it taking scenes and lets the
    running ones finish.
    """
    if as_json and not status:
        raise click.UsageError("--json goes with --status")
    retrying = bool(retry_scenes) or retry_all
    if dry_run and not retrying:
        raise click.UsageError("--dry-run goes with --retry")
    workflow = load_scene_workflow(workflow_path)
    outputs = Outputs(workflow, ledger=ledger_path, work=work_dir)
    ledger = Ledger(outputs.ledger)
    if status:
        _show_status(ledger, as_json)
        return
    if retrying:
        for record in ledger.retry(retry_scenes, everything=retry_all, dry_run=dry_run):
            verb = "would put" if dry_run else "put"
            click.echo(f"{record.key}: {verb} back in the queue (was {record.status} after {record.attempts} "
                       f"attempts: {record.error or '-'})")
        return
    watcher = Watcher(
        Inbox(inbox, patterns=pattern or DEFAULT_PATTERNS, ignore=ignore), workflow, outputs, ledger,
        WatchOptions(settle=settle, interval=interval, max_concurrent=max_concurrent, max_attempts=max_attempts,
                     backoff=backoff, lease=lease, on_done=on_done, claims=claims, scheduler=scheduler, gpu=gpu),
        say=click.echo,
    )
    outcomes = watcher.once() if once else watcher.serve()
    failed = [o for o in outcomes if o.status in ("failed", "quarantined")]
    refused = [o for o in outcomes if o.status == "refused"]
    if once and (failed or refused):
        said = []
        if failed:
            said.append(f"{len(failed)} of {len(outcomes) - len(refused)} scenes failed in this pass: "
                        f"{', '.join(o.key for o in failed)}")
        if refused:
            said.append(f"{len(refused)} refused: {', '.join(o.key for o in refused)}")
        raise click.ClickException(f"{'; '.join(said)} (ledger {ledger.path})")


def _show_status(ledger: Ledger, as_json: bool) -> None:
    records = ledger.records()
    waiting = ledger.waiting()
    if as_json:
        click.echo(json.dumps({"ledger": ledger.path, "scenes": [r.to_dict() for r in records],
                               "waiting": waiting}, indent=2))
        return
    if not records and not waiting:
        click.echo(f"{ledger.path}: no scenes yet")
        return
    header = ("SCENE", "IDENTITY", "STATUS", "ATTEMPTS", "STARTED", "ENDED", "WALL", "RESULT / LAST ERROR")
    rows = [header, *(_row(r) for r in records),
            *((w["name"], "-", "waiting", "-", "-", "-", "-", w["why"]) for w in waiting)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1])


def _row(r: SceneRecord) -> tuple[str, ...]:
    last = r.result if r.status == "done" else (r.error or r.result or "-")
    if r.status != "done" and r.error and r.result:
        last = r.error
    return (r.name, short_identity(r.identity), r.status, str(r.attempts),
            utc_timestamp(r.started) if r.started else "-", utc_timestamp(r.ended) if r.ended else "-",
            f"{r.wall:.1f} s" if r.wall is not None else "-", last or "-")
