"""Ingest tasks: each writes one block of tiles (one index chunk) and nothing else."""

from __future__ import annotations

import numpy as np

from tilepipe.geometry import Tile
from tilepipe.sources.coo import TileBuckets
from tilepipe.sources.geotiff import GeoTiffSource, _open, read_window_entries
from tilepipe.store.scene import SceneStore

__all__ = ["ingest_coo_block", "ingest_geotiff_block"]


def _core_count(tile: Tile, shape: tuple[int, int, int], flat: np.ndarray) -> int:
    """Entries of a window that lie in the tile's core (each scene entry lies in exactly one core)."""
    core = tile.core.relative_to(tile.window)
    pixel = flat // shape[2]
    r, c = pixel // shape[1], pixel % shape[1]
    inside = (r >= core.row_start) & (r < core.row_stop) & (c >= core.col_start) & (c < core.col_stop)
    return int(np.count_nonzero(inside))


def _block_tiles(store: SceneStore, block: tuple[int, int]) -> tuple[range, range]:
    ny, nx = store.info.grid.grid_shape
    by, bx = store.info.block
    return range(block[0] * by, min((block[0] + 1) * by, ny)), range(block[1] * bx, min((block[1] + 1) * bx, nx))


def ingest_geotiff_block(source: GeoTiffSource, store_path: str, block: tuple[int, int]) -> int:
    """Read, pack and write the tiles of one block; returns the block's non-zero entries (cores only).

    Memory: one tile window at a time.
    """
    store = SceneStore.open(store_path, require_complete=False)
    rows, cols = _block_tiles(store, block)
    counts = np.zeros((len(rows), len(cols)), dtype=np.int64)
    grid = store.info.grid
    entries = 0
    with _open(source.path) as dataset:
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                tile = grid.tile(r, c)
                shape, flat, values = read_window_entries(source, tile.window, dataset)
                store.write_tile(r, c, shape, flat, values)
                counts[i, j] = flat.size
                entries += _core_count(tile, shape, flat)
    store.write_index_block(*block, counts)
    return entries


def ingest_coo_block(buckets: TileBuckets, store: SceneStore, block: tuple[int, int]) -> int:
    """Write the tiles of one block from points already sorted by tile (in-process); returns its entries."""
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
    store.write_index_block(*block, counts)
    return entries
