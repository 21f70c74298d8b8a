"""The watcher's ledger on its own: claims under real contention, leases, back-off, quarantine, retry, sightings.

A real SQLite file in ``tmp_path``; several claimers are separate processes started together
behind a barrier, so the database's own locking is what keeps them apart.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tilepipe.errors import InputError, StoreError
from tilepipe.store.lock import LockHolder
from tilepipe.watch.ledger import STATES, Ledger, RetryPolicy, SceneRecord, SceneState

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
    # Alive until every claimer is done: a claimer that had exited would be a dead holder, whose scenes
    # the slower ones rightly take over.
    barrier.wait()
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
        after = ledger.fail(record, "boom", policy=RetryPolicy(base=backoff, max_attempts=4))
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
    ledger.fail(record, "boom", policy=RetryPolicy(base=3600.0, max_attempts=3))
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
        ledger.fail(record, "boom", policy=RetryPolicy(base=0, max_attempts=1))  # quarantined at once
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


def _claim_now(ledger: Ledger, name: str, identity: str, holder: LockHolder | None = None,
               lease: float = 600.0) -> SceneRecord:
    record = ledger.claim(name, identity, holder or LockHolder.me(), lease)
    assert record is not None, f"{name} could not be claimed"
    return record


def test_two_threads_racing_on_one_file_win_each_scene_exactly_once(tmp_path: Path) -> None:
    path = str(tmp_path / "l.sqlite")
    scenes = _seed(Ledger(path), 60)
    barrier = threading.Barrier(2)
    wins: list[list[str]] = [[], []]

    def claimer(n: int) -> None:
        ledger, me = Ledger(path), LockHolder.me()  # a ledger, and a holder, of its own
        barrier.wait()
        wins[n] = [name for name, identity in scenes if ledger.claim(name, identity, me, 600.0) is not None]

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(wins[0] + wins[1]) == [name for name, _ in scenes]  # each once, none lost
    assert {(r.status, r.attempts) for r in Ledger(path).records()} == {(SceneState.RUNNING, 1)}


def test_states_are_stored_as_their_names_so_older_ledgers_read(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    ledger = Ledger(str(path))
    ((name, identity),) = _seed(ledger, 1)
    _claim_now(ledger, name, identity)
    with sqlite3.connect(path) as conn:
        ((stored,),) = conn.execute("SELECT status FROM scenes").fetchall()
        assert (type(stored), stored) == (str, "running")
        # A row as a ledger written before the enum holds it: plain text.
        conn.execute("INSERT INTO scenes (name, identity, location, status, attempts, discovered) "
                     "VALUES ('old.tif', 'abc', '/inbox/old.tif', 'quarantined', 3, 1.0)")
    old = ledger.get("old.tif", "abc")
    assert old is not None and old.status is SceneState.QUARANTINED and old.status == "quarantined"
    assert json.loads(json.dumps(old.to_dict()))["status"] == "quarantined"
    assert list(STATES) == ["queued", "running", "done", "failed", "quarantined"]
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE scenes SET status = 'lost' WHERE name = 'old.tif'")
    with pytest.raises(StoreError, match=r"in the watch ledger, got 'lost'$"):
        ledger.records()


def test_a_gone_holders_lease_is_taken_over_at_once(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "l.sqlite"))
    ((name, identity),) = _seed(ledger, 1)
    me = LockHolder.me()
    dead = replace(me, started=me.started - 100, token="dead")  # this pid, another start time: pid reuse
    first = _claim_now(ledger, name, identity, dead, lease=600.0)
    second = _claim_now(ledger, name, identity)  # its lease has ten minutes left, its holder is gone
    assert second.attempts == 2
    assert ledger.finish(first, result="x", report=None) is False
    # A live holder of another machine is never judged gone: its lease is kept.
    ((other, other_identity),) = [s for s in _seed(ledger, 2) if s[0] != name]
    _claim_now(ledger, other, other_identity, replace(me, host="elsewhere", token="far"), lease=600.0)
    assert ledger.claim(other, other_identity, me, 600.0) is None


def test_renewing_keeps_a_lease_past_its_first_end(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "l.sqlite"))
    ((name, identity),) = _seed(ledger, 1)
    holder = LockHolder.me()
    record = _claim_now(ledger, name, identity, holder, lease=0.2)
    assert ledger.renew(holder.token, 600.0) == 1
    assert ledger.renew("someone else", 600.0) == 0
    time.sleep(0.3)
    assert ledger.claim(name, identity, LockHolder.me(), 600.0) is None  # renewed: still held
    assert ledger.finish(record, result="r", report={"tiles": 1}) is True
    assert ledger.renew(holder.token, 600.0) == 0  # done: nothing left to renew
    done = ledger.get(name, identity)
    assert done is not None and (done.status, done.result, done.owner, done.lease_until) == (
        SceneState.DONE, "r", None, None)


def test_release_queues_the_scene_again_without_counting_the_attempt(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "l.sqlite"))
    ((name, identity),) = _seed(ledger, 1)
    first = _claim_now(ledger, name, identity)
    ledger.release(first)
    row = ledger.get(name, identity)
    assert row is not None and (row.status, row.attempts, row.owner_token) == (SceneState.QUEUED, 0, None)
    second = _claim_now(ledger, name, identity)
    assert second.attempts == 1
    ledger.release(first)  # a claim already given back changes nothing
    assert ledger.get(name, identity).status is SceneState.RUNNING  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("policy", "delays"),
    [
        (RetryPolicy(), [60.0, 120.0, 240.0, 480.0]),
        (RetryPolicy(base=1.0, factor=3.0), [1.0, 3.0, 9.0, 27.0]),
        (RetryPolicy(base=10.0, cap=25.0), [10.0, 20.0, 25.0, 25.0]),
        (RetryPolicy(base=5.0, factor=1.0), [5.0, 5.0, 5.0, 5.0]),
        (RetryPolicy(base=0.0), [0.0, 0.0, 0.0, 0.0]),
    ],
)
def test_retry_policy_delays(policy: RetryPolicy, delays: list[float]) -> None:
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == delays
    assert [policy.next_attempt(n, 1000.0) for n in (1, 2, 3, 4)] == [1000.0 + d for d in delays]


def test_retry_policy_quarantine_and_limits() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert [policy.quarantined(n) for n in (1, 2, 3, 4)] == [False, False, True, True]
    assert RetryPolicy().delay(5000) == math.inf  # no overflow, however many attempts
    assert RetryPolicy(cap=3600.0).delay(5000) == 3600.0
    assert RetryPolicy(base=1.0, factor=10).delay(400) == math.inf  # an int factor: no overflow either
    for bad in ({"base": -1.0}, {"factor": 0.5}, {"cap": -1.0}, {"max_attempts": 0}, {"base": math.nan}):
        with pytest.raises(InputError, match=r"^retry policy: \w+: expected at least "):
            RetryPolicy(**bad)  # type: ignore[arg-type]


def test_the_ledger_stores_what_the_policy_computes(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "l.sqlite"))
    ((name, identity),) = _seed(ledger, 1)
    policy = RetryPolicy(base=100.0, factor=10.0, cap=500.0, max_attempts=3)
    got = []
    for _ in range(3):
        record = _claim_now(ledger, name, identity)
        after = ledger.fail(record, "boom", policy=policy)
        assert after.ended is not None
        waits = after.next_try - after.ended if after.status is SceneState.FAILED else after.next_try
        got.append((after.status, after.attempts, round(waits, 6)))
        with sqlite3.connect(ledger.path) as conn:  # no waiting here: the retry time is now
            conn.execute("UPDATE scenes SET next_try = 0 WHERE status = 'failed'")
    # 100 s, then 1000 s capped to 500 s; quarantined after the third (no retry time).
    assert got == [(SceneState.FAILED, 1, 100.0), (SceneState.FAILED, 2, 500.0), (SceneState.QUARANTINED, 3, 0.0)]


def test_retry_matches_a_name_stem_key_location_or_identity_prefix(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "l.sqlite"))
    quarantine = RetryPolicy(base=0, max_attempts=1)
    etag = "etag:" + "0123456789abcdef" * 2
    rows = [("a.tif", "a" * 64), ("b.tif", etag), ("c.tif", "c" * 64)]
    for name, identity in rows:
        ledger.see(name, identity, f"/inbox/{name}", QUICK)
        ledger.fail(_claim_now(ledger, name, identity), "boom", policy=quarantine)
    # c.tif again with other bytes, done: a retry by its name puts back only the version that failed.
    ledger.see("c.tif", "d" * 64, "/inbox/c.tif", QUICK)
    ledger.finish(_claim_now(ledger, "c.tif", "d" * 64), result="c.zarr", report=None)

    def matched(scene: str) -> list[tuple[str, str]]:
        return [(r.name, r.identity) for r in ledger.retry([scene], dry_run=True)]

    assert matched("a.tif") == matched("a") == matched("a@" + "a" * 12) == matched("/inbox/a.tif") == [rows[0]]
    assert matched("0123456789ab") == matched("0123456789abcdef01") == matched("b@0123456789ab") == [rows[1]]
    assert matched("c.tif") == matched("c") == [rows[2]]
    for nothing in ("01234", "etag:0123456789ab", "a@" + "b" * 12, "a.tiff", "/inbox/a", "aaaaa"):
        with pytest.raises(StoreError, match="knows no scene"):
            ledger.retry([nothing], dry_run=True)
    with pytest.raises(StoreError, match=r"has not failed \(c@dddddddddddd is done\)"):
        ledger.retry(["dddddd"])
    assert {r.status for r in ledger.records()} == {SceneState.QUARANTINED, SceneState.DONE}  # dry runs
    assert [r.name for r in ledger.retry(["b", "c.tif"])] == ["b.tif", "c.tif"]
    assert [(r.name, r.status, r.attempts) for r in ledger.records()] == [
        ("a.tif", SceneState.QUARANTINED, 1), ("b.tif", SceneState.QUEUED, 0), ("c.tif", SceneState.QUEUED, 0),
        ("c.tif", SceneState.DONE, 1)]
