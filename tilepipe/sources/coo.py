"""Scenes held as coordinates and values (COO), and their assignment to tiles.

A ``tf.SparseTensor`` or plain COO arrays become a :class:`CooScene`; its points
are sorted once by the tile whose core holds them (one ``argsort`` over all
points), after which any tile's haloed window gathers its points from the few
neighbouring core buckets only: never a scan of all points per tile.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from tilepipe.errors import InputError
from tilepipe.geometry import Tile, TileGrid

__all__ = ["CooScene", "TileBuckets", "as_coo", "coo_block_occupancy", "coo_from_arrays", "coo_from_sparse_tensor"]


@dataclass(frozen=True, slots=True)
class CooScene:
    """A sparse scene: entries at ``(rows, cols, bands)`` with ``values``.

    ``shape`` is ``(rows, cols, bands)``; ``ndim`` is 2 when the scene was given
    as ``H x W`` (one implicit band) and 3 for ``H x W x C``.
    """

    shape: tuple[int, int, int]
    rows: np.ndarray
    cols: np.ndarray
    bands: np.ndarray
    values: np.ndarray
    ndim: int = 3

    @property
    def nnz(self) -> int:
        """Number of stored entries."""
        return int(self.values.size)

    def sha256(self) -> str:
        """A checksum of the shape, coordinates and values: the identity of an in-memory scene."""
        digest = hashlib.sha256(str(self.shape).encode())
        for arr in (self.rows, self.cols, self.bands, self.values):
            digest.update(np.ascontiguousarray(arr).tobytes())
        return digest.hexdigest()


def coo_from_arrays(indices: Any, values: Any, shape: Any, *, name: str = "COO input") -> CooScene:
    """Build a :class:`CooScene` from ``indices`` (N x 2 or N x 3), ``values`` (N) and ``shape``.

    Explicit zeros are dropped (they densify to zero anyway); duplicates are
    refused when the tiles are built.
    """
    idx = np.asarray(indices)
    vals = np.asarray(values)
    shp = tuple(int(s) for s in np.asarray(shape).reshape(-1))
    if len(shp) not in (2, 3):
        raise InputError(f"{name}: expected a shape of H x W or H x W x C, got {shp}")
    if any(s <= 0 for s in shp):
        raise InputError(f"{name}: expected a shape with every size > 0, got {shp}")
    if idx.ndim != 2 or idx.shape[1] != len(shp):
        raise InputError(f"{name}: expected indices of shape (N, {len(shp)}), got {idx.shape}")
    if vals.ndim != 1 or vals.shape[0] != idx.shape[0]:
        raise InputError(f"{name}: expected {idx.shape[0]} values, got an array of shape {vals.shape}")
    if vals.dtype.kind not in "biuf":
        raise InputError(f"{name}: expected numeric values, got dtype {vals.dtype}")
    if idx.size and (idx.min() < 0 or np.any(idx.max(axis=0) >= np.asarray(shp))):
        raise InputError(f"{name}: indices fall outside the shape {shp}")
    keep = vals != 0
    if not keep.all():
        idx, vals = idx[keep], vals[keep]
    idx = idx.astype(np.int64, copy=False)
    bands = idx[:, 2] if len(shp) == 3 else np.zeros(idx.shape[0], dtype=np.int64)
    full = (shp[0], shp[1], shp[2] if len(shp) == 3 else 1)
    return CooScene(full, idx[:, 0], idx[:, 1], bands, vals, ndim=len(shp))


def coo_from_sparse_tensor(st: Any, *, name: str = "SparseTensor") -> CooScene:
    """Build a :class:`CooScene` from a 2-D or 3-D ``tf.SparseTensor``."""
    try:
        indices = np.asarray(st.indices)
        values = np.asarray(st.values)
        shape = np.asarray(st.dense_shape)
    except AttributeError as exc:
        raise InputError(f"{name}: expected a tf.SparseTensor, got {type(st).__name__}") from exc
    return coo_from_arrays(indices, values, shape, name=name)


class TileBuckets:
    """The points of a :class:`CooScene` sorted by core tile, for fast window gathers."""

    def __init__(self, scene: CooScene, grid: TileGrid, *, name: str = "input") -> None:
        if grid.shape != scene.shape[:2]:
            raise ValueError(f"Expected a grid of shape {scene.shape[:2]}. Got {grid.shape} instead.")
        self.scene = scene
        self.grid = grid
        self.name = name
        ty, tx = grid.tile_size
        nx = grid.grid_shape[1]
        tile_id = (scene.rows // ty) * nx + (scene.cols // tx)
        self._order = np.argsort(tile_id, kind="stable")
        # Only the tiles that hold points are listed (sorted ids and where each one's points
        # start): the cost follows the points, never the grid (16 million tiles are nothing here).
        self._ids, self._starts = np.unique(tile_id[self._order], return_index=True)
        self._starts = np.append(self._starts, tile_id.size)
        self._nx = nx

    def _span(self, row: int, col: int) -> tuple[int, int]:
        """Where tile ``(row, col)``'s points lie in the sorted order: ``(start, stop)``."""
        i = int(np.searchsorted(self._ids, row * self._nx + col))
        if i == self._ids.size or self._ids[i] != row * self._nx + col:
            return 0, 0
        return int(self._starts[i]), int(self._starts[i + 1])

    def core_count(self, row: int, col: int) -> int:
        """Points whose position lies in the core of tile ``(row, col)``."""
        start, stop = self._span(row, col)
        return stop - start

    def window_entries(self, tile: Tile) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray]:
        """``(shape, flat, values)`` of a tile's window: sorted flat indices, window-local."""
        w = tile.window
        bands = self.scene.shape[2]
        shape = (w.height, w.width, bands)
        rows_r, cols_r = self.grid.tiles_touching(w)
        picks = [self._order[slice(*self._span(r, c))] for r in rows_r for c in cols_r]
        sel = np.concatenate(picks) if picks else np.empty(0, dtype=np.int64)
        s = self.scene
        rr, cc = s.rows[sel], s.cols[sel]
        inside = (rr >= w.row_start) & (rr < w.row_stop) & (cc >= w.col_start) & (cc < w.col_stop)
        sel = sel[inside]
        flat = ((rr[inside] - w.row_start) * w.width + (cc[inside] - w.col_start)) * bands + s.bands[sel]
        order = np.argsort(flat, kind="stable")
        flat = flat[order]
        if flat.size > 1 and np.any(flat[1:] == flat[:-1]):
            raise InputError(f"{self.name}: duplicate coordinates (each pixel and band may appear once)")
        return shape, flat, s.values[sel][order]


