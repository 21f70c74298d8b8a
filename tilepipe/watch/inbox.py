"""The inbox: a folder or an object-store prefix whose rasters are scenes.

What is a scene
---------------
Every file directly in the inbox whose name matches the raster patterns
(``*.tif``, ``*.tiff``, ``*.jp2``, ``*.img`` by default) and none of the ignore
patterns (dot-files, ``*.part``, ``*.tmp``, ``*.crdownload``, ``*~`` and whatever
``--ignore`` adds). Sub-folders are not entered.

When is a file finished
-----------------------
Nothing tells a reader that a writer is done with a file, so a scene is taken
only once it has been left alone for the settle time: the later of its
modification and status-change times (a writer moves both; ``touch -d`` can set
the first back, not the second) lies ``settle`` seconds in the past, and its size
and times are the same after its content was hashed as before. A time in the
future (another machine's clock ahead of this one's) counts from when the
watcher first saw the file as it is: it waits ``settle`` seconds, not the skew. A file copied in
with its old modification time kept (``cp -p``, ``rsync -t``) still waits: its
status-change time is the copy's. In an object store an object appears whole
when its upload ends; its last-modified time is used the same way.

Identity
--------
A local file's identity is the sha256 of its content
(:func:`tilepipe.sources.identity.content_sha256`), read once: the ledger keeps the
``stat`` it had when hashed, so an untouched file is not read again. An object's
identity is the store's content tag (``etag:<ETag>``), which changes with every
upload. Either way a file rewritten under the same name is a new scene.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tilepipe.errors import InputError
from tilepipe.location import Location
from tilepipe.sources.identity import content_sha256, quick_identity

__all__ = ["DEFAULT_IGNORE", "DEFAULT_PATTERNS", "Entry", "Inbox"]

#: File names taken as scenes.
DEFAULT_PATTERNS: tuple[str, ...] = ("*.tif", "*.tiff", "*.TIF", "*.TIFF", "*.jp2", "*.img")
#: File names never taken: dot-files and the names downloaders and copy tools write to.
DEFAULT_IGNORE: tuple[str, ...] = (".*", "*.part", "*.tmp", "*.crdownload", "*.partial", "*~", "*.aux.xml")


@dataclass(frozen=True, slots=True)
class Entry:
    """A file in the inbox as listed: name, location (path or URL), size in bytes, and ``changed``,
    the time (seconds since the epoch) of its last change. ``quick`` is what the ledger keeps to
    know the file again (size, times, inode; for objects, size and content tag)."""

    name: str
    location: str
    size: int
    changed: float
    quick: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def stem(self) -> str:
        """The name without its last suffix: what ``{scene}`` stands for."""
        return os.path.splitext(self.name)[0]


class Inbox:
    """The inbox at ``location`` (a folder or a URL prefix such as ``s3://bucket/scenes``).

    Raises :class:`InputError` (naming the inbox) where it does not exist or is not a folder.
    """

    def __init__(self, location: str, *, patterns: Sequence[str] = DEFAULT_PATTERNS,
                 ignore: Sequence[str] = ()) -> None:
        self.location = Location.of(location)
        self.patterns = tuple(patterns)
        self.ignore = (*DEFAULT_IGNORE, *ignore)
        self._fs: Any = None

    def __str__(self) -> str:
        return str(self.location)

    @property
    def is_local(self) -> bool:
        """Whether the inbox is a folder of this machine."""
        return self.location.is_local

    def wants(self, name: str) -> bool:
        """Whether a file named ``name`` is a scene (matches a pattern, no ignore pattern)."""
        return any(fnmatch.fnmatchcase(name, p) for p in self.patterns) and not any(
            fnmatch.fnmatchcase(name, p) for p in self.ignore)

    # ------------------------------------------------------------------ listing

    def entries(self) -> list[Entry]:
        """The scene files in the inbox now, oldest change first."""
        found = self._local_entries() if self.is_local else self._remote_entries()
        return sorted(found, key=lambda e: (e.changed, e.name))

    def _local_entries(self) -> list[Entry]:
        folder = self.location.path
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            raise InputError(f"{self.location}: the inbox does not exist") from None
        except NotADirectoryError:
            raise InputError(f"{self.location}: the inbox is not a folder") from None
        except OSError as exc:
            raise InputError(f"{self.location}: cannot list the inbox: {exc.strerror or exc}") from None
        out = []
        for name in names:
            if not self.wants(name):
                continue
            path = os.path.join(folder, name)
            try:
                st = os.stat(path)
            except OSError:
                continue  # removed or renamed while listing: the next pass sees what is there
            if not os.path.isfile(path):
                continue
            out.append(Entry(name, path, st.st_size, max(st.st_mtime, st.st_ctime), quick_identity(path)))
        return out

    def fs(self) -> Any:
        """The fsspec file system of a remote inbox."""
        if self._fs is None:
            import fsspec  # noqa: PLC0415 - only remote inboxes need fsspec and its plug-ins

            try:
                self._fs = fsspec.core.url_to_fs(self.location.text)[0]
            except (ImportError, ValueError) as exc:
                raise InputError(f"{self.location}: cannot open the inbox: {exc} "
                                 '(for s3:// inboxes: pip install "tilepipe[s3]")') from None
        return self._fs

    def _remote_entries(self) -> list[Entry]:
        fs = self.fs()
        prefix = self.location.text.rstrip("/")
        try:
            fs.invalidate_cache()
            listed = fs.ls(prefix, detail=True)
        except FileNotFoundError:
            raise InputError(f"{self.location}: the inbox does not exist") from None
        except Exception as exc:  # noqa: BLE001 - fsspec back-ends raise their own errors
            raise InputError(f"{self.location}: cannot list the inbox: {' '.join(str(exc).split())}") from None
        scheme = self.location.scheme
        out = []
        for item in listed:
            if item.get("type") != "file":
                continue
            key = str(item["name"])
            name = key.rsplit("/", 1)[-1]
            if not self.wants(name):
                continue
            changed = _timestamp(item.get("LastModified") or item.get("mtime") or item.get("last_modified"))
            tag = str(item.get("ETag") or item.get("etag") or item.get("md5") or "").strip('"')
            quick = {"size": int(item.get("size") or 0), "mtime_ns": int(changed * 1e9), "ctime_ns": 0,
                     "inode": 0, "etag": tag}
            out.append(Entry(name, f"{scheme}://{key}", int(item.get("size") or 0), changed, quick))
        return out

    # ------------------------------------------------------------------ settling and identity

    def settled(self, entry: Entry, settle: float, now: float | None = None, *,
                first_seen: float | None = None) -> bool:
        """Whether ``entry`` was last changed at least ``settle`` seconds ago.

        A change time in the future (a writer whose clock is ahead) counts from
        ``first_seen``, when the file was first seen as it is now (default: now), so
        such a file waits ``settle`` seconds, not as long as the clocks differ.
        """
        now = now if now is not None else time.time()
        changed = entry.changed if entry.changed <= now else (first_seen if first_seen is not None else now)
        return now - changed >= settle

    def identity(self, entry: Entry, known: str | None = None) -> str | None:
        """The scene's identity; None where the file changed while it was read (still being written).

        ``known``: the identity the ledger holds for this very ``stat``, used without reading.
        """
        if not self.is_local:
            tag = entry.quick.get("etag")
            return f"etag:{tag}" if tag else f"size-mtime:{entry.size}-{entry.quick['mtime_ns']}"
        if known is not None:
            return known
        try:
            digest = content_sha256(entry.location)
            after = quick_identity(entry.location)
        except OSError:
            return None
        return digest if after == entry.quick else None

    def stage(self, entry: Entry, folder: str) -> str:
        """A local path holding the scene: the file itself, or an object downloaded into ``folder``.

        A download goes to a temporary name first and is kept: a resumed scene reads the same
        file again (its run's identity names that file).
        """
        if self.is_local:
            return entry.location
        target = os.path.join(folder, entry.name)
        if os.path.exists(target) and os.path.getsize(target) == entry.size:
            return target
        os.makedirs(folder, exist_ok=True)
        partial = target + ".part"
        try:
            self.fs().get_file(entry.location, partial)
        except Exception as exc:  # noqa: BLE001 - fsspec back-ends raise their own errors
            raise InputError(f"{entry.location}: cannot download the scene: {' '.join(str(exc).split())}") from None
        os.replace(partial, target)
        return target


def _timestamp(value: Any) -> float:
    """Seconds since the epoch from what an fsspec listing gives (a datetime, a number or None)."""
    if value is None:
        return 0.0  # unknown: an object appears whole when its upload ends, so nothing to wait for
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    return float(value)


def remove_tree(path: str) -> None:
    """Remove a local folder and everything in it, if it is there."""
    shutil.rmtree(path, ignore_errors=True)
