"""Where data lives: a local path or a URL, decided in one place.

Every input and output of tilepipe (a raster, a scene or result store, a model
file, an export) is named by a string that is either a local path or a URL with
a scheme (``s3://bucket/key``, ``gs://...``, ``memory://...``). A
:class:`Location` answers the questions the rest of the code used to answer with
ad-hoc ``"://" in path`` tests: is it local, what is its file-system path, does
it exist, what is its parent, and what to hand to zarr or rasterio.

``file://`` URLs are local paths: zarr's fsspec store would open them
read-only and would not create their folders, so they are unwrapped here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlparse

from tilepipe.errors import InputError, StoreError

__all__ = ["Location", "already_exists", "existing_output", "has_scheme", "refuse_overlaps"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def has_scheme(text: str) -> bool:
    """Whether ``text`` starts with a URL scheme (``s3://``, ``tcp://``, ``file://``, ...)."""
    return bool(_SCHEME.match(text))


@dataclass(frozen=True, slots=True)
class Location:
    """A local path or a URL, as the user gave it (``text``), for messages.

    Build one with :meth:`of`; ``file://`` URLs count as local paths.
    """

    text: str

    @classmethod
    def of(cls, value: str | os.PathLike[str] | Location) -> Location:
        """The location of ``value`` (a path, a URL, or already a location)."""
        if isinstance(value, Location):
            return value
        return cls(os.fspath(value))

    def __str__(self) -> str:
        return self.text

    @property
    def is_local(self) -> bool:
        """Whether this is a path of the local file system (``file://`` URLs included)."""
        return not has_scheme(self.text) or self.text.lower().startswith("file://")

    @property
    def scheme(self) -> str:
        """The URL scheme (``"s3"``, ...), ``"file"`` for local paths."""
        return "file" if self.is_local else self.text.split("://", 1)[0].lower()

    @property
    def path(self) -> str:
        """The local file-system path, absolute. Raises ``ValueError`` for a remote URL."""
        if not self.is_local:
            raise ValueError(f"Expected a local path. Got the URL {self.text!r} instead.")
        raw = unquote(urlparse(self.text).path) if has_scheme(self.text) else os.path.expanduser(self.text)
        return os.path.abspath(raw)

    @property
    def target(self) -> str:
        """What zarr, rasterio and fsspec open: the absolute local path, or the URL as given."""
        return self.path if self.is_local else self.text

    def exists(self) -> bool:
        """Whether something is there (a file, a folder or an object prefix)."""
        if self.is_local:
            return os.path.exists(self.path)
        import fsspec  # noqa: PLC0415 - only remote locations need fsspec and its plug-ins

        fs, inner = fsspec.core.url_to_fs(self.text)
        return bool(fs.exists(inner))

    @property
    def parent(self) -> Location:
        """The folder (or URL prefix) that holds this location."""
        if self.is_local:
            return Location(os.path.dirname(self.path.rstrip(os.sep)) or os.sep)
        scheme, rest = self.text.split("://", 1)
        head = rest.rstrip("/").rsplit("/", 1)[0] if "/" in rest.rstrip("/") else rest
        return Location(f"{scheme}://{head}")

    @property
    def name(self) -> str:
        """The last part of the path (file or folder name)."""
        return (self.path if self.is_local else self.text).rstrip("/").rsplit("/", 1)[-1]

    def join(self, *parts: str) -> Location:
        """A location inside this one."""
        if self.is_local:
            return Location(os.path.join(self.path, *parts))
        return Location("/".join([self.text.rstrip("/"), *parts]))

    def overlaps(self, other: Location) -> bool:
        """Whether this location is, contains or lies inside ``other`` (same file system only)."""
        if self.is_local != other.is_local:
            return False
        if self.is_local:
            a, b = os.path.realpath(self.path), os.path.realpath(other.path)
        else:
            a, b = self.text.rstrip("/"), other.text.rstrip("/")
        return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")

    def relation(self, other: Location) -> str | None:
        """How this location overlaps ``other``: ``"is"``, ``"is inside"``, ``"contains"``, or None.

        Local paths are compared with symbolic links resolved; URLs as written.
        """
        if not self.overlaps(other):
            return None
        if self.is_local:
            a, b = os.path.realpath(self.path), os.path.realpath(other.path)
        else:
            a, b = self.text.rstrip("/"), other.text.rstrip("/")
        if a == b:
            return "is"
        return "is inside" if a.startswith(b.rstrip("/") + "/") else "contains"


def already_exists(where: object, holds: str | None = None) -> str:
    """What every refusal of an output that is there already says: ``"<where>: already exists
    [and holds <holds>]; pass overwrite=True (--overwrite) to replace it"``."""
    held = f" and holds {holds}" if holds else ""
    return f"{where}: already exists{held}; pass overwrite=True (--overwrite) to replace it"


def existing_output(
    location: Location, *, overwrite: bool, reusable: Callable[[], bool], holds: str
) -> Literal["create", "reuse", "replace"]:
    """What to do with an output that may already exist: the one reuse/overwrite policy.

    ``"create"`` where nothing is there; ``"reuse"`` where something is there,
    ``overwrite`` is off and ``reusable()`` says it is what would be made anyway
    (a complete result of the same run, a scene of the same source); ``"replace"``
    with ``overwrite``. Anything else is refused with a :class:`StoreError`
    that says what the location holds (``holds``) and how to replace it.
    """
    if not location.exists():
        return "create"
    if not overwrite:
        if reusable():
            return "reuse"
        raise StoreError(already_exists(location, holds))
    return "replace"


def refuse_overlaps(
    outputs: Sequence[str | os.PathLike[str] | Location | None],
    inputs: Sequence[str | os.PathLike[str] | Location | None] = (),
) -> None:
    """Refuse an output that is, contains or lies inside an input or another output.

    Called before anything is written or removed, so ``--overwrite`` can never
    destroy an input. ``None`` entries (an output not asked for, a model given as
    an object) are skipped.

    Raises
    ------
    InputError
        ``"out.tif: the output is inside the input in.zarr; choose another path"``
        (``is`` / ``is inside`` / ``contains``; ``the other output`` between outputs).
    """
    outs = [Location.of(o) for o in outputs if o is not None]
    ins = [Location.of(i) for i in inputs if i is not None]
    for n, out in enumerate(outs):
        for role, others in (("the input", ins), ("the other output", outs[n + 1 :])):
            for other in others:
                how = out.relation(other)
                if how is not None:
                    raise InputError(f"{out}: the output {how} {role} {other}; choose another path")
