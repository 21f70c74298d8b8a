"""One writer per store: a lock file beside a store while it is written.

Where the lock lives, and why
-----------------------------
``<parent>/.<name>.lock`` for a store at ``<parent>/<name>``: *beside* the
store, not inside it, so removing the store (``--overwrite``) never removes
another writer's lock, and the lock is taken before anything decides whether
the store is reused or replaced.

How it is taken
---------------
The file is created with ``O_CREAT | O_EXCL`` (atomic on local file systems and
NFSv3+), holding the writer's pid, host, start time (UTC) and a random token. A
second writer finds it and is refused with a :class:`StoreError` that says who
holds it and since when.

A lock is stale where its writer is known to be gone: same host and pid
namespace, and the pid is not running, is a zombie, or now belongs to a process
that started at another time than the one recorded (pid reuse). A lock from
another host is never judged stale: its pid means nothing here, so the message
says which file to remove once that process is gone.

Taking over a stale lock must let exactly one of several recovering processes
win. A recoverer holds a short ``flock`` on ``<lock>.recover`` (the kernel drops
it when its holder dies, so it can never go stale itself), judges the lock again
under it, and only then removes it and creates its own with ``O_EXCL``. Nothing
else ever removes a lock but its own holder (which checks its token first), so a
lock judged stale under the guard is still that same stale lock when it is
removed.

Remote stores (URLs: ``s3://``, ``gs://``, ...) are not locked: object stores
have no atomic create-if-absent that every backend offers. Two writers of one
remote store are not prevented; say so to users who share buckets.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import psutil

from tilepipe.errors import StoreError
from tilepipe.location import Location
from tilepipe.store.info import utc_timestamp

__all__ = ["LockHolder", "lock_path", "store_lock"]

#: An unreadable lock file (its writer died between creating and filling it) younger than
#: this, in seconds, is taken as a writer that is still filling it in.
_UNREADABLE_GRACE = 60.0

#: Seconds to wait for another process that is recovering the same stale lock.
_RECOVER_WAIT = 10.0


@dataclass(frozen=True, slots=True)
class LockHolder:
    """Who holds a lock: pid, host, when it was taken (ISO 8601, UTC), the holder process's
    start time (seconds since the epoch), its pid namespace (Linux; ``""`` elsewhere) and a
    random token that tells two locks apart."""

    pid: int
    host: str
    since: str
    started: float
    pid_namespace: str
    token: str

    @classmethod
    def me(cls) -> LockHolder:
        """This process, now."""
        return cls(
            pid=os.getpid(),
            host=socket.gethostname(),
            since=utc_timestamp(),
            started=psutil.Process().create_time(),
            pid_namespace=_pid_namespace(),
            token=uuid.uuid4().hex,
        )

    def to_json(self) -> str:
        """What a lock file (or an export's staging folder) holds: this holder as JSON, read by :meth:`parse`."""
        return json.dumps(asdict(self))

    @classmethod
    def parse(cls, text: str) -> LockHolder | None:
        """The holder a lock file names, or None where it is not a lock file's JSON."""
        try:
            d = json.loads(text)
            return cls(int(d["pid"]), str(d["host"]), str(d["since"]), float(d["started"]),
                       str(d.get("pid_namespace", "")), str(d["token"]))
        except (ValueError, TypeError, KeyError):
            return None

    def is_gone(self) -> bool:
        """Whether this holder is known to be dead (False wherever that cannot be told): the one test
        of "is that writer dead" for store locks, the watch ledger's leases and export staging folders."""
        if self.host != socket.gethostname() or self.pid_namespace != _pid_namespace():
            return False  # another machine or container: its pid means nothing here
        try:
            process = psutil.Process(self.pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                return True  # killed, not yet reaped by its parent: dead all the same
            # The pid now belongs to a process that started at another time: pid reuse.
            return abs(process.create_time() - self.started) > 1.0
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:  # AccessDenied: the process exists
            return False


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def lock_path(location: str | os.PathLike[str] | Location) -> str | None:
    """The lock file of the store at ``location``: ``<parent>/.<name>.lock``; None for a remote store."""
    loc = Location.of(location)
    if not loc.is_local:
        return None
    path = loc.path.rstrip(os.sep)
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock")


@contextlib.contextmanager
def store_lock(location: str | os.PathLike[str] | Location, *, by: str = "run") -> Iterator[str | None]:
    """Hold the write lock of the store at ``location`` for the block; yields the lock file's path.

    Take it before looking at what is at ``location`` (reuse, resume or replace).
    A remote store (URL) is not locked: the block runs unlocked and None is yielded.

    Parameters
    ----------
    location
        The store (path or URL).
    by
        What writes the store (``"run"``, ``"ingest"``), for the message a second writer gets.

    Raises
    ------
    StoreError
        Another live process holds the lock ("<store>: locked by pid 1234 on host h
        since 2026-11-25T18:40:02Z (another tilepipe run?); wait for it or remove
        <lock file> if that process is gone"), or the lock file cannot be created.
    """
    loc = Location.of(location)
    path = lock_path(loc)
    if path is None:
        yield None
        return
    me = _acquire(loc, path, by)
    try:
        yield path
    finally:
        _release(path, me)


def _acquire(loc: Location, path: str, by: str) -> LockHolder:
    me = LockHolder.me()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{loc}: cannot create its folder: {exc.strerror or exc}") from exc
    for turn in range(40):  # each turn ends with a lock created, refused, or changed by someone else
        if _create(loc, path, me):
            return me
        found = _read(path)
        if found is None:
            continue  # released meanwhile: try again
        if not _is_stale(found):
            if found[0] is None and turn < 39:
                time.sleep(0.05)  # most likely its writer is filling it in right now: read it again
                continue
            raise StoreError(_held_message(loc, path, found, by))
        if _take_over(loc, path, me):
            return me
    raise StoreError(f"{loc}: cannot take its lock {path}: other processes keep taking it; try again")


def _create(loc: Location, path: str, me: LockHolder) -> bool:
    """Create the lock file holding ``me``; False where one exists already."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except OSError as exc:
        raise StoreError(f"{loc}: cannot create the lock file {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(me.to_json())
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise StoreError(f"{loc}: cannot write the lock file {path}: {exc.strerror or exc}") from exc
    return True


def _read(path: str) -> tuple[LockHolder | None, float] | None:
    """What the lock file holds and its age in seconds; None where there is no lock file."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        age = time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return None
    except OSError:
        return (None, 0.0)  # unreadable: taken as held (the message names the file)
    return (LockHolder.parse(text), age)


def _is_stale(found: tuple[LockHolder | None, float]) -> bool:
    holder, age = found
    if holder is None:
        # Its writer died between creating the file and filling it in, or is filling it in now.
        return age > _UNREADABLE_GRACE
    return holder.is_gone()


def _take_over(loc: Location, path: str, me: LockHolder) -> bool:
    """Replace a stale lock by ours; False where it turned out not to be stale (any more)."""
    with _recovery_guard(loc, path + ".recover"):
        # Judged again under the guard: only a guard holder removes a lock that is not its own.
        found = _read(path)
        if found is not None:
            if not _is_stale(found):
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return _create(loc, path, me)


@contextlib.contextmanager
def _recovery_guard(loc: Location, path: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` for the block: one recoverer at a time.

    The file is removed by its holder before the lock is dropped; whoever opened it
    before that finds, once it holds the flock, that the file at ``path`` is no longer the
    one it holds, and starts again.
    """
    try:
        import fcntl  # noqa: PLC0415 - POSIX only; elsewhere stale locks are removed by hand
    except ImportError:
        raise StoreError(f"{loc}: its lock is stale, but cannot be recovered on this system; "
                         f"remove {path.removesuffix('.recover')} if no tilepipe process writes it") from None
    deadline = time.monotonic() + _RECOVER_WAIT
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as exc:
            raise StoreError(f"{loc}: cannot create {path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                raise StoreError(
                    f"{loc}: its lock is stale but cannot be recovered ({exc.strerror or exc}); "
                    f"remove {path.removesuffix('.recover')} if no tilepipe process writes it"
                ) from exc
            time.sleep(0.01)
            continue
        try:
            held = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            held = False
        if held:
            break
        os.close(fd)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _release(path: str, me: LockHolder) -> None:
    """Remove our lock file, and only ours (never one that replaced it)."""
    found = _read(path)
    if found is not None and found[0] is not None and found[0].token == me.token:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _held_message(loc: Location, path: str, found: tuple[LockHolder | None, float], by: str) -> str:
    holder = found[0]
    if holder is None:
        return (f"{loc}: locked (its lock file {path} cannot be read; another tilepipe {by}?); "
                f"wait for it or remove {path} if no tilepipe process writes this store")
    return (f"{loc}: locked by pid {holder.pid} on host {holder.host} since {holder.since} "
            f"(another tilepipe {by}?); wait for it or remove {path} if that process is gone")

