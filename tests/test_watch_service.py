"""The watcher's claim on its own: what it takes (scheduler lock, done marker, ledger lease) and gives back.

A real SQLite ledger in ``tmp_path``; the scheduler lock and the outputs' done marker are stand-ins
that count what was done to them (the real ones, on a cluster, are in test_watch.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tilepipe.store.lock import LockHolder
from tilepipe.watch.ledger import Ledger, RetryPolicy, SceneState
from tilepipe.watch.service import Claim, WatchOptions

NAME, IDENTITY = "s.tif", "5" * 64
QUICK = {"size": 10, "mtime_ns": 1, "ctime_ns": 1, "inode": 7}


class FakeLock:
    """A scheduler lock: free or not; counts its releases."""

    name = "tilepipe-watch:test"

    def __init__(self, free: bool = True) -> None:
        self.free, self.held, self.releases = free, False, 0

    def take(self) -> bool:
        self.held = self.free
        return self.held

    def release(self) -> None:
        self.releases += 1
        self.held = False


class FakeOutputs:
    """Outputs whose done marker is ``marker`` (None: no marker), or whose look at it raises ``error``."""

    def __init__(self, marker: dict[str, Any] | None = None, error: Exception | None = None) -> None:
        self.marker, self.error = marker, error

    def done_marker(self, name: str, identity: str) -> dict[str, Any] | None:
        if self.error is not None:
            raise self.error
        return self.marker


def _ledger(tmp_path: Path) -> Ledger:
    ledger = Ledger(str(tmp_path / "l.sqlite"))
    ledger.see(NAME, IDENTITY, f"/inbox/{NAME}", QUICK)
    return ledger


def _take(ledger: Ledger, lock: FakeLock | None = None, outputs: FakeOutputs | None = None) -> Claim | None:
    return Claim.take(ledger, outputs or FakeOutputs(), NAME, IDENTITY, LockHolder.me(), 600.0,
                      lock)  # type: ignore[arg-type]


def _row(ledger: Ledger) -> tuple[SceneState, int]:
    row = ledger.get(NAME, IDENTITY)
    assert row is not None
    return row.status, row.attempts


def test_a_lock_held_elsewhere_takes_nothing(tmp_path: Path) -> None:
    ledger, lock = _ledger(tmp_path), FakeLock(free=False)
    assert _take(ledger, lock) is None
    assert lock.releases == 0  # never held
    assert _row(ledger) == (SceneState.QUEUED, 0)


def test_a_done_marker_records_the_scene_done_and_gives_the_lock_back(tmp_path: Path) -> None:
    ledger, lock = _ledger(tmp_path), FakeLock()
    marker = {"result": "/out/s.zarr", "report": {"tiles": 4}, "host": "other"}
    assert _take(ledger, lock, FakeOutputs(marker)) is None
    assert lock.releases == 1 and not lock.held
    row = ledger.get(NAME, IDENTITY)
    assert row is not None and (row.status, row.attempts, row.result) == (SceneState.DONE, 0, "/out/s.zarr")


def test_a_live_lease_elsewhere_takes_nothing_and_gives_the_lock_back(tmp_path: Path) -> None:
    ledger, lock = _ledger(tmp_path), FakeLock()
    assert ledger.claim(NAME, IDENTITY, LockHolder.me(), 600.0) is not None  # another watcher's
    assert _take(ledger, lock) is None
    assert lock.releases == 1
    assert _row(ledger) == (SceneState.RUNNING, 1)


def test_a_failure_while_taking_gives_the_lock_back(tmp_path: Path) -> None:
    ledger, lock = _ledger(tmp_path), FakeLock()
    with pytest.raises(OSError, match="unreachable"):
        _take(ledger, lock, FakeOutputs(error=OSError("unreachable")))
    assert lock.releases == 1
    assert _row(ledger) == (SceneState.QUEUED, 0)


def test_a_finished_claim_records_done_and_gives_the_lock_back(tmp_path: Path) -> None:
    ledger, lock = _ledger(tmp_path), FakeLock()
    claim = _take(ledger, lock)
    assert claim is not None and claim.record.status is SceneState.RUNNING
    assert lock.held and lock.releases == 0  # held while the scene runs
    with claim:
        assert claim.finish(result="/out/s.zarr", report={"tiles": 4}) is True
    assert lock.releases == 1
    row = ledger.get(NAME, IDENTITY)
    assert row is not None and (row.status, row.attempts, row.report) == (SceneState.DONE, 1, '{"tiles": 4}')


def test_a_failed_claim_records_what_the_policy_says(tmp_path: Path) -> None:
    ledger, lock = _ledger(tmp_path), FakeLock()
    claim = _take(ledger, lock)
    assert claim is not None
    with claim:
        after = claim.fail("boom", RetryPolicy(base=30.0, max_attempts=2))
    assert (after.status, after.attempts, after.error) == (SceneState.FAILED, 1, "boom")
    assert after.ended is not None and after.next_try - after.ended == pytest.approx(30.0)
    assert lock.releases == 1
    claim = _take(ledger)
    assert claim is None  # waiting for its retry time


def test_a_claim_left_unended_goes_back_to_the_queue_uncounted(tmp_path: Path) -> None:
    ledger, lock = _ledger(tmp_path), FakeLock()
    claim = _take(ledger, lock)
    assert claim is not None
    with claim:
        pass  # stopped before the run ended
    assert _row(ledger) == (SceneState.QUEUED, 0)
    assert lock.releases == 1
    again = _take(ledger)
    assert again is not None and again.record.attempts == 1


def test_a_claim_left_by_an_exception_leaves_its_lease_to_run_out(tmp_path: Path) -> None:
    ledger, lock = _ledger(tmp_path), FakeLock()
    claim = _take(ledger, lock)
    assert claim is not None
    with pytest.raises(RuntimeError, match="ledger unwritable"), claim:
        raise RuntimeError("ledger unwritable")
    assert _row(ledger) == (SceneState.RUNNING, 1)  # as a crashed watcher's: the attempt counts
    assert lock.releases == 1


def test_a_claim_given_back_before_it_ran(tmp_path: Path) -> None:
    ledger, lock = _ledger(tmp_path), FakeLock()
    claim = _take(ledger, lock)
    assert claim is not None
    claim.close()  # the watcher could not start its run
    assert _row(ledger) == (SceneState.QUEUED, 0)
    assert lock.releases == 1


def test_ledger_claims_alone_need_no_lock(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    claim = _take(ledger)
    assert claim is not None and claim.lock is None
    assert _take(ledger) is None  # the first claim's lease is live
    with claim:
        claim.release()  # a second stop signal: given back, and not again on leaving
    assert _row(ledger) == (SceneState.QUEUED, 0)


def test_watch_options_retry_policy() -> None:
    assert WatchOptions().retry == RetryPolicy(base=60.0, factor=2.0, max_attempts=3)
    assert WatchOptions(backoff=5.0, max_attempts=7).retry == RetryPolicy(base=5.0, max_attempts=7)
