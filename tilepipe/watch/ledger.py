"""The ledger: what a watcher knows of every scene, in SQLite (WAL mode), keyed by the scene's identity.

Why SQLite, and where
---------------------
One file next to the outputs (``<outputs>/.tilepipe-watch.sqlite``), no server, and
real transactions: a claim is ``BEGIN IMMEDIATE`` (the database's write lock, taken
before the row is read), so of two watchers that look at the same queued scene,
exactly one turns it into ``running``. WAL mode lets ``--status`` read while a
watcher writes. SQLite's locks need a local file system (its docs warn against
network file systems, and WAL needs shared memory): watchers on several machines
keep one ledger each on a local disk and claim through their shared Dask scheduler
(:mod:`tilepipe.watch.claims`).

Rows and states
---------------
A row is one scene: a file name and an identity (the content's sha256, or an
object store's content tag), so a file rewritten under the same name is a new row.
States (:class:`SceneState`, stored as their names): ``queued`` (seen, not yet taken),
``running`` (claimed; ``owner`` holds a lease until ``lease_until``), ``done``, ``failed``
(to be retried after ``next_try``), ``quarantined`` (failed ``max_attempts`` times; only
``--retry`` brings it back). When a failed scene is tried again, and when it is
quarantined, is a :class:`RetryPolicy`'s to say; the ledger records what it says.

A lease ends at ``lease_until`` (the holder renews it while it works) or at once where
the holder is a process of this machine that is gone
(:meth:`tilepipe.store.lock.LockHolder.is_gone`): a killed watcher's scene is taken
again, and resumed, on the next pass.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from tilepipe.errors import InputError, StoreError
from tilepipe.sources.identity import SHORT_IDENTITY, short_identity
from tilepipe.store.info import utc_timestamp
from tilepipe.store.lock import LockHolder

__all__ = ["DEFAULT_BACKOFF", "DEFAULT_MAX_ATTEMPTS", "STATES", "Ledger", "RetryPolicy", "SceneRecord", "SceneState"]


class SceneState(StrEnum):
    """What the ledger knows of a scene. Stored in SQL as its value, so ledgers written
    before the enum read the same."""

    QUEUED = "queued"
    """Seen and settled, not taken yet (or given back unfinished)."""
    RUNNING = "running"
    """Claimed: its owner holds a lease until ``lease_until``."""
    DONE = "done"
    FAILED = "failed"
    """Its last attempt failed; taken again from ``next_try`` on."""
    QUARANTINED = "quarantined"
    """Failed too often: only ``--retry`` brings it back."""


#: Every state a scene can be in, in the order a scene goes through them.
STATES: tuple[SceneState, ...] = tuple(SceneState)

#: The states ``--retry`` puts back in the queue.
_RETRIABLE = (SceneState.FAILED, SceneState.QUARANTINED)


#: The first retry's delay, seconds, and the attempts before quarantine, where none are given
#: (:class:`RetryPolicy`, :class:`~tilepipe.watch.service.WatchOptions`, ``tilepipe watch``).
DEFAULT_BACKOFF, DEFAULT_MAX_ATTEMPTS = 60.0, 3


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When a failed scene is tried again, and when it is given up on (quarantined).

    After attempt ``n`` failed, the next is due ``min(base * factor**(n - 1), cap)`` seconds
    later; after ``max_attempts`` failed attempts the scene is quarantined instead.
    """

    base: float = DEFAULT_BACKOFF
    """The delay after the first failure, in seconds."""
    factor: float = 2.0
    """What each later delay is multiplied by."""
    cap: float = math.inf
    """The longest delay, in seconds."""
    max_attempts: int = DEFAULT_MAX_ATTEMPTS

    def __post_init__(self) -> None:
        for name, value, least in (("base", self.base, 0.0), ("factor", self.factor, 1.0), ("cap", self.cap, 0.0),
                                   ("max_attempts", self.max_attempts, 1)):
            if not value >= least:  # NaN fails too
                raise InputError(f"retry policy: {name}: expected at least {least}, got {value!r}")

    def delay(self, attempts: int) -> float:
        """Seconds from the end of failed attempt number ``attempts`` (1 for the first) to the next."""
        if self.base == 0:
            return 0.0
        try:
            delay = self.base * self.factor ** max(attempts - 1, 0)
        except OverflowError:
            delay = math.inf
        return min(delay, self.cap)

    def next_attempt(self, attempts: int, now: float) -> float:
        """When (seconds since the epoch) the next attempt is due, ``attempts`` having failed by ``now``."""
        return now + self.delay(attempts)

    def quarantined(self, attempts: int) -> bool:
        """Whether a scene is given up on once ``attempts`` attempts have failed."""
        return attempts >= self.max_attempts


