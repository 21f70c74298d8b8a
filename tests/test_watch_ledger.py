"""The watcher's ledger on its own: claims under real contention, back-off, quarantine, retry, sightings.

A real SQLite file in ``tmp_path``; several claimers are separate processes started together
behind a barrier, so the database's own locking is what keeps them apart.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tilepipe.errors import StoreError
from tilepipe.store.lock import LockHolder
from tilepipe.watch.ledger import Ledger

QUICK = {"size": 10, "mtime_ns": 1, "ctime_ns": 1, "inode": 7}


def _seed(ledger: Ledger, n: int) -> list[tuple[str, str]]:
    scenes = [(f"s{i:03d}.tif", hashlib.sha256(bytes([i])).hexdigest()) for i in range(n)]
    for name, identity in scenes:
        ledger.see(name, identity, f"/inbox/{name}", QUICK)
    return scenes


def _claimer(path: str, scenes: list[tuple[str, str]], barrier: Any, wins: Any) -> None:
    ledger = Ledger(path)
    me = LockHolder.me()
    barrier.wait()
    got = [f"{name}@{identity}" for name, identity in scenes if ledger.claim(name, identity, me, 600.0) is not None]
    wins.put(got)


def test_many_claimers_racing_win_each_scene_exactly_once(tmp_path: Path) -> None:
    """Processes started together claim the same scenes in the same order, several rounds: one winner each."""
    ctx = mp.get_context("spawn")
    claimers, rounds, per_round = 6, 3, 40
    for n in range(rounds):
        path = str(tmp_path / f"ledger{n}.sqlite")
        scenes = _seed(Ledger(path), per_round)
        barrier, wins = ctx.Barrier(claimers), ctx.Queue()
        procs = [ctx.Process(target=_claimer, args=(path, scenes, barrier, wins)) for _ in range(claimers)]
        for p in procs:
            p.start()
        results = [wins.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        counted = Counter(key for got in results for key in got)
        assert sorted(counted) == sorted(f"{a}@{b}" for a, b in scenes), "a scene was claimed by no one"
        assert set(counted.values()) == {1}, {k: v for k, v in counted.items() if v > 1}
        assert sum(1 for got in results if got) >= 1
        rows = Ledger(path).records()
        assert {(r.status, r.attempts) for r in rows} == {("running", 1)}


def test_failures_back_off_one_two_four_times_then_quarantine(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "l.sqlite"))
    ((name, identity),) = _seed(ledger, 1)
    me, backoff = LockHolder.me(), 0.05
    delays, statuses = [], []
    for _ in range(4):
        record = None
        deadline = time.monotonic() + 10
        while record is None:
            record = ledger.claim(name, identity, me, 600.0)
            if record is None:
                assert time.monotonic() < deadline, "the failed scene never became claimable again"
                time.sleep(0.01)
        after = ledger.fail(record, "boom", max_attempts=4, backoff=backoff)
        statuses.append(after.status)
        assert after.ended is not None
        delays.append(after.next_try - after.ended if after.status == "failed" else None)
    assert statuses == ["failed", "failed", "failed", "quarantined"]
    assert delays[:3] == pytest.approx([backoff * 1, backoff * 2, backoff * 4], abs=1e-6)
    assert ledger.claim(name, identity, me, 600.0) is None  # quarantined: never taken again by itself
    (row,) = ledger.records()
    assert (row.status, row.attempts, row.error) == ("quarantined", 4, "boom")


def test_a_failed_scene_waits_for_its_retry_time(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "l.sqlite"))
    ((name, identity),) = _seed(ledger, 1)
    me = LockHolder.me()
    record = ledger.claim(name, identity, me, 600.0)
    assert record is not None
    ledger.fail(record, "boom", max_attempts=3, backoff=3600.0)
    assert ledger.claim(name, identity, me, 600.0) is None


def test_an_expired_lease_is_taken_over_and_the_old_holder_cannot_finish(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "l.sqlite"))
    ((name, identity),) = _seed(ledger, 1)
    first = ledger.claim(name, identity, LockHolder.me(), 0.05)
    assert first is not None
    assert ledger.claim(name, identity, LockHolder.me(), 600.0) is None  # the lease is live
    time.sleep(0.1)
    second = ledger.claim(name, identity, LockHolder.me(), 600.0)
    assert second is not None and second.attempts == 2
    assert ledger.finish(first, result="x", report=None) is False  # the old claim is gone
    assert ledger.finish(second, result="x", report=None) is True
    assert ledger.get(name, identity).status == "done"  # type: ignore[union-attr]


def test_retry_names_several_scenes_or_all(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "l.sqlite"))
    scenes = _seed(ledger, 4)
    me = LockHolder.me()
    for name, identity in scenes[:3]:
        record = ledger.claim(name, identity, me, 600.0)
        assert record is not None
        ledger.fail(record, "boom", max_attempts=1, backoff=0)  # quarantined at once
    with pytest.raises(StoreError, match="has not failed"):
        ledger.retry(["s000", "s003.tif"])
    assert {r.status for r in ledger.records()[:3]} == {"quarantined"}  # a refused retry changes nothing
    with pytest.raises(StoreError, match="knows no scene 'nope'"):
        ledger.retry(["nope"])
    dry = ledger.retry(["s000", f"s001@{scenes[1][1][:12]}"], dry_run=True)
    assert [r.name for r in dry] == ["s000.tif", "s001.tif"]
    assert {r.status for r in ledger.records()[:3]} == {"quarantined"}
    put = ledger.retry(["s000.tif", scenes[1][1][:10]])
    assert [r.name for r in put] == ["s000.tif", "s001.tif"]
    assert [(r.status, r.attempts) for r in ledger.records()] == [("queued", 0), ("queued", 0),
                                                                  ("quarantined", 1), ("queued", 0)]
    assert [r.name for r in ledger.retry([], everything=True)] == ["s002.tif"]
    with pytest.raises(StoreError, match="no scene has failed"):
        ledger.retry([], everything=True)


def test_sightings_keep_when_a_file_was_first_seen_as_it_is(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "l.sqlite"))
    files = [("a.tif", "/in/a.tif", QUICK), ("b.tif", "/in/b.tif", QUICK)]
    first = ledger.sighted(files)
    time.sleep(0.05)
    again = ledger.sighted(files)
    assert again == first  # unchanged files: first seen then, not now
    touched = {**QUICK, "ctime_ns": 2}
    third = ledger.sighted([("a.tif", "/in/a.tif", QUICK), ("b.tif", "/in/b.tif", touched)])
    assert third["/in/a.tif"] == first["/in/a.tif"] and third["/in/b.tif"] > first["/in/b.tif"]
    ledger.note_waiting({"/in/a.tif": "settling", "/in/b.tif": None})
    assert [(w["name"], w["why"]) for w in ledger.waiting()] == [("a.tif", "settling")]
    ledger.sighted([("b.tif", "/in/b.tif", touched)])  # a.tif left the inbox: forgotten
    assert ledger.waiting() == []
