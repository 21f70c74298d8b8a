"""Small helpers shared by the scene and result stores: opening, creating and removing groups."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import google_crc32c
import numcodecs
import numpy as np
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, VLenBytesCodec, ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.dtype import VariableLengthBytes
from zarr.core.sync import sync
from zarr.storage import LocalStore

from tilepipe.errors import StoreError, WrongStoreKindError
from tilepipe.location import Location
from tilepipe.store.info import FORMAT_VERSION

__all__ = [
    "FORMAT_VERSION",
    "Chunk",
    "array_prefix",
    "READABLE_FORMATS",
    "SCENE_FORMAT_VERSION",
    "chunk_encoder",
    "chunk_problem",
    "compressors",
    "create_group",
    "decode_chunk_key",
    "open_group",
    "present_chunks",
    "quiet_vlen",
    "read_many",
    "remove_partial_writes",
    "remove_store",
    "store_exists",
    "vlen_bytes_dtype",
    "write_many",
]

#: Format of result stores written now (:data:`tilepipe.store.info.FORMAT_VERSION`). 2: every chunk
#: carries a crc32c checksum, and every tile not recorded FREE has all its chunks written. 3: one array
#: per output band, each with its own fill value, and CF georeferencing (see :mod:`tilepipe.store.result`). 4: the
#: status grid's fill value is "free", its chunks that hold only free tiles are not written, and a record
#: (``status_written``) says which chunks must exist.
#: Format of scene stores. 2: every chunk carries a crc32c checksum, the index's fill value -1
#: means "not written", and each block records its entry count. 3: only blocks that hold data are
#: written, and a checksummed record (``written``) says which (see :mod:`tilepipe.store.scene`).
SCENE_FORMAT_VERSION = 3

#: Formats each kind of store is read in (format 2 stores of either kind stay readable).
READABLE_FORMATS = {"scene": (2, SCENE_FORMAT_VERSION), "result": (2, 3, FORMAT_VERSION)}

# What to do about a store of another format, per kind: the store must be made again.
_REMAKE = {"scene": "ingest again with --overwrite", "result": "run again with --overwrite"}


def compressors(level: int) -> list[Any]:
    """The codecs after serialisation for every array tilepipe writes: zstd at ``level``, then a crc32c.

    The checksum covers the stored bytes of each chunk and is checked before
    they are decompressed, so a flipped or lost byte anywhere in a chunk file is
    an error on reading, never wrong values. crc32c is a standard Zarr v3 codec:
    any Zarr reader checks it too.
    """
    return [ZstdCodec(level=level), Crc32cCodec()]


def chunk_problem(exc: BaseException) -> str:
    """Why a stored chunk could not be read, in words for an error message."""
    text = str(exc)
    if "checksum" in text.lower():
        return "is corrupt (checksum mismatch)"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"cannot be read ({first})"


def store_exists(location: Location) -> bool:
    """Whether a Zarr group already exists at ``location``."""
    if location.is_local:
        return os.path.exists(os.path.join(location.path, "zarr.json"))
    try:
        zarr.open_group(location.target, mode="r")
    except Exception:  # noqa: BLE001 - any failure to open means "not there" for this check
        return False
    return True


#: What a tilepipe store's folder holds: its group metadata and its arrays (and ``band_<n>``, one per band).
_STORE_ENTRIES = frozenset(
    {"zarr.json", "tiles", "nnz", "entries", "written", "data", "status", "status_written", "x", "y", "band",
     "spatial_ref"}
)
_BAND_ENTRY = re.compile(r"band_[1-9][0-9]*")


def _is_tilepipe_store(location: Location) -> bool:
    """Whether ``location`` holds a Zarr group written by tilepipe (its attributes say so), or what is left
    of one (a folder of nothing but a store's own entries, e.g. after a writer recreated chunks in a
    store removed under it)."""
    try:
        with open(os.path.join(location.path, "zarr.json"), encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, ValueError):
        try:
            return all(name in _STORE_ENTRIES or _BAND_ENTRY.fullmatch(name)
                       for name in os.listdir(location.path))
        except OSError:
            return False
    return isinstance(meta, dict) and isinstance(meta.get("attributes", {}).get("tilepipe"), dict)


def remove_store(location: Location) -> None:
    """Delete a tilepipe store (local folders; remote stores are emptied by zarr).

    Refuses anything that is not a tilepipe store: ``--overwrite`` pointed at a
    file or at a folder of other things must never delete them.
    """
    if not location.is_local:
        zarr.open_group(location.target, mode="w")
        return
    path = location.path
    if os.path.lexists(path) and not _is_tilepipe_store(location):
        what = "a folder that is not a tilepipe store" if os.path.isdir(path) else "not a tilepipe store"
        raise StoreError(f"{location}: is {what}; --overwrite replaces only tilepipe stores: choose another path")
    for _ in range(10):  # a writer that was still finishing may add a file as we go
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.isdir(path):
            return
        time.sleep(0.05)
    shutil.rmtree(path)


def remove_partial_writes(location: Location) -> int:
    """Delete the temporary ``*.partial`` files a killed writer left in a local store; returns how many.

    zarr writes a local chunk to a temporary file and renames it into place, so a
    chunk is whole or absent; a process killed mid-write leaves the temporary file.
    """
    if not location.is_local:
        return 0
    removed = 0
    for folder, _, files in os.walk(location.path):
        for name in files:
            if name.endswith(".partial"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, name))
                    removed += 1
    return removed


def create_group(location: Location) -> zarr.Group:
    """A new, empty Zarr v3 group at ``location`` (replacing whatever is there)."""
    try:
        return zarr.open_group(location.target, mode="w", zarr_format=3)
    except OSError as exc:
        raise StoreError(f"{location}: cannot create the store: {exc.strerror or exc}") from exc


def open_group(location: Location, mode: str, *, kind: str) -> tuple[zarr.Group, dict[str, Any]]:
    """Open a tilepipe group of ``kind`` ("scene" or "result") and return it with its attrs."""
    if location.is_local and os.path.isfile(location.path):
        # zarr would say "File exists" (r+) or "No group found" (r): neither tells a user what is wrong.
        raise WrongStoreKindError(f"{location}: is a file, not a tilepipe store (Zarr v3 folder)", None)
    try:
        group = zarr.open_group(location.target, mode=mode)  # type: ignore[arg-type]
    except FileNotFoundError as exc:
        raise StoreError(f"{location}: no such {kind} store") from exc
    except Exception as exc:
        raise StoreError(f"{location}: cannot open as a Zarr v3 {kind} store: {exc}") from exc
    attrs = dict(group.attrs).get("tilepipe")
    if not isinstance(attrs, dict) or attrs.get("kind") != kind:
        found = attrs.get("kind") if isinstance(attrs, dict) else None
        what = f"a tilepipe {found} store" if found else "not a tilepipe store"
        raise WrongStoreKindError(f"{location}: expected a tilepipe {kind} store, found {what}", found)
    supported = READABLE_FORMATS.get(kind, ())
    if attrs.get("format_version") not in supported:
        which = (f"the supported {supported[0]}" if len(supported) == 1
                 else f"one of the supported {', '.join(str(v) for v in supported)}")
        raise StoreError(
            f"{location}: store format {attrs.get('format_version')} is not {which}; "
            f"{_REMAKE.get(kind, 'make it again')}"
        )
    return group, attrs


@contextlib.contextmanager
def quiet_vlen() -> Iterator[None]:
    """Hide zarr's note that variable-length bytes have no v3 spec yet (see :mod:`tilepipe.store.scene`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
        yield


