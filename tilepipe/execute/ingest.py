"""Ingest: a source read into a tiled, sparse scene store, one block of tiles per task."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from tilepipe.errors import InputError, StoreError, WrongStoreKindError
from tilepipe.execute.cluster import worker_count
from tilepipe.execute.executor import Task, execute
from tilepipe.execute.models import facts_on_worker, model_file
from tilepipe.execute.preflight import check_workers
from tilepipe.execute.tasks import BlockDone, ingest_coo_block, ingest_raster_blocks
from tilepipe.geometry import DEFAULT_TILE_SIZE, parse_tile_size, stride_aligned
from tilepipe.location import Location, existing_output, refuse_overlaps
from tilepipe.logs import NOTICE
from tilepipe.sources import RasterStack, TileBuckets, as_coo, parse_crs, parse_transform, probe_stack
from tilepipe.sources.coo import coo_block_occupancy
from tilepipe.sources.identity import content_sha256, quick_identity, unchanged
from tilepipe.sources.occupancy import occupied_blocks, raster_tile_occupancy
from tilepipe.store import remove_partial_writes, remove_store
from tilepipe.store.lock import store_lock
from tilepipe.store.scene import SceneInfo, SceneStore

__all__ = ["DEFAULT_HALO", "MIN_TILE", "ingest"]

_notice = logging.getLogger(NOTICE)

#: The halo stored where neither a halo nor a model is given, pixels.
DEFAULT_HALO = 16

#: The smallest tile side (px) worth its overhead: each tile costs a chunk file, an index
#: entry, a model call on its haloed window and a task's bookkeeping, whatever it holds.
MIN_TILE = 16

# Grids up to this many tiles take any tile size: they cost nothing however small their tiles
# (tiny scenes, tests that want many tiles), while a 400 x 400 scene in 1 px tiles is 160,000.
_ANY_TILE_UP_TO = 1024

#: Index blocks per ingest task at most. A block of a sparse raster may cost a few milliseconds
#: (one held file block, its tiles' chunks and its index chunk), about what a task costs to schedule.
BLOCKS_PER_TASK = 8

Blocks = list[tuple[int, int]]


def ingest(
    source: Any,
    store: str | os.PathLike[str],
    *,
    tile_size: int | tuple[int, int] = DEFAULT_TILE_SIZE,
    halo: int | None = None,
    model: Any = None,
    nodata: float | None = None,
    mask: bool = True,
    bands: tuple[int, ...] | list[int] | None = None,
    assets: tuple[str, ...] | list[str] | None = None,
    crs: Any = None,
    transform: Any = None,
    overwrite: bool = False,
    client: Any = None,
    progress: bool = False,
) -> SceneStore:
    """Ingest a scene into a tiled, sparse scene store.

    Parameters
    ----------
    source
        A raster path (GeoTIFF, VRT or anything rasterio opens; ``nodata``
        values become absent entries), a list of raster paths on one grid
        (their bands stacked in the order given), a local STAC item JSON
        (with ``assets``), a ``tf.SparseTensor`` (``H x W`` or ``H x W x C``),
        a ``(indices, values, shape)`` tuple of COO arrays, or a
        :class:`~tilepipe.sources.CooScene`. Rasters of a stack on different
        grids (CRS, transform or shape) are refused before anything is written.
    store
        Where the Zarr v3 scene store goes (a folder, or a URL zarr opens).
    tile_size
        Core size of a tile in pixels, int or ``(rows, cols)``.
        A tile larger than the scene is clipped to it (per axis); tiles under
        16 px are refused unless the scene is that small or cut into at most
        1024 tiles.
    halo
        Pixels of overlap stored around each core. Default: what ``model``
        needs when one is given, else 16. A halo smaller than ``model`` needs
        is refused.
    model
        Optional ``keras.Model`` or ``.keras`` path whose footprint sets the halo.
    nodata, bands
        For rasters: override every band's nodata (default: each band's own);
        1-based bands to read (a single raster only). A nodata value the
        raster's dtype cannot hold (-1 on uint8) is refused.
    mask
        For rasters with a mask (an internal or ``.msk`` mask, an alpha band; JPEG-compressed
        scenes often have one instead of a nodata value): pixels outside it are absent, as
        nodata pixels are, and the store records that it was honoured. False reads them as data.
    assets
        For a STAC item: the asset keys to stack, in order.
    crs, transform
        For in-memory sources: a CRS (anything ``rasterio.crs.CRS.from_user_input``
        takes) and an affine transform (``affine.Affine`` or 6 numbers).
    overwrite
        Replace an existing store. Without it, an existing complete store of
        the same source and tiling is reused, an unfinished one (its ingest was
        stopped) is resumed, and anything else is refused, saying what differs.
    client
        A ``distributed.Client``: raster windows are then read by its workers,
        and a worker reads the model's footprint. Without one, tasks run on
        local threads. Scenes already in memory are always written from here.
    """
    location = Location.of(store)
    try:
        tile = parse_tile_size(tile_size)
    except ValueError as exc:
        raise InputError(f"tile_size: {exc}") from exc
    halo, step = _resolve_halo(halo, model, client)
    tile = _aligned(tile, step)
    paths = _raster_paths(source)
    if paths is not None:
        src = _raster_source(source, paths, location, tile, tile_size, halo, assets=assets, bands=bands,
                             nodata=nodata, mask=mask, client=client)
    else:
        if assets is not None:
            raise InputError("assets: only for a STAC item given by its path")
        src = _points_source(source, tile, tile_size, halo, crs=crs, transform=transform)
    return _write(location, src, overwrite, progress)


@dataclass(frozen=True, slots=True)
class _Source:
    """A scene as ingest writes it, whatever it came as: the store's description (``info``), the tasks
    that write a list of its blocks into the store (``tasks``), the client they run on (None: local
    threads), and which blocks may hold a value (``occupied``, a bool mask over the block grid; None:
    the source cannot tell, and every block is read)."""

    info: SceneInfo
    tasks: Callable[[SceneStore, Blocks], list[Task[BlockDone]]]
    client: Any
    occupied: np.ndarray | None


def _raster_source(
    source: Any, paths: tuple[str, ...], location: Location, tile: tuple[int, int],
    asked: int | tuple[int, int] | list[int], halo: int, *, assets: Any, bands: Any, nodata: float | None,
    mask: bool, client: Any,
) -> _Source:
    """Rasters (one, a band stack, a STAC item's assets), refused before anything is written where they
    cannot be one scene or overlap the store; their windows are read by tasks on ``client``, and only the
    blocks whose tiles the files' block tables say may hold data."""
    refuse_overlaps([str(location)], list(paths))  # before anything at the output is touched
    raster = probe_stack(paths[0] if isinstance(source, (str, os.PathLike)) else paths,
                         assets=None if assets is None else tuple(assets),
                         bands=tuple(bands) if bands else None, nodata=nodata, mask=mask)
    refuse_overlaps([str(location)], list(raster.paths) + list(raster.files))  # a STAC item's or VRT's rasters
    if client is not None:
        check_workers(client, inputs=list(raster.paths), outputs=[str(location)])
    info = _raster_info(raster, _fit_tile(tile, raster.shape, asked), halo)
    tiles = raster_tile_occupancy(raster, info)  # None: every tile must be read
    by, bx = info.block

    def tasks(_store: SceneStore, blocks: Blocks) -> list[Task[BlockDone]]:
        def tile_mask(r: int, c: int) -> np.ndarray | None:
            return None if tiles is None else tiles[r * by : (r + 1) * by, c * bx : (c + 1) * bx]

        return [Task(ingest_raster_blocks, (raster, str(location), tuple(((r, c), tile_mask(r, c)) for r, c in group)),
                     weight=len(group))
                for group in _grouped(blocks, worker_count(client))]

    return _Source(info, tasks, client, None if tiles is None else occupied_blocks(tiles, info.block))


def _grouped(blocks: Blocks, workers: int) -> list[Blocks]:
    """``blocks`` cut into tasks, neighbours together: about four tasks per worker, at most
    :data:`BLOCKS_PER_TASK` blocks each (a task's overhead is paid per task, not per block)."""
    size = max(1, min(BLOCKS_PER_TASK, -(-len(blocks) // (4 * max(workers, 1)))))
    return [blocks[i : i + size] for i in range(0, len(blocks), size)]


def _points_source(source: Any, tile: tuple[int, int], asked: int | tuple[int, int] | list[int], halo: int, *,
                   crs: Any, transform: Any) -> _Source:
    """Points in memory (a SparseTensor, COO arrays, a CooScene): sorted by tile once, and written from
    this process on local threads (shipping them to workers would copy the scene); only the blocks
    that hold points, or lie within a halo of one."""
    scene = as_coo(source)
    info = SceneInfo(
        shape=scene.shape[:2], bands=scene.shape[2], dtype=str(scene.values.dtype),
        tile_size=_fit_tile(tile, scene.shape[:2], asked), halo=halo,
        crs_wkt=parse_crs(crs), transform=parse_transform(transform),
        source={"kind": "coo", "sha256": scene.sha256()},
    )

    def tasks(store: SceneStore, blocks: Blocks) -> list[Task[BlockDone]]:
        buckets = TileBuckets(scene, info.grid, name="input")  # points sorted by tile once
        return [Task(ingest_coo_block, (buckets, store, b)) for b in blocks]

    return _Source(info, tasks, None, coo_block_occupancy(scene, info.grid, info.block))


def _raster_paths(source: Any) -> tuple[str, ...] | None:
    """The raster paths ``source`` names (one path, or a list of them), None for scenes in memory."""
    if isinstance(source, (str, os.PathLike)):
        return (os.fspath(source),)
    if isinstance(source, list) or (isinstance(source, tuple) and source
                                    and all(isinstance(p, (str, os.PathLike)) for p in source)):
        if not all(isinstance(p, (str, os.PathLike)) for p in source):
            raise InputError(f"source: expected a list of raster paths, got {source!r}"[:200])
        if not source:
            raise InputError("source: expected at least one raster in the list of paths, got []")
        return tuple(os.fspath(p) for p in source)
    return None


def _raster_info(raster: RasterStack, tile: tuple[int, int], halo: int) -> SceneInfo:
    """The scene store's description of a raster source, with the source's cheap identity (no content hash yet).

    A raster whose mask was honoured says so (``mask``: true, or one flag per raster of a
    stack); the key is absent otherwise, as in stores made before masks were honoured.

    One plain raster keeps the identity of a single file (path, size, times, inode; its
    content hash added when the store is created). Anything that reads more than one
    file (a list of rasters, a STAC item's assets, a VRT and the files it references,
    a raster with sidecar files) holds ``files``: one such identity per local file, so
    that a change to any of them makes it a new scene. A raster named by URL is
    identified by its URL only: its content cannot be hashed from here.
    """
    first = raster.layers[0]
    location = Location.of(first.path)
    alone = not location.is_local or list(first.files) in ([], [os.path.abspath(location.path)])
    if len(raster.layers) == 1 and alone:
        identity: dict[str, Any] = quick_identity(location.path) if location.is_local else {"path": first.path}
        identity.update({"bands": list(first.bands), "nodata": first.nodata})
        if first.band_nodata and len(set(map(str, first.band_nodata))) > 1:
            identity["nodata"] = list(first.band_nodata)
        if first.masked:
            identity["mask"] = True
    else:
        urls = [p for p in raster.paths if not Location.of(p).is_local]
        identity = {
            "kind": "stack", "path": raster.name, "paths": list(raster.paths),
            "files": [quick_identity(f) for f in raster.files] + [{"path": u} for u in urls],
            "bands": [list(layer.bands) for layer in raster.layers], "nodata": list(raster.band_nodata),
        }
        if any(layer.masked for layer in raster.layers):
            identity["mask"] = [layer.masked for layer in raster.layers]  # per raster, in stack order
    return SceneInfo(
        shape=raster.shape, bands=raster.bands, dtype=raster.dtype, tile_size=tile, halo=halo,
        nodata=raster.nodata, crs_wkt=raster.crs_wkt, transform=raster.transform, source=identity,
    )


def _with_content(source: dict[str, Any]) -> dict[str, Any]:
    """A source identity with the content hash of every local file it names (one full read of each)."""
    if "files" in source:
        return {**source, "files": [_hashed(f) if "size" in f else f for f in source["files"]]}
    if "size" in source:
        return {**source, **_hashed({k: source[k] for k in _QUICK_KEYS})}
    return source


_QUICK_KEYS = ("path", "size", "mtime_ns", "ctime_ns", "inode")


def _hashed(probed: dict[str, Any]) -> dict[str, Any]:
    """``probed`` (the file's :func:`quick_identity` when it was probed) with its content hash.

    The file's status is taken again after the hash: any write since the probe moves its
    ``ctime``, and then the hash (or what the probe saw) is not of the file that will be read.
    """
    path = probed["path"]
    try:
        digest = content_sha256(path)
        after = quick_identity(path)
    except OSError:
        after = None
    if after != probed:
        raise _changed(path)
    return {**after, "sha256": digest}


def _check_unchanged(source: dict[str, Any]) -> None:
    """Refuse a source whose local files are no longer what the store records, after ingest's last read.

    A file rewritten while its blocks were read (``cp`` over it) leaves a scene read
    partly from each version: the cheap check (one ``stat``) passes where nothing was
    written, else the content is hashed again and decides (a touched file is still fine).
    """
    for identity in source.get("files", [source]):
        if "size" not in identity:
            continue  # a URL or points in memory: nothing here to check again
        try:
            same = unchanged(identity, identity["path"])
        except OSError:  # removed, or no longer readable
            same = False
        if not same:
            raise _changed(identity["path"])


def _changed(path: str) -> InputError:
    return InputError(f"{path}: changed while it was read; run again")


def _same_source(stored: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether a stored source identity is the source as it is now (every file's content included)."""
    if "files" in now:
        same_reading = all(stored.get(k) == now.get(k) for k in ("kind", "paths", "bands", "nodata", "mask"))
        return same_reading and _files_unchanged(stored.get("files"), now["files"])
    if "size" not in now:  # in-memory points (a checksum) or a URL (its path): compared as they are
        return stored == now
    same_reading = all(stored.get(k) == now.get(k) for k in ("bands", "nodata", "mask"))
    return same_reading and unchanged(stored, now["path"])


def _files_unchanged(stored: Any, now: list[dict[str, Any]]) -> bool:
    """Whether the stored identities are of the same files, each unchanged since."""
    if not isinstance(stored, list) or len(stored) != len(now):
        return False
    for was, is_ in zip(stored, now, strict=True):
        if not isinstance(was, dict) or was.get("path") != is_["path"]:
            return False
        if ("size" in is_ and not unchanged(was, is_["path"])) or ("size" not in is_ and was != is_):
            return False
    return True


def _fit_tile(
    tile: tuple[int, int], shape: tuple[int, int], asked: int | tuple[int, int] | list[int]
) -> tuple[int, int]:
    """The tile size a store of ``shape`` gets: clipped to the scene per axis, and not absurdly small."""
    fitted = (min(tile[0], shape[0]), min(tile[1], shape[1]))
    tiles = -(-shape[0] // fitted[0]) * -(-shape[1] // fitted[1])
    if any(t < MIN_TILE for t in fitted) and fitted != shape and tiles > _ANY_TILE_UP_TO:
        shown = asked if isinstance(asked, int) else tuple(asked)
        raise InputError(
            f"tile_size {shown}: tiles smaller than {MIN_TILE} px cost more in overhead than they hold "
            f"({tiles} tiles for a {shape[0]} x {shape[1]} scene); use at least {MIN_TILE}"
        )
    return fitted


def _aligned(tile: tuple[int, int], step: tuple[int, int]) -> tuple[int, int]:
    """``tile`` rounded up to multiples of a strided model's total stride, saying so once."""
    aligned = stride_aligned(tile, step)
    if aligned != tile:
        _notice.warning(
            "tile size %s rounded up to %s: a multiple of the model's total stride %s, to which windows align",
            _shown(tile), _shown(aligned), _shown(step),
        )
    return aligned


def _shown(pair: tuple[int, int]) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]} x {pair[1]}"


def _resolve_halo(halo: int | None, model: Any, client: Any) -> tuple[int, tuple[int, int]]:
    """The halo to store, and the model's total stride ``(rows, cols)`` that tiles must be multiples of."""
    if halo is not None and (isinstance(halo, bool) or not isinstance(halo, int) or halo < 0):
        raise InputError(f"halo: expected an integer >= 0, got {halo!r}")
    if model is None:
        return (DEFAULT_HALO if halo is None else halo), (1, 1)
    if client is not None and isinstance(model, (str, os.PathLike)):
        # A worker reads the model's footprint: this process needs no TensorFlow.
        with model_file(model) as mf:
            footprint = facts_on_worker(client, mf, None).footprint
    else:
        from tilepipe.model.loader import resolve_model  # noqa: PLC0415 - TensorFlow only where no worker can do it
        from tilepipe.model.receptive import footprint_of  # noqa: PLC0415 - as above

        named = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
        footprint = footprint_of(resolve_model(model), name=named)
    need = footprint.halo
    if halo is not None and halo < need:
        raise InputError(f"halo {halo} is less than the {need} pixels the model needs")
    return (need if halo is None else halo), footprint.step


def _write(location: Location, src: _Source, overwrite: bool, progress: bool) -> SceneStore:
    """Reuse a complete store of the same scene, resume an unfinished one, or create one; write
    the blocks it lacks and mark it complete.

    Only ``src.occupied`` blocks (every block where it is None) become tasks and are
    written: the cost follows the data, not the grid.
    """
    info, occupied = src.info, src.occupied
    with store_lock(location, by="ingest"):  # another writer of this store is refused, not raced
        existing, holds = _existing(location, info) if location.exists() else (None, "nothing")
        decision = existing_output(location, overwrite=overwrite, reusable=lambda: existing is not None, holds=holds)
        if decision == "reuse" and existing is not None and existing.attrs.get("complete"):
            return SceneStore.open(location)
        if decision == "reuse":
            # An ingest of this very scene that was stopped: its finished blocks stay.
            remove_partial_writes(location)
            store = SceneStore.open(location, require_complete=False, mode="r+")
            blocks, earlier = store.finished(occupied if store.sparse_index else None)
        else:
            if decision == "replace":
                remove_store(location)
            # Local files: their content hashes are part of what the store records.
            info = replace(info, source=_with_content(info.source))
            store = SceneStore.create(location, info)
            blocks = store.blocks() if occupied is None else [(int(r), int(c)) for r, c in np.argwhere(occupied)]
            earlier = 0
        reported = [earlier]  # values in the cores of the blocks written: before this ingest, then by its tasks

        def count(_task: object, done: BlockDone) -> None:
            reported[0] += done.entries

        try:
            execute(src.tasks(store, blocks), count, client=src.client, name="ingest", progress=progress,
                    unit="block")
            _check_unchanged(store.info.source)  # after the last read, before anything says "complete"
        except Exception:
            remove_store(location)  # a failed ingest leaves nothing behind (a stopped one stays, to resume)
            raise
        written = occupied if store.sparse_index else None
        if written is not None:  # one listing of each index array, no read per block
            left, total = store.missing_blocks(written), reported[0]
        else:
            left, total = store.finished()
        if left:  # every task reported success: a block missing now was lost after its write
            raise StoreError(f"{location}: index block {left[0]} is missing after ingest; ingest again")
        store.mark_complete(written, nnz_total=total)
        return SceneStore.open(location)


def _existing(location: Location, info: SceneInfo) -> tuple[SceneStore | None, str]:
    """The store at ``location`` if this ingest may reuse or resume it; else None and what it holds, in words."""
    try:
        existing = SceneStore.open(location, require_complete=False)
    except WrongStoreKindError as exc:
        if location.is_local and os.path.isfile(location.path):
            return None, "a file, not a tilepipe store"
        return None, f"a tilepipe {exc.found} store" if exc.found else "something that is not a tilepipe store"
    except StoreError as exc:
        return None, f"a scene store that cannot be reused ({str(exc).removeprefix(f'{location}: ')})"
    stored = existing.info
    same = _same_source(stored.source, info.source)
    if same and stored == info:
        return existing, ""
    unfinished = "" if existing.attrs.get("complete") else "an unfinished ingest of "
    subject = "the same source" if same else _other_source(stored.source, info.source)
    if subject.startswith("a scene of"):
        return None, unfinished + subject  # another scene: how its tiling differs says nothing more
    return None, unfinished + subject + " with " + ", ".join(_differences(stored, info, same))


def _honoured(mask: Any) -> str:
    """A recorded ``mask`` in words: a list holds one flag per raster of a stack."""
    flags = mask if isinstance(mask, list) else [bool(mask)]
    if all(flags) or not any(flags):
        return "honoured" if all(flags) else "ignored"
    return "honoured for rasters " + ", ".join(str(i + 1) for i, flag in enumerate(flags) if flag) + " only"


def _other_source(stored: dict[str, Any], now: dict[str, Any]) -> str:
    """How a stored source differs from the one asked for, in words (they are not the same)."""
    path = stored.get("path")
    if path is None or path != now.get("path"):
        return f"a scene of another source ({path or 'points in memory'})"
    if "files" in now and not _files_unchanged(stored.get("files"), now["files"]):
        return f"a scene of {path} as it was before one of its files changed"
    if "size" in now and not unchanged(stored, path):
        return f"a scene of {path} as it was before it changed"
    return "the same file"


def _differences(stored: SceneInfo, asked: SceneInfo, same_source: bool) -> list[str]:
    """What a stored scene has that the one asked for does not, each as ``"halo 2 (asked: 3)"``."""
    def size(v: tuple[int, int]) -> str:
        return f"{v[0]} x {v[1]}"

    pairs: list[tuple[str, Any, Any]] = [
        ("shape", size(stored.shape), size(asked.shape)),
        ("tile size", size(stored.tile_size), size(asked.tile_size)),
        ("halo", stored.halo, asked.halo),
        ("bands", stored.bands, asked.bands),
        ("dtype", stored.dtype, asked.dtype),
        ("nodata", stored.nodata, asked.nodata),
    ]
    if not same_source:
        pairs.append(("bands read", stored.source.get("bands"), asked.source.get("bands")))
        pairs.append(("the raster's mask", _honoured(stored.source.get("mask")), _honoured(asked.source.get("mask"))))
    said = [f"{name} {a} (asked: {b})" for name, a, b in pairs if a != b]
    if stored.crs_wkt != asked.crs_wkt:
        said.append("another CRS")
    if stored.transform != asked.transform:
        said.append(f"transform {list(stored.transform)} (asked: {list(asked.transform)})")
    return said or ["another source identity"]