def coo_block_occupancy(scene: CooScene, grid: TileGrid, block: tuple[int, int]) -> np.ndarray:
    """The blocks of ``block`` tiles whose tiles' haloed windows hold a point, a bool mask over the block grid.

    Work in proportion to the points (a few array passes), never to the grid. A point at
    ``y`` lies in the windows of tile rows ``(y - halo) // ty`` to ``(y + halo) // ty``.
    """
    (ty, tx), (ny, nx), h = grid.tile_size, grid.grid_shape, grid.halo
    by, bx = block
    mask = np.zeros((-(-ny // by), -(-nx // bx)), bool)
    if scene.nnz == 0:
        return mask
    first_r = np.clip((scene.rows - h) // ty, 0, ny - 1) // by
    last_r = np.clip((scene.rows + h) // ty, 0, ny - 1) // by
    first_c = np.clip((scene.cols - h) // tx, 0, nx - 1) // bx
    last_c = np.clip((scene.cols + h) // tx, 0, nx - 1) // bx
    # Usually a point reaches one or two blocks a side; a halo wider than a block reaches more.
    for dr in range(int((last_r - first_r).max()) + 1):
        for dc in range(int((last_c - first_c).max()) + 1):
            reach = (first_r + dr <= last_r) & (first_c + dc <= last_c)
            mask[first_r[reach] + dr, first_c[reach] + dc] = True
    return mask


def as_coo(source: Any) -> CooScene:
    """A :class:`CooScene` from a ``tf.SparseTensor``, ``(indices, values, shape)`` or a CooScene."""
    if isinstance(source, CooScene):
        return source
    if isinstance(source, tuple) and len(source) == 3:
        return coo_from_arrays(*source)
    if hasattr(source, "indices") and hasattr(source, "dense_shape"):
        return coo_from_sparse_tensor(source)
    raise InputError(
        f"source: expected a raster path, a tf.SparseTensor or (indices, values, shape), got {type(source).__name__}"
    )