def vlen_bytes_dtype() -> Any:
    """Zarr's variable-length bytes dtype."""
    with quiet_vlen():
        return VariableLengthBytes()


#: Selections read or written at once by :func:`read_many` and :func:`write_many`: each holds a file
#: open while it runs, and a sparse grid may list thousands.
_AT_ONCE = 64


def read_many(array: Any, selections: list[Any]) -> list[Any]:
    """``array[selection]`` for each selection, read concurrently on zarr's event loop.

    One zarr call costs about a millisecond of Python however small its chunk; a sparse
    store's blocks are read one selection each, so they go together. Each item is the
    values (a numpy array), or the exception its read raised: the caller says which
    chunk was damaged, as it would for one read.
    """
    async def batch(part: list[Any]) -> list[Any]:
        return list(await asyncio.gather(*(array.async_array.getitem(sel) for sel in part), return_exceptions=True))

    out: list[Any] = []
    for i in range(0, len(selections), _AT_ONCE):
        out.extend(sync(batch(selections[i : i + _AT_ONCE])))
    return out


@dataclass(frozen=True, slots=True)
class Chunk:
    """One whole chunk of ``array`` at chunk ``coords``, already encoded (see :func:`chunk_encoder`):
    :func:`write_many` writes it with one call to the array's store."""

    array: Any
    coords: tuple[int, ...]
    data: bytes


