"""The identity of a source file: what says "this is still the scene that was ingested".

A rerun must notice any change a user can make to a raster, including a block
rewritten in place in the middle of a large file. So the identity holds the
file's size, modification and status-change times and inode (cheap: one
``stat``) and a sha256 of its whole content (one full read).

:func:`unchanged` compares a stored identity with the file as it is now: where
size, both times and the inode are all as recorded, the file was not written
since (``mtime`` can be set back by a user, but ``ctime`` cannot: any write or
``touch`` moves it), and nothing is read; where any differs, the content is
hashed again and decides (a copied or touched file with the same bytes is
still the same scene). Cost on a 10 GB scene: nothing on a rerun of an
unchanged file; one full read (about 10 GB at the disk's speed, sha256 at about
1 GB/s a core here) when the file was touched or is new.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

__all__ = ["SHORT_IDENTITY", "content_sha256", "file_identity", "quick_identity", "short_identity", "unchanged"]

#: Fields of the cheap check, all from one ``os.stat``.
_QUICK = ("size", "mtime_ns", "ctime_ns", "inode")

#: Hex characters of an identity or a sha256 shown to people (a scene's key, a model file's
#: sha256 in a message): 48 bits, short enough to read and type, long enough to tell files apart.
SHORT_IDENTITY = 12


def quick_identity(path: str) -> dict[str, Any]:
    """Path (absolute), size in bytes, modification and status-change times (ns) and inode."""
    st = os.stat(path)
    return {
        "path": os.path.abspath(path),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "inode": st.st_ino,
    }


def content_sha256(path: str) -> str:
    """sha256 of the whole file, hex: the one way tilepipe hashes a file (scenes and model files)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def short_identity(identity: str) -> str:
    """The first :data:`SHORT_IDENTITY` hex characters of an identity or sha256, its scheme prefix
    (``etag:``) dropped: how messages, keys and listings show it."""
    return identity.rsplit(":", 1)[-1][:SHORT_IDENTITY]


def file_identity(path: str) -> dict[str, Any]:
    """:func:`quick_identity` and the sha256 of the whole content."""
    return {**quick_identity(path), "sha256": content_sha256(path)}


def unchanged(stored: dict[str, Any], path: str) -> bool:
    """Whether the file at ``path`` still holds what ``stored`` (a :func:`file_identity`) describes."""
    now = quick_identity(path)
    if stored.get("path") != now["path"] or stored.get("size") != now["size"]:
        return False
    if all(stored.get(k) == now[k] for k in _QUICK):
        return True
    return bool(stored.get("sha256")) and stored.get("sha256") == content_sha256(path)