_SCHEMA_VERSION = "2"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS scenes (
    name TEXT NOT NULL,
    identity TEXT NOT NULL,
    location TEXT NOT NULL,
    size INTEGER,
    mtime_ns INTEGER,
    ctime_ns INTEGER,
    inode INTEGER,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0,
    owner TEXT,
    owner_token TEXT,
    lease_until REAL,
    discovered REAL NOT NULL,
    started REAL,
    ended REAL,
    wall REAL,
    result TEXT,
    error TEXT,
    report TEXT,
    PRIMARY KEY (name, identity)
);
CREATE INDEX IF NOT EXISTS scenes_by_location ON scenes (location, size, mtime_ns);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sightings (
    location TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    size INTEGER,
    mtime_ns INTEGER,
    ctime_ns INTEGER,
    inode INTEGER,
    first_seen REAL NOT NULL,
    waiting TEXT
);
"""


@dataclass(frozen=True, slots=True)
class SceneRecord:
    """One row of the ledger. Times are seconds since the epoch (UTC), ``wall`` in seconds."""

    name: str
    identity: str
    location: str
    status: SceneState
    attempts: int
    next_try: float
    discovered: float
    owner: str | None = None
    owner_token: str | None = None
    lease_until: float | None = None
    started: float | None = None
    ended: float | None = None
    wall: float | None = None
    result: str | None = None
    error: str | None = None
    report: str | None = None

    @property
    def stem(self) -> str:
        """The file name without its last suffix: what ``{scene}`` stands for."""
        return os.path.splitext(self.name)[0]

    @property
    def key(self) -> str:
        """A short, unique, printable name: ``<stem>@<short identity>``
        (:func:`~tilepipe.sources.identity.short_identity`)."""
        return f"{self.stem}@{short_identity(self.identity)}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with ISO 8601 times and the run report parsed."""
        d = asdict(self)
        d.pop("owner_token")
        d["key"] = self.key
        d["status"] = self.status.value
        for name in ("started", "ended", "discovered", "next_try", "lease_until"):
            d[name] = utc_timestamp(d[name]) if d[name] else None
        d["report"] = json.loads(self.report) if self.report else None
        d["owner"] = json.loads(self.owner) if self.owner else None
        return d