def chunk_encoder(array: Any) -> Callable[[np.ndarray], bytes] | None:
    """Encode one whole chunk of ``array`` (its values at the chunk's full shape) as its codecs would.

    zarr runs each chunk's compression and its store write in threads of their own, about
    a millisecond per chunk however small; a sparse store writes thousands of small chunks.
    The codecs tilepipe writes are standard Zarr v3 ones, encoded here as the specification
    has them: ``vlen-bytes`` (numcodecs' layout) or ``bytes`` (little-endian, C order), then
    ``zstd``, then ``crc32c`` (the checksum of the bytes before it, 4 bytes little-endian).
    Returns None for an array with any other codecs (a store written by another tool):
    its chunks go through zarr.
    """
    meta = array.metadata
    codecs: tuple[Any, ...] = tuple(getattr(meta, "codecs", ()))
    if len(codecs) != 3 or not isinstance(codecs[1], ZstdCodec) or not isinstance(codecs[2], Crc32cCodec):
        return None
    zstd = numcodecs.Zstd(level=codecs[1].level, checksum=codecs[1].checksum)
    shape = tuple(meta.chunk_grid.chunk_shape)
    if isinstance(codecs[0], VLenBytesCodec):
        vlen = numcodecs.VLenBytes()

        def serialise(values: np.ndarray) -> bytes:
            return bytes(vlen.encode(np.asarray(values, dtype=object).reshape(-1)))
    elif isinstance(codecs[0], BytesCodec) and (codecs[0].endian is None or codecs[0].endian.name == "little"):
        dtype = np.dtype(meta.dtype.to_native_dtype()).newbyteorder("<")

        def serialise(values: np.ndarray) -> bytes:
            return np.ascontiguousarray(values, dtype=dtype).tobytes()
    else:
        return None

    def encode(values: np.ndarray) -> bytes:
        if values.shape != shape:
            raise ValueError(f"a chunk of {array.name} is {shape}, not {values.shape}")
        packed = bytes(zstd.encode(serialise(values)))
        return packed + int(google_crc32c.value(packed)).to_bytes(4, "little")

    return encode


def write_many(*steps: list[Any]) -> BaseException | None:
    """Write each item of each step: an ``(array, selection, value)`` as ``array[selection] = value``
    on zarr's event loop, a :class:`Chunk` as its bytes.

    A step's writes run concurrently, and every one of them is awaited, failed or not;
    the next step starts only once the step before was written whole (an index written
    after the chunks it counts). Returns the first failure (no later step is begun),
    None where everything was written. A chunk of a local store is written in this
    thread, as zarr's local store writes it (a temporary file renamed into place); a
    thread hop per file would cost ten times the write.
    """
    prototype = default_buffer_prototype()

    def write(item: Any) -> Any:
        if isinstance(item, Chunk):
            return item.array.store_path.store.set(_chunk_key(item), prototype.buffer.from_bytes(item.data))
        array, selection, value = item
        return array.async_array.setitem(selection, value)

    async def run(items: list[Any]) -> list[BaseException]:
        for i in range(0, len(items), _AT_ONCE):
            done = await asyncio.gather(*(write(item) for item in items[i : i + _AT_ONCE]), return_exceptions=True)
            failed = [d for d in done if isinstance(d, BaseException)]
            if failed:
                return failed[:1]
        return []

    for step in steps:
        local: list[Chunk] = []
        others: list[Any] = []
        for item in step:
            is_local = isinstance(item, Chunk) and isinstance(item.array.store_path.store, LocalStore)
            if is_local:
                local.append(item)
            else:
                others.append(item)
        failures = sync(run(others)) if others else []
        for item in local:
            try:
                _write_local(item)
            except OSError as exc:
                failures.append(exc)
                break
        if failures:  # in a list: zarr's sync() raises an exception that a coroutine returns
            return failures[0]
    return None


def _chunk_key(chunk: Chunk) -> str:
    return array_prefix(chunk.array) + chunk.array.metadata.encode_chunk_key(chunk.coords)


def _write_local(chunk: Chunk) -> None:
    """One chunk into a local store as zarr's ``LocalStore`` writes it: whole (a ``.partial`` file renamed
    into place, see :func:`remove_partial_writes`) or not at all."""
    store = chunk.array.store_path.store
    if store.read_only:
        raise OSError(errno.EROFS, f"{store.root} is open read-only")
    path = os.path.join(str(store.root), *_chunk_key(chunk).split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = f"{path}.{uuid.uuid4().hex}.partial"
    try:
        with open(partial, "wb") as fh:
            fh.write(chunk.data)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise


def array_prefix(array: Any) -> str:
    """Where a Zarr array's keys start in its store (``"band_1/"`` for a store at a group's root)."""
    path = str(array.store_path.path)
    return f"{path.rstrip('/')}/" if path else ""


def decode_chunk_key(encoding: Any, key: str) -> tuple[int, ...]:
    """A chunk's coordinates from its key (``c/1/2`` or ``1.2``); zarr 3.1's own decoder drops a digit."""
    lead = "c" + encoding.separator
    if encoding.name == "default":
        if not key.startswith(lead):
            raise ValueError(key)
        key = key[len(lead):]
    return tuple(int(v) for v in key.split(encoding.separator))


def present_chunks(array: Any) -> set[tuple[int, ...]]:
    """The coordinates of every chunk of ``array`` its store holds, from one listing (any zarr store).

    Costs the listing, not a read per chunk: a check that thousands of chunks exist takes milliseconds.
    """
    prefix = array_prefix(array)
    encoding = array.metadata.chunk_key_encoding

    async def keys() -> list[str]:
        return [key async for key in array.store_path.store.list_prefix(prefix)]

    found = set()
    for key in sync(keys()):
        if key.endswith((".partial", "zarr.json")):
            continue
        with contextlib.suppress(ValueError):  # not a chunk key
            coords = decode_chunk_key(encoding, key[len(prefix):])
            if len(coords) == array.ndim:
                found.add(coords)
    return found
