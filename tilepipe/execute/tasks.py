"""The functions Dask workers run. They take descriptions (paths, tile jobs), never arrays or models.

Each returns a small typed outcome for the client to record: the client alone
writes the status and index records that several tasks share a chunk of.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass

import numpy as np

from tilepipe._worker import worker_name
from tilepipe.errors import StoreError
from tilepipe.geometry import Footprint, Tile
from tilepipe.plan import TileJob
from tilepipe.sources.coo import TileBuckets
from tilepipe.sources.geotiff import open_raster
from tilepipe.sources.occupancy import read_held_entries
from tilepipe.sources.stack import RasterStack, read_stack_entries
from tilepipe.store.result import ResultStore
from tilepipe.store.scene import SceneStore

__all__ = ["BatchDone", "BlockDone", "RunSpec", "TileFailed", "ingest_coo_block", "ingest_raster_blocks", "run_tiles"]


@dataclass(frozen=True, slots=True)
class RunSpec:
    """Everything a run task needs besides its tiles. Plain and picklable."""

    scene: str
    result: str
    model_path: str
    model_sha256: str
    footprint: Footprint
    bands: int
    batch_size: int  # tiles per model call; 0: fit the GPU's free memory (or a CPU budget)
    run_id: str  # stores opened for one run are reused by its tasks in a worker


@dataclass(frozen=True, slots=True)
class BatchDone:
    """What one run task did: the tiles it computed and the empty ones it wrote, ``(row, col)`` each."""

    computed: tuple[tuple[int, int], ...]
    empty: tuple[tuple[int, int], ...]
    worker: str
    model_seconds: float
    model_pixels: int = 0  # input pixels the model ran on
    affected_pixels: int = 0  # core pixels whose footprint holds a value


class TileFailed(RuntimeError):
    """A tile of a run task whose input could not be read (a damaged scene chunk, named in the message).

    Deliberately not a :class:`~tilepipe.errors.TilepipeError`: the executor stops a whole
    run at one of those (every task would fail alike), but a damaged tile fails its own
    task only; the others go on, and the run ends incomplete, to be resumed once mended.
    """


@dataclass(frozen=True, slots=True)
class BlockDone:
    """What one ingest task did: values in its tiles' cores (each scene value lies in exactly one core)."""

    entries: int


_LOCK = threading.Lock()
_STORES: dict[tuple[str, str, str], tuple[SceneStore, ResultStore]] = {}


def _stores(spec: RunSpec) -> tuple[SceneStore, ResultStore]:
    """The run's scene and result stores, opened once per worker process and run."""
    key = (spec.scene, spec.result, spec.run_id)
    with _LOCK:
        stores = _STORES.get(key)
        if stores is None:
            stores = (SceneStore.open(spec.scene), ResultStore.open(spec.result))
            _STORES[key] = stores
            while len(_STORES) > 4:
                _STORES.pop(next(iter(_STORES)))
        return stores


def run_tiles(spec: RunSpec, jobs: tuple[TileJob, ...]) -> BatchDone:
    """Compute, trim and write a batch of tiles. Idempotent: a tile run twice writes the same bytes.

    Returns only once every tile's chunks are written: the client records a tile done
    from the returned value alone, so a tile whose write failed is never recorded.
    Raises :class:`TileFailed` where a tile's stored input cannot be read.
    """
    # The client imports this module to submit it; TensorFlow is for the workers alone.
    from tilepipe.execute.compute import compute_tiles, empty_core  # noqa: PLC0415 - keeps TensorFlow out of the client
    from tilepipe.model.cache import worker_model  # noqa: PLC0415 - as above
    from tilepipe.model.runner import auto_batch_size, gpu_free_bytes  # noqa: PLC0415 - as above

    model = worker_model(spec.model_path, spec.model_sha256)
    scene, result = _stores(spec)
    busy, data, empties = [], [], []
    for job in jobs:
        try:
            tile = None if job.empty else scene.read_tile(*job.tile)
        except StoreError as exc:
            raise TileFailed(str(exc)) from None  # unchained: the message names the tile already
        if tile is None:
            empties.append(job)
        else:
            busy.append(job)
            data.append(tile)
    started = time.perf_counter()
    batch_size = spec.batch_size
    if not batch_size and busy:
        largest = max(busy, key=lambda j: j.need.size).need.shape  # a task's tiles may differ in shape
        batch_size = auto_batch_size(largest, model.max_channels, gpu_free_bytes())
    computed = compute_tiles(model, busy, data, spec.bands, footprint=spec.footprint, scene_shape=scene.info.shape,
                             batch_size=batch_size or 1)
    model_seconds = time.perf_counter() - started
    for job, core in zip(busy, computed.cores, strict=True):
        result.write_core(job.out_core, core)
    # Empty tiles of one class and core shape have the same chunks: compressed once, then copied.
    classes: dict[object, list[TileJob]] = {}
    for job in empties:
        classes.setdefault((job.empty_class, job.out_core.shape), []).append(job)
    for members in classes.values():
        first = members[0]
        result.write_core(first.out_core, empty_core(model, first, spec.bands, spec.footprint))
        if len(members) > 1:
            result.copy_tile((first.row, first.col), [(j.row, j.col) for j in members[1:]])
    return BatchDone(
        computed=tuple((j.row, j.col) for j in busy),
        empty=tuple((j.row, j.col) for j in empties),
        worker=worker_name(),
        model_seconds=model_seconds,
        model_pixels=computed.model_pixels,
        affected_pixels=computed.affected_pixels,
    )