class Ledger:
    """The SQLite ledger at ``path`` (created on first use).

    Every method opens its own short connection, so a ledger may be used from
    several threads and processes at once; writes wait up to ``busy_timeout``
    seconds for another writer.
    """

    def __init__(self, path: str, *, busy_timeout: float = 60.0) -> None:
        self.path = os.path.abspath(path)
        self.busy_timeout = busy_timeout
        self._ready = False

    # ------------------------------------------------------------------ connection

    @contextlib.contextmanager
    def _connect(self, *, write: bool) -> Iterator[sqlite3.Connection]:
        try:
            if not self._ready:
                self._create()
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
            if not write:
                conn = _readable(conn, self.path)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the watch ledger: {exc}") from None
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: the watch ledger failed: {exc}") from None
        finally:
            conn.close()

    def _create(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        try:
            # Only a read where the ledger is already of this schema: --status must work on a full disk.
            with contextlib.suppress(sqlite3.Error):
                found = _readable(conn, self.path).execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
                if found is not None and found[0] == _SCHEMA_VERSION:
                    self._ready = True
                    return
            # WAL: readers (--status) never wait for the writer; set once, it stays with the file.
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?)", (_SCHEMA_VERSION,))
        finally:
            conn.close()
        self._ready = True

    # ------------------------------------------------------------------ reading

    def records(self) -> list[SceneRecord]:
        """Every scene the ledger knows, oldest first."""
        if not os.path.exists(self.path):
            return []
        with self._connect(write=False) as conn:
            rows = conn.execute("SELECT * FROM scenes ORDER BY discovered, name, identity").fetchall()
        return [_record(row) for row in rows]

    def get(self, name: str, identity: str) -> SceneRecord | None:
        """The row of this scene, or None."""
        with self._connect(write=False) as conn:
            row = conn.execute("SELECT * FROM scenes WHERE name = ? AND identity = ?", (name, identity)).fetchone()
        return None if row is None else _record(row)

    def known_identity(self, location: str, quick: dict[str, Any]) -> str | None:
        """The identity recorded for the file at ``location`` as ``quick`` describes it (size, times, inode).

        A cache: a file whose ``stat`` is exactly as when it was hashed is not read again.
        """
        with self._connect(write=False) as conn:
            row = conn.execute(
                "SELECT identity FROM scenes WHERE location = ? AND size = ? AND mtime_ns = ? AND ctime_ns = ? "
                "AND inode = ? ORDER BY discovered DESC LIMIT 1",
                (location, quick.get("size"), quick.get("mtime_ns"), quick.get("ctime_ns"), quick.get("inode")),
            ).fetchone()
        return None if row is None else str(row["identity"])

    # ------------------------------------------------------------------ writing

    def see(self, name: str, identity: str, location: str, quick: dict[str, Any]) -> SceneRecord:
        """Record a settled scene as ``queued`` (if new); its row either way."""
        now = time.time()
        with self._connect(write=True) as conn:
            conn.execute(
                "INSERT OR IGNORE INTO scenes (name, identity, location, size, mtime_ns, ctime_ns, inode, status, "
                "discovered) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, identity, location, quick.get("size"), quick.get("mtime_ns"), quick.get("ctime_ns"),
                 quick.get("inode"), SceneState.QUEUED.value, now),
            )
            row = conn.execute("SELECT * FROM scenes WHERE name = ? AND identity = ?", (name, identity)).fetchone()
        return _record(row)

    def claim(self, name: str, identity: str, owner: LockHolder, lease: float) -> SceneRecord | None:
        """Take the scene for ``owner`` for ``lease`` seconds: the claimed row, or None where it is not
        to be taken now (done, quarantined, waiting for its retry time, or held by a live lease).

        One transaction (``BEGIN IMMEDIATE``): of watchers claiming at once, one wins.
        """
        now = time.time()
        with self._connect(write=True) as conn:
            row = conn.execute("SELECT * FROM scenes WHERE name = ? AND identity = ?", (name, identity)).fetchone()
            if row is None or not _takeable(_record(row), now):
                return None
            conn.execute(
                "UPDATE scenes SET status = ?, owner = ?, owner_token = ?, lease_until = ?, "
                "attempts = attempts + 1, started = ?, ended = NULL, wall = NULL WHERE name = ? AND identity = ?",
                (SceneState.RUNNING.value, json.dumps(asdict(owner)), owner.token, now + lease, now, name, identity),
            )
            row = conn.execute("SELECT * FROM scenes WHERE name = ? AND identity = ?", (name, identity)).fetchone()
        return _record(row)

    def renew(self, token: str, lease: float) -> int:
        """Extend every lease ``token`` holds by ``lease`` seconds from now; how many rows."""
        with self._connect(write=True) as conn:
            cur = conn.execute("UPDATE scenes SET lease_until = ? WHERE owner_token = ? AND status = ?",
                               (time.time() + lease, token, SceneState.RUNNING.value))
            return cur.rowcount

    def finish(self, record: SceneRecord, *, result: str | None, report: dict[str, Any] | None,
               error: str | None = None) -> bool:
        """Record a claimed scene as ``done``; False where the claim was lost meanwhile (another took over)."""
        now = time.time()
        return self._update_claimed(
            record, "status = ?, owner = NULL, owner_token = NULL, lease_until = NULL, ended = ?, wall = ?, "
            "result = ?, report = ?, error = ?",
            (SceneState.DONE.value, now, now - (record.started or now), result,
             json.dumps(report) if report else None, error))

    def fail(self, record: SceneRecord, error: str, *, policy: RetryPolicy) -> SceneRecord:
        """Record a failed attempt as ``policy`` says: ``failed`` until its next attempt is due, or
        ``quarantined``. The updated row."""
        now = time.time()
        quarantine = policy.quarantined(record.attempts)
        self._update_claimed(
            record, "status = ?, owner = NULL, owner_token = NULL, lease_until = NULL, ended = ?, wall = ?, "
            "error = ?, next_try = ?",
            ((SceneState.QUARANTINED if quarantine else SceneState.FAILED).value, now, now - (record.started or now),
             error, 0.0 if quarantine else policy.next_attempt(record.attempts, now)))
        return self.get(record.name, record.identity) or record

    def release(self, record: SceneRecord) -> None:
        """Give a claimed scene back unfinished (the watcher was asked to stop): queued again, the
        interrupted attempt not counted; whatever its run wrote is resumed by the next taker."""
        self._update_claimed(record, "status = ?, owner = NULL, owner_token = NULL, lease_until = NULL, "
                             "attempts = MAX(attempts - 1, 0)", (SceneState.QUEUED.value,))

    def done_elsewhere(self, name: str, identity: str, result: str | None, report: dict[str, Any] | None) -> None:
        """Record a scene that another watcher finished (its done marker was found) as ``done``."""
        with self._connect(write=True) as conn:
            conn.execute(
                "UPDATE scenes SET status = ?, owner = NULL, owner_token = NULL, lease_until = NULL, "
                "result = ?, report = ?, error = NULL, ended = COALESCE(ended, ?) WHERE name = ? AND identity = ?",
                (SceneState.DONE.value, result, json.dumps(report) if report else None, time.time(), name, identity),
            )

    def requeue(self, name: str, identity: str, why: str) -> SceneRecord | None:
        """Put a ``done`` scene back in the queue (its outputs now hold another version of the file)."""
        with self._connect(write=True) as conn:
            conn.execute("UPDATE scenes SET status = ?, attempts = 0, next_try = 0, result = NULL, error = ? "
                         "WHERE name = ? AND identity = ? AND status = ?",
                         (SceneState.QUEUED.value, why, name, identity, SceneState.DONE.value))
            row = conn.execute("SELECT * FROM scenes WHERE name = ? AND identity = ?", (name, identity)).fetchone()
        return None if row is None else _record(row)

    def retry(self, scenes: Sequence[str], *, everything: bool = False, dry_run: bool = False) -> list[SceneRecord]:
        """Put the failed or quarantined scenes that ``scenes`` name (or, with ``everything``, all of
        them) back in the queue; the rows put back.

        Each of ``scenes`` is a file name, a stem, a key (``stem@identity``) or the start of
        an identity. Raises :class:`StoreError` where one names no scene, or no failed or
        quarantined one (nothing is changed then).
        """
        records = self.records()
        failed: dict[tuple[str, str], SceneRecord] = {}
        if everything:
            failed = {(r.name, r.identity): r for r in records if r.status in _RETRIABLE}
            if not failed:
                raise StoreError(f"{self.path}: no scene has failed (see --status)")
        for scene in scenes:
            matches = [r for r in records if _names(r, scene)]
            if not matches:
                raise StoreError(f"{self.path}: the ledger knows no scene {scene!r} (see --status)")
            hits = [r for r in matches if r.status in _RETRIABLE]
            if not hits:
                states = ", ".join(sorted({f"{r.key} is {r.status}" for r in matches}))
                raise StoreError(f"{self.path}: scene {scene!r} has not failed ({states}); only failed or "
                                 "quarantined scenes are retried")
            failed.update({(r.name, r.identity): r for r in hits})
        if not dry_run:
            with self._connect(write=True) as conn:
                for r in failed.values():
                    conn.execute("UPDATE scenes SET status = ?, attempts = 0, next_try = 0 "
                                 "WHERE name = ? AND identity = ? AND status IN (?, ?)",
                                 (SceneState.QUEUED.value, r.name, r.identity, *(s.value for s in _RETRIABLE)))
        return sorted(failed.values(), key=lambda r: (r.discovered, r.name, r.identity))

    # ------------------------------------------------------------------ files not taken yet

    def sighted(self, files: Sequence[tuple[str, str, dict[str, Any]]]) -> dict[str, float]:
        """Record the inbox's files as listed now (``(name, location, quick)`` each): when each was first
        seen as it is now (seconds since the epoch), by location. A file whose ``stat`` changed counts
        as first seen now; files no longer listed are forgotten."""
        now = time.time()
        seen: dict[str, float] = {}
        with self._connect(write=True) as conn:
            known = {row["location"]: row for row in conn.execute("SELECT * FROM sightings").fetchall()}
            for name, location, quick in files:
                stat = tuple(quick.get(k) for k in _STAT)
                row = known.pop(location, None)
                if row is not None and tuple(row[k] for k in _STAT) == stat:
                    seen[location] = float(row["first_seen"])
                    continue
                conn.execute("INSERT OR REPLACE INTO sightings (location, name, size, mtime_ns, ctime_ns, inode, "
                             "first_seen, waiting) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)", (location, name, *stat, now))
                seen[location] = now
            for location in known:
                conn.execute("DELETE FROM sightings WHERE location = ?", (location,))
        return seen

    def note_waiting(self, reasons: dict[str, str | None]) -> None:
        """Record why each listed file (by location) is not taken now; None: it is not waiting."""
        with self._connect(write=True) as conn:
            for location, why in reasons.items():
                conn.execute("UPDATE sightings SET waiting = ? WHERE location = ?", (why, location))

    def waiting(self) -> list[dict[str, Any]]:
        """Files of the inbox not taken yet, with why: ``name``, ``location``, ``first_seen``, ``why``."""
        if not os.path.exists(self.path):
            return []
        with self._connect(write=False) as conn:
            rows = conn.execute("SELECT name, location, first_seen, waiting FROM sightings WHERE waiting IS NOT NULL "
                                "ORDER BY first_seen, name").fetchall()
        return [{"name": r["name"], "location": r["location"], "first_seen": utc_timestamp(r["first_seen"]),
                 "why": r["waiting"]} for r in rows]

    def _update_claimed(self, record: SceneRecord, assignments: str, values: tuple[Any, ...]) -> bool:
        with self._connect(write=True) as conn:
            cur = conn.execute(
                f"UPDATE scenes SET {assignments} WHERE name = ? AND identity = ? AND owner_token = ?",
                (*values, record.name, record.identity, record.owner_token),
            )
            return cur.rowcount == 1


