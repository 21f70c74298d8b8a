"""The watcher: passes over the inbox, claims, runs, retries, quarantine, and the service loop.

A pass lists the inbox, and for every settled scene the ledger does not call done,
quarantined, waiting for a retry or held by a live lease: waits for a free slot
(``max_concurrent``), claims it (a :class:`Claim`: a ledger transaction; on a shared
scheduler also a scheduler lock), and runs the scene workflow on it in a thread, on one
Dask client that stays open for the watcher's life, so the cluster's workers keep their
loaded models between scenes. A run that fails is recorded as ``failed`` and retried on a
later pass, or quarantined, as the watcher's :class:`~tilepipe.watch.ledger.RetryPolicy`
says (``backoff * 2**(attempts - 1)`` seconds; ``max_attempts`` attempts); the other scenes go on.

``--once`` is one pass that waits for its scenes; without it the watcher passes
every ``interval`` seconds until SIGTERM or SIGINT: then it takes no new scene and
lets the running ones finish (a second signal stops them at once: they go back to
the queue and their runs resume on the next pass).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from tilepipe.errors import IncompleteRunError, InputError, StoreError, WatchError
from tilepipe.execute.cluster import connect, resolve_address
from tilepipe.model.loader import model_sha256
from tilepipe.store.lock import LockHolder
from tilepipe.watch.claims import SchedulerClaim
from tilepipe.watch.inbox import Entry, Inbox, remove_tree
from tilepipe.watch.ledger import (
    DEFAULT_BACKOFF,
    DEFAULT_MAX_ATTEMPTS,
    Ledger,
    RetryPolicy,
    SceneRecord,
    SceneState,
)
from tilepipe.watch.outputs import Outputs, clashes, final_paths
from tilepipe.workflow import SceneWorkflow, Workflow

__all__ = ["Claim", "Outcome", "WatchOptions", "Watcher"]

log = logging.getLogger("tilepipe.watch")

#: How claims are made: ``ledger`` (SQLite transactions: watchers of one machine), ``scheduler``
#: (also a lock on the shared Dask scheduler: watchers on several machines), ``auto`` (scheduler
#: claims where the watcher uses an existing scheduler, else ledger claims).
CLAIMS: tuple[str, ...] = ("auto", "ledger", "scheduler")


@dataclass(frozen=True, slots=True)
class WatchOptions:
    """How a watcher behaves. Times in seconds. Its defaults are ``tilepipe watch``'s.

    ``settle``: a scene must have been left alone this long; ``interval``: between
    passes of the service; ``lease``: how long a claim lasts without renewal (renewed
    every quarter of it while the scene runs); ``backoff``: the first retry's delay,
    doubled for each later one; ``on_done``: a command run after each finished scene
    with the scene's and the result's locations as its last two arguments.
    """

    settle: float = 5.0
    interval: float = 60.0
    max_concurrent: int = 1
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff: float = DEFAULT_BACKOFF
    lease: float = 120.0
    on_done: str | None = None
    claims: str = "auto"
    scheduler: str | None = None
    gpu: bool | None = None

    @property
    def retry(self) -> RetryPolicy:
        """When a failed scene is tried again (``backoff`` seconds, doubled each time) and when it is
        quarantined (after ``max_attempts`` attempts)."""
        return RetryPolicy(base=self.backoff, max_attempts=self.max_attempts)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of a scene a pass took: ``status`` is ``done``, ``failed``, ``quarantined`` or
    ``released`` (given back unfinished on a stop) or ``refused`` (not taken: its outputs clash
    with another scene's or something else is in their way); ``line`` is its one-line summary."""

    key: str
    status: str
    line: str