def _block_tiles(store: SceneStore, block: tuple[int, int]) -> tuple[range, range]:
    ny, nx = store.info.grid.grid_shape
    by, bx = store.info.block
    return range(block[0] * by, min((block[0] + 1) * by, ny)), range(block[1] * bx, min((block[1] + 1) * bx, nx))


def _core_count(tile: Tile, shape: tuple[int, int, int], flat: np.ndarray) -> int:
    """Entries of a window that lie in the tile's core."""
    core = tile.core.relative_to(tile.window)
    pixel = flat // shape[2]
    r, c = pixel // shape[1], pixel % shape[1]
    inside = (r >= core.row_start) & (r < core.row_stop) & (c >= core.col_start) & (c < core.col_stop)
    return int(np.count_nonzero(inside))


def ingest_raster_blocks(
    source: RasterStack, store_path: str, blocks: tuple[tuple[tuple[int, int], np.ndarray | None], ...]
) -> BlockDone:
    """Read, pack and write the tiles of some blocks, the blocks' index chunks after all their tiles (nothing else).

    ``blocks``: ``(block, occupied)`` pairs, where ``occupied`` holds the block's tiles whose
    windows may hold data (``(rows, cols)`` booleans, from the files' block tables; the
    others are empty without a read) and is None where the files cannot tell (every tile
    is then read whole). Every raster of the stack is opened once per task, and tiles are
    read one window at a time, only the held file blocks of it where the tables are known
    (:func:`~tilepipe.sources.occupancy.read_held_entries`). The task's tile chunks are
    written together (a sparse file's blocks hold a few tiles each: one chunk write costs
    about a millisecond, most of it waiting, so they go at once), then its index chunks.
    Memory: one tile window of the stacked bands, and up to ``_WRITE_AT`` entries read and
    not yet written.
    """
    store = SceneStore.open(store_path, require_complete=False, mode="r+")
    entries = 0
    pending = _Pending(store)
    with contextlib.ExitStack() as opened:
        datasets = [opened.enter_context(open_raster(path)) for path in source.paths]
        for block, occupied in blocks:
            entries += _ingest_raster_block(source, store, datasets, block, occupied, pending)
    pending.flush(last=True)
    return BlockDone(entries)


#: Entries of read tiles held before their chunks are written together (a few tens of MB at most).
_WRITE_AT = 1 << 22


class _Pending:
    """Tiles read and index chunks finished but not written yet; the indices only once every tile is."""

    def __init__(self, store: SceneStore) -> None:
        self.store = store
        self.tiles: list[tuple[int, int, tuple[int, int, int], np.ndarray, np.ndarray]] = []
        self.indices: list[tuple[tuple[int, int], np.ndarray, int]] = []
        self.held = 0

    def add(self, row: int, col: int, shape: tuple[int, int, int], flat: np.ndarray, values: np.ndarray) -> None:
        self.tiles.append((row, col, shape, flat, values))
        self.held += flat.size
        if self.held >= _WRITE_AT:
            self.flush(last=False)

    def flush(self, *, last: bool) -> None:
        """Write the tiles held; with ``last``, then the indices (of blocks whose tiles are all written)."""
        if self.tiles or (last and self.indices):
            self.store.write_tiles(self.tiles, self.indices if last else ())
        self.tiles, self.held = [], 0
        if last:
            self.indices = []


def _ingest_raster_block(
    source: RasterStack, store: SceneStore, datasets: list[object], block: tuple[int, int],
    occupied: np.ndarray | None, pending: _Pending,
) -> int:
    """One block of :func:`ingest_raster_blocks`; returns the values in its tiles' cores."""
    rows, cols = _block_tiles(store, block)
    counts = np.zeros((len(rows), len(cols)), dtype=np.int64)
    grid = store.info.grid
    entries = 0
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            if occupied is not None and not occupied[i, j]:
                continue  # its window meets only blocks the files leave out: no entries
            tile = grid.tile(r, c)
            if occupied is None:
                shape, flat, values = read_stack_entries(source, tile.window, datasets)
            else:
                shape, flat, values = read_held_entries(source, tile.window, datasets)
            pending.add(r, c, shape, flat, values)
            counts[i, j] = flat.size
            entries += _core_count(tile, shape, flat)
    pending.indices.append((block, counts, entries))  # written last: the block is done once it is there
    return entries


def ingest_coo_block(buckets: TileBuckets, store: SceneStore, block: tuple[int, int]) -> BlockDone:
    """Write the tiles of one block from points already sorted by tile (in-process) and its index chunk."""
    rows, cols = _block_tiles(store, block)
    counts = np.zeros((len(rows), len(cols)), dtype=np.int64)
    grid = store.info.grid
    entries = 0
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            shape, flat, values = buckets.window_entries(grid.tile(r, c))
            store.write_tile(r, c, shape, flat, values)
            counts[i, j] = flat.size
            entries += buckets.core_count(r, c)
    store.write_index_block(*block, counts, entries)  # last: the block is done once this is written
    return BlockDone(entries)