def _readable(conn: sqlite3.Connection, path: str) -> sqlite3.Connection:
    """``conn``, or where it cannot read (WAL's shared-memory file cannot grow on a full disk) a
    read-only connection to the database file alone: --status works on a full disk."""
    try:
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return conn
    except sqlite3.OperationalError:
        conn.close()
        uri = "file:" + urllib.parse.quote(path) + "?immutable=1"
        return sqlite3.connect(uri, uri=True, isolation_level=None)


#: The ``stat`` fields that say a file was not touched.
_STAT = ("size", "mtime_ns", "ctime_ns", "inode")


def _takeable(record: SceneRecord, now: float) -> bool:
    if record.status is SceneState.QUEUED:
        return True
    if record.status is SceneState.FAILED:
        return record.next_try <= now
    if record.status is SceneState.RUNNING:
        if record.lease_until is not None and record.lease_until < now:
            return True  # the lease ran out: its holder is gone or cut off
        holder = LockHolder.parse(record.owner or "")
        return holder is not None and holder.is_gone()
    return False  # done, quarantined


def _names(record: SceneRecord, scene: str) -> bool:
    return scene in (record.name, record.stem, record.key, record.location) or (
        len(scene) >= 6 and short_identity(record.identity).startswith(scene[:SHORT_IDENTITY])
        and record.identity.rsplit(":", 1)[-1].startswith(scene))


def _record(row: sqlite3.Row) -> SceneRecord:
    fields = SceneRecord.__dataclass_fields__
    values = {k: row[k] for k in row.keys() if k in fields}  # noqa: SIM118 - Row has no __iter__ of keys
    try:
        values["status"] = SceneState(values["status"])
    except ValueError:
        raise StoreError(f"scene {row['name']!r}: expected a state of {', '.join(STATES)} in the watch ledger, "
                         f"got {values['status']!r}") from None
    return SceneRecord(**values)