class Claim:
    """A scene this watcher holds, from its claim to its end: the ledger row leased to it
    (``record``) and, with scheduler claims, the scene's lock on the shared scheduler.

    :meth:`take` takes them in order: the scheduler lock, then a look at the done marker
    (another watcher may have finished the scene: the lock guards the marker's check, the run
    and the marker's writing), then the ledger row; where one is refused, what was taken is
    given back. The scene runs inside ``with claim:`` and ends the lease with :meth:`finish`
    or :meth:`fail`. Leaving the block gives back what is still held: a lease the run did not
    end goes back to the queue (:meth:`release`), then the lock is released. Left by an
    exception (the run's end could not be recorded), the lease is left to run out as a
    crashed watcher's would, and the attempt counts.
    """

    def __init__(self, ledger: Ledger, record: SceneRecord, lock: SchedulerClaim | None = None) -> None:
        self.ledger, self.record, self.lock = ledger, record, lock
        self._ended = False

    @classmethod
    def take(cls, ledger: Ledger, outputs: Outputs, name: str, identity: str, owner: LockHolder, lease: float,
             lock: SchedulerClaim | None = None) -> Claim | None:
        """Claim scene file ``name`` of content ``identity`` for ``owner``, leased for ``lease`` seconds,
        taking ``lock`` first where given. None where it is not to be taken now; nothing is held then."""
        with contextlib.ExitStack() as taken:
            if lock is not None:
                if not lock.take():
                    log.info("%s: taken by another watcher (scheduler lock %s)", name, lock.name)
                    return None
                taken.callback(lock.release)
            marker = outputs.done_marker(name, identity)
            if marker is not None:
                ledger.done_elsewhere(name, identity, marker.get("result"), marker.get("report"))
                log.info("%s: done by another watcher (%s)", name, marker.get("host"))
                return None
            record = ledger.claim(name, identity, owner, lease)
            if record is None:
                return None
            taken.pop_all()  # held until the claim is closed
        return cls(ledger, record, lock)

    def finish(self, *, result: str | None, report: dict[str, Any] | None) -> bool:
        """Record the scene as done; False where the lease was lost meanwhile (another watcher took over)."""
        self._ended = True
        return self.ledger.finish(self.record, result=result, report=report)

    def fail(self, error: str, policy: RetryPolicy) -> SceneRecord:
        """Record this attempt as failed: failed or quarantined, as ``policy`` says. The updated row."""
        self._ended = True
        return self.ledger.fail(self.record, error, policy=policy)

    def release(self) -> None:
        """Give the scene back unfinished: queued again, this attempt not counted; what its run
        wrote is resumed by the next taker. A ledger that cannot be written is left to the lease."""
        self._ended = True
        with contextlib.suppress(Exception):
            self.ledger.release(self.record)

    def close(self, *, lease: bool = True) -> None:
        """Give back what is still held: the lease unless the run ended it (or ``lease`` is False), then the lock."""
        try:
            if lease and not self._ended:
                self.release()
        finally:
            if self.lock is not None:
                self.lock.release()

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(lease=exc is None)


class _StopNow(BaseException):
    """A second stop signal: leave the running scenes resumable and stop."""


class Watcher:
    """Watches ``inbox`` and runs ``workflow`` on each new, settled scene exactly once.

    ``say`` receives the lines a person reads (one per scene taken, and notes).
    """

    def __init__(self, inbox: Inbox, workflow: SceneWorkflow, outputs: Outputs, ledger: Ledger,
                 options: WatchOptions, say: Callable[[str], Any]) -> None:
        if options.claims not in CLAIMS:
            raise InputError(f"claims: expected one of {', '.join(CLAIMS)}, got {options.claims!r}")
        for folder in outputs.folders():  # every output, not only the result: products would come back as scenes
            if folder.relation(inbox.location) in ("is", "is inside"):
                raise InputError(f"{folder}: the outputs would be inside the inbox {inbox}, whose files are "
                                 "all taken as scenes; choose another output folder")
        self.inbox, self.workflow, self.outputs, self.ledger, self.options = inbox, workflow, outputs, ledger, options
        self.address = resolve_address(options.scheduler or workflow.cluster.address)
        self.scheduler_claims = options.claims == "scheduler" or (options.claims == "auto" and bool(self.address))
        self.owner = LockHolder.me()
        self.stopping = threading.Event()
        self._say_lock = threading.Lock()
        self._say = say
        self._pool = ThreadPoolExecutor(max_workers=options.max_concurrent, thread_name_prefix="tilepipe-watch")
        self._running: dict[Future[Outcome], Claim] = {}
        self._running_lock = threading.Lock()
        self._outcomes: list[Outcome] = []
        self._refused: dict[str, str] = {}
        self._fatal: BaseException | None = None
        self._stack = contextlib.ExitStack()
        self._client: Any = None
        self._heartbeat: threading.Thread | None = None

    # ------------------------------------------------------------------ public

    def once(self) -> list[Outcome]:
        """One pass; waits for the scenes it took. Their outcomes.

        Raises the watcher's own failure (the workflow cannot run at all, or a scene's
        outcome could not be recorded) after the running scenes ended.
        """
        with self._signals(), self._stack:
            try:
                self.run_pass()
                self._wait_all()
            except _StopNow:
                self._abandon()
        self._raise_fatal()
        return list(self._outcomes)

    def serve(self) -> list[Outcome]:
        """Pass every ``interval`` seconds until stopped by SIGTERM or SIGINT; the outcomes of all passes."""
        with self._signals(), self._stack:
            try:
                while not self.stopping.is_set():
                    self.run_pass()
                    self.stopping.wait(self.options.interval)
                self._wait_all()
            except _StopNow:
                self._abandon()
        self._raise_fatal()
        return list(self._outcomes)

    def check_workflow(self) -> None:
        """What every scene needs, checked once before any is taken: the model file and the output folders.

        Raises :class:`~tilepipe.errors.TilepipeError` (one line, naming the file) where
        the workflow cannot run on any scene; no scene is consumed then.
        """
        if self.workflow.model.path is not None:
            model_sha256(self.workflow.model.path)
        for folder in self.outputs.folders():
            if not folder.is_local:
                continue
            try:
                os.makedirs(folder.path, exist_ok=True)
                # Created and removed at once: proof that the outputs can be written there.
                tempfile.NamedTemporaryFile(dir=folder.path, prefix=".tilepipe-watch-probe-").close()
            except OSError as exc:
                raise StoreError(f"{folder}: cannot write the outputs there: {exc.strerror or exc}") from None

    def run_pass(self) -> None:
        """List the inbox; claim and start every scene that is to be run now, as slots free up."""
        self._raise_fatal()
        self.check_workflow()
        entries = self.inbox.entries()
        now = time.time()
        first_seen = self.ledger.sighted([(e.name, e.location, e.quick) for e in entries])
        finals = {e.name: self.workflow.bind(e.location, name=e.stem) for e in entries}
        clash = clashes({name: final_paths(final) for name, final in finals.items()})
        waiting: dict[str, str | None] = {}
        try:
            for entry in entries:
                if self.stopping.is_set() or self._fatal is not None:
                    return
                why = self._consider(entry, finals[entry.name], clash.get(entry.name),
                                     first_seen.get(entry.location, now), now)
                waiting[entry.location] = why
        finally:
            self.ledger.note_waiting(waiting)

    def _consider(self, entry: Entry, final: Workflow, clash: str | None, first_seen: float,
                  now: float) -> str | None:
        """Take ``entry`` where it is to be run now; why it waits, or None."""
        if not self.inbox.settled(entry, self.options.settle, now, first_seen=first_seen):
            if entry.changed > now:
                why = (f"modified {entry.changed - now:.0f} s in the future (clock skew?); settles "
                       f"{self.options.settle:g} s after it was first seen")
            else:
                why = f"settling: changed {now - entry.changed:.1f} s ago (settle time {self.options.settle:g} s)"
            self._note(f"{entry.name}: waiting: {why}")
            return why
        known = self.ledger.known_identity(entry.location, entry.quick) if self.inbox.is_local else None
        identity = self.inbox.identity(entry, known)
        if identity is None:
            self._note(f"{entry.name}: waiting: it changed while it was read")
            return "settling: it changed while it was read"
        record = self.ledger.see(entry.name, identity, entry.location, entry.quick)
        if record.status is SceneState.DONE:
            published = self.outputs.published_identity(entry.name)
            if published is None or published == identity:
                return None
            # v1 -> v2 -> v1: the outputs hold another version of this file; they must follow the inbox.
            record = self.ledger.requeue(entry.name, identity, "the outputs held another version of the file") \
                or record
        if not _worth_claiming(record):
            return None
        blocked = clash if clash is not None else self.outputs.in_the_way(entry.name, final)
        if blocked is not None:
            self._refuse(entry, blocked)
            return f"refused: {blocked}"
        self._wait_for_slot()
        if self.stopping.is_set():
            return None
        self._take(entry, identity)
        return None

    def _refuse(self, entry: Entry, why: str) -> None:
        """A scene that cannot run as the outputs stand: one line (once per reason), not consumed."""
        # Named by the file: two files that clash may share a stem and their bytes (so a key).
        line = f"{entry.name}: refused, not taken: {why}"
        self._outcomes.append(Outcome(entry.name, "refused", line))
        if self._refused.get(entry.location) != why:
            self._refused[entry.location] = why
            self._say_line(line)

    # ------------------------------------------------------------------ claiming

    def _take(self, entry: Entry, identity: str) -> None:
        client = self._client_or_start()
        lock = SchedulerClaim(client, str(self.outputs.root), entry.name, identity) if self.scheduler_claims else None
        claim = Claim.take(self.ledger, self.outputs, entry.name, identity, self.owner, self.options.lease, lock)
        if claim is None:
            return
        try:
            future = self._pool.submit(self._process, entry, claim, client)
        except BaseException:
            claim.close()  # never ran: back to the queue
            raise
        with self._running_lock:
            self._running[future] = claim
        future.add_done_callback(self._finished)
        self._start_heartbeat()

    def _finished(self, future: Future[Outcome]) -> None:
        with self._running_lock:
            self._running.pop(future, None)
        if future.cancelled():
            return
        exc = future.exception()
        if exc is None:
            self._outcomes.append(future.result())
        elif self._fatal is None:
            # A scene whose outcome could not be recorded: the watcher itself has failed.
            self._fatal = exc
            self.stopping.set()

    def _raise_fatal(self) -> None:
        if self._fatal is not None:
            raise self._fatal

    def _wait_for_slot(self) -> None:
        while not self.stopping.is_set():
            with self._running_lock:
                running = list(self._running)
            if len(running) < self.options.max_concurrent:
                return
            wait(running, timeout=1.0, return_when=FIRST_COMPLETED)

    def _wait_all(self) -> None:
        while True:
            with self._running_lock:
                running = list(self._running)
            if not running:
                return
            wait(running, timeout=1.0)

    # ------------------------------------------------------------------ running one scene

    def _process(self, entry: Entry, claim: Claim, client: Any) -> Outcome:
        with claim:
            return self._run(entry, claim, client)

    def _run(self, entry: Entry, claim: Claim, client: Any) -> Outcome:
        from tilepipe.workflow_runner import run_workflow  # noqa: PLC0415 - loads the executor: only when a scene runs

        record = claim.record
        stage = self.outputs.stage_folder(entry.name, record.identity)
        attempt = f"attempt {record.attempts} of {self.options.max_attempts}"
        try:
            log.info("%s: %s, staged in %s", record.key, attempt, stage)
            local = self.inbox.stage(entry, os.path.join(stage, "input"))
            final = self.workflow.bind(local, name=entry.stem)
            staged = self.outputs.staged(final, stage)
            outcome = run_workflow(staged, client=client, echo=lambda line: log.info("%s: %s", record.key, line),
                                   published=final)
            report = {**outcome.report.to_dict(), "result": final.output.zarr, "geotiff": final.output.geotiff,
                      "quicklook": final.output.quicklook, "workflow_seconds": outcome.wall_seconds}
            self.outputs.publish(entry.name, record.identity, staged, final, report)
            if not claim.finish(result=final.output.zarr, report=report):
                log.warning("%s: its claim was taken over while it ran (lease %s s too short?)",
                            record.key, self.options.lease)
            remove_tree(stage)
            r = outcome.report
            line = (f"{record.key}: done in {outcome.wall_seconds:.1f} s -> {final.output.zarr} (tiles "
                    f"{r.tiles_total}: computed {r.computed}, empty {r.empty}, already done {r.already_done})")
            self._say_line(line)
            note = self._on_done(entry, final.output.zarr, record)
            if note:
                self._say_line(note)
            return Outcome(record.key, "done", line)
        except Exception as exc:
            if self.stopping.is_set() and self._client is None:
                return Outcome(record.key, "released", f"{record.key}: stopped; resumes on the next pass")
            message = _one_line(exc)
            log.error("%s: %s failed: %s", record.key, attempt, message, exc_info=not _expected(exc))
            try:
                after = claim.fail(message, self.options.retry)
            except Exception as lost:  # noqa: BLE001 - whatever it is, the failure went unrecorded
                raise WatchError(f"{record.key}: failed ({message}), and recording the failure failed too: "
                                 f"{_one_line(lost)}") from None
            if after.status is SceneState.QUARANTINED:
                line = f"{record.key}: quarantined after {after.attempts} attempts: {message}"
            else:
                wait_s = max(after.next_try - time.time(), 0.0)
                line = f"{record.key}: failed ({attempt}; retried after {wait_s:.0f} s): {message}"
            self._say_line(line)
            return Outcome(record.key, after.status.value, line)

    def _on_done(self, entry: Entry, result: str, record: SceneRecord) -> str | None:
        """Run the ``--on-done`` command; a line to show where it failed."""
        if not self.options.on_done:
            return None
        argv = [*shlex.split(self.options.on_done), entry.location, result]
        env = {**os.environ, "TILEPIPE_SCENE": entry.location, "TILEPIPE_RESULT": result,
               "TILEPIPE_SCENE_KEY": record.key}
        try:
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{record.key}: the --on-done command failed: {_one_line(exc)}"
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            return f"{record.key}: the --on-done command exited {done.returncode}: {tail[0]}"
        return None

    # ------------------------------------------------------------------ cluster, leases, signals

    def _client_or_start(self) -> Any:
        """The watcher's one client, connected (or its embedded cluster started) on first need."""
        if self._client is None:
            cluster = self.workflow.cluster
            gpu = cluster.gpu if self.options.gpu is None else self.options.gpu
            # Unwound last-in first-out: the client closes before the pool is waited for, so a
            # second stop signal does not wait for the running scenes.
            self._stack.callback(self._pool.shutdown, wait=True)
            self._client = self._stack.enter_context(connect(
                self.address, n_workers=cluster.n_workers, threads_per_worker=cluster.threads_per_worker, gpu=gpu))
        return self._client

    def _start_heartbeat(self) -> None:
        if self._heartbeat is not None:
            return

        def beat() -> None:
            period = max(self.options.lease / 4, 0.5)
            while True:
                time.sleep(period)
                with self._running_lock:
                    busy = bool(self._running)
                if busy:
                    with contextlib.suppress(Exception):
                        self.ledger.renew(self.owner.token, self.options.lease)

        self._heartbeat = threading.Thread(target=beat, name="tilepipe-watch-lease", daemon=True)
        self._heartbeat.start()

    def _abandon(self) -> None:
        """Give every running scene back to the queue (their runs resume on the next pass)."""
        with self._running_lock:
            claims = list(self._running.values())
        for claim in claims:
            claim.release()
            self._say_line(f"{claim.record.key}: stopped; resumes on the next pass")
        self._client = None  # its threads now fail as the client closes: not the scenes' failures

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, _frame: Any) -> None:
            if self.stopping.is_set():
                raise _StopNow
            self.stopping.set()
            with self._running_lock:
                n = len(self._running)
            self._say_line(f"{signal.Signals(signum).name}: stopping: no new scenes; "
                           f"{n} running scene{'s' if n != 1 else ''} finishing (signal again to stop at once)")

        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    # ------------------------------------------------------------------ lines

    def _say_line(self, line: str) -> None:
        with self._say_lock:
            self._say(line)

    def _note(self, line: str) -> None:
        log.info("%s", line)


def _worth_claiming(record: SceneRecord) -> bool:
    """A cheap look before a claim (the claim's transaction decides)."""
    if record.status in (SceneState.DONE, SceneState.QUARANTINED):
        return False
    return not (record.status is SceneState.FAILED and record.next_try > time.time())


def _expected(exc: BaseException) -> bool:
    from tilepipe.errors import TilepipeError  # noqa: PLC0415

    return isinstance(exc, (TilepipeError, OSError, IncompleteRunError))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 400 else text[:397] + "..."

