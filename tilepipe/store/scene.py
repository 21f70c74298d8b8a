"""The scene store: a sparse scene cut into overlapping tiles, in Zarr v3.

Layout, and why
---------------
``zarr.json`` attributes, key ``"tilepipe"``
    Self-description: format version, shape ``(rows, cols)``, bands, dtype,
    nodata, CRS (WKT), affine transform, tile size, halo, the source's identity
    and ``complete`` (false until ingest has written every tile).
``tiles``
    2-D array over the tile grid, one chunk per tile, dtype variable-length
    bytes. Each element is one tile's haloed window packed by
    :mod:`tilepipe.store.codec` (sparse COO, or dense when fuller than half).
    A worker reads one tile with one small read and nothing else; empty tiles
    are never written (the fill value is ``b""``). We chose this over
    fixed-dtype arrays per tile (metadata grows with the tile count: 10^5
    arrays for a large scene) and over one ragged array with an offsets index
    (compact, but parallel writers would share chunks unless written in two
    phases). zarr-python warns that this dtype has no v3 spec yet; the bytes
    inside are our own documented format, so the risk is limited to zarr's
    envelope, which is pinned by the format version.
``nnz``
    2-D int64 index over the tile grid: non-zero entries in each tile's window.
    It says which tiles are empty without reading any tile. One chunk covers a
    block of tiles; an ingest task owns exactly one block, so no two tasks ever
    write the same chunk.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from tilepipe.errors import StoreError
from tilepipe.geometry import TileGrid
from tilepipe.location import Location
from tilepipe.store._zarr import FORMAT_VERSION, create_group, open_group, quiet_vlen, vlen_bytes_dtype
from tilepipe.store.codec import TileData, decode_tile, encode_tile

__all__ = ["SceneInfo", "SceneStore", "block_size_for", "source_identity"]

# Pixels per side that one ingest task (one index chunk) covers: big enough
# that tasks are few, small enough that a task's working set (one tile at a
# time) stays bounded and tasks spread over workers.
_BLOCK_PIXELS = 4096


def block_size_for(tile_size: tuple[int, int], grid_shape: tuple[int, int]) -> tuple[int, int]:
    """Tiles per index chunk ``(rows, cols)``: at most 4096 px a side, and at
    least four blocks a side where the grid allows, so ingest spreads over workers."""
    return tuple(  # type: ignore[return-value]
        max(1, min(_BLOCK_PIXELS // t, -(-n // 4))) for t, n in zip(tile_size, grid_shape, strict=True)
    )


def source_identity(path: str) -> dict[str, Any]:
    """Identity of a source file: path, size in bytes and a sha256.

    Scenes run to terabytes, so the checksum covers the first and last MiB
    plus the size (``sha256_head_tail``): enough to notice a replaced file
    without reading all of it.
    """
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(1 << 20))
        if size > 2 << 20:
            fh.seek(-(1 << 20), os.SEEK_END)
            digest.update(fh.read(1 << 20))
    return {"path": os.path.abspath(path), "size": size, "sha256_head_tail": digest.hexdigest()}


@dataclass(frozen=True, slots=True)
class SceneInfo:
    """What a scene store says about itself. Shapes are ``(rows, cols)``."""

    shape: tuple[int, int]
    bands: int
    dtype: str
    tile_size: tuple[int, int]
    halo: int
    nodata: float | None = None
    crs_wkt: str | None = None
    transform: tuple[float, float, float, float, float, float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    source: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def grid(self) -> TileGrid:
        """The tile grid of the store (windows grown by the stored halo)."""
        return TileGrid(self.shape, self.tile_size, self.halo)

    @property
    def block(self) -> tuple[int, int]:
        """Tiles per index chunk ``(rows, cols)``."""
        return block_size_for(self.tile_size, self.grid.grid_shape)

    def to_attrs(self) -> dict[str, Any]:
        """JSON-ready attributes."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["tile_size"] = list(self.tile_size)
        d["transform"] = list(self.transform)
        return d

    @classmethod
    def from_attrs(cls, d: dict[str, Any]) -> SceneInfo:
        """Inverse of :meth:`to_attrs`."""
        return cls(
            shape=(int(d["shape"][0]), int(d["shape"][1])),
            bands=int(d["bands"]),
            dtype=str(d["dtype"]),
            tile_size=(int(d["tile_size"][0]), int(d["tile_size"][1])),
            halo=int(d["halo"]),
            nodata=None if d.get("nodata") is None else float(d["nodata"]),
            crs_wkt=d.get("crs_wkt"),
            transform=tuple(float(v) for v in d["transform"]),  # type: ignore[arg-type]
            source=dict(d.get("source") or {}),
        )


class SceneStore:
    """A scene store on disk (or at a URL). Cheap to open; nothing is read eagerly."""

    def __init__(self, location: Location, group: zarr.Group, attrs: dict[str, Any]) -> None:
        self.location = location
        self.path = str(location)
        self._group = group
        self._attrs = attrs
        self.info = SceneInfo.from_attrs(attrs)
        self._tiles: Any = None

    # -- creation -----------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike[str] | Location, info: SceneInfo) -> SceneStore:
        """Create an empty, incomplete store at ``path`` (replacing whatever is there)."""
        location = Location.of(path)
        ny, nx = info.grid.grid_shape
        group = create_group(location)
        attrs = {"format_version": FORMAT_VERSION, "kind": "scene", "complete": False, **info.to_attrs()}
        group.attrs["tilepipe"] = attrs
        with quiet_vlen():
            group.create_array(
                "tiles",
                shape=(ny, nx),
                chunks=(1, 1),
                dtype=vlen_bytes_dtype(),
                compressors=[ZstdCodec(level=3)],
                dimension_names=("tile_row", "tile_col"),
            )
        group.create_array(
            "nnz",
            shape=(ny, nx),
            chunks=info.block,
            dtype="int64",
            fill_value=0,
            dimension_names=("tile_row", "tile_col"),
        )
        return cls(location, group, attrs)

    @classmethod
    def open(
        cls, path: str | os.PathLike[str] | Location, *, require_complete: bool = True, mode: str = "r"
    ) -> SceneStore:
        """Open an existing scene store (``mode="r+"`` to write tiles); refuse one whose ingest did not finish."""
        location = Location.of(path)
        group, attrs = open_group(location, mode, kind="scene")
        if require_complete and not attrs.get("complete"):
            raise StoreError(f"{location}: the scene store is incomplete (its ingest did not finish); ingest again")
        return cls(location, group, attrs)

    def mark_complete(self, **extra: Any) -> None:
        """Record that every tile is written (the last step of an ingest)."""
        attrs = dict(self._group.attrs["tilepipe"])  # type: ignore[arg-type]
        attrs.update(extra)
        attrs["complete"] = True
        self._group.attrs["tilepipe"] = attrs
        self._attrs = attrs

    @property
    def attrs(self) -> dict[str, Any]:
        """The store's ``tilepipe`` attributes."""
        return dict(self._attrs)

    # -- tiles --------------------------------------------------------------
    def _tile_array(self) -> Any:
        if self._tiles is None:
            with quiet_vlen():
                self._tiles = self._group["tiles"]
        assert self._tiles is not None
        return self._tiles

    def write_tile(self, row: int, col: int, shape: tuple[int, int, int], flat: np.ndarray, values: np.ndarray) -> None:
        """Write one tile's entries (sorted flat window indices, values); empty tiles are skipped."""
        if flat.size == 0:
            return
        cell = np.empty((1, 1), dtype=object)
        cell[0, 0] = encode_tile(shape, flat, values.astype(self.info.dtype, copy=False))
        self._tile_array()[row : row + 1, col : col + 1] = cell

    def read_tile(self, row: int, col: int) -> TileData | None:
        """One tile's window values, or None if the tile is empty."""
        blob = self._tile_array()[row : row + 1, col : col + 1][0, 0]
        if not blob:
            return None
        return decode_tile(bytes(blob), self.info.dtype)

    def write_index_block(self, block_row: int, block_col: int, counts: np.ndarray) -> None:
        """Write the non-zero counts of one block of tiles (exactly one index chunk)."""
        by, bx = self.info.block
        r0, c0 = block_row * by, block_col * bx
        self._group["nnz"][r0 : r0 + counts.shape[0], c0 : c0 + counts.shape[1]] = counts  # type: ignore[index]

    def index(self) -> np.ndarray:
        """Non-zero entries per tile window, ``(tile_rows, tile_cols)`` int64."""
        return np.asarray(self._group["nnz"][...])  # type: ignore[index]

    def blocks(self) -> list[tuple[int, int]]:
        """``(block_row, block_col)`` of every index chunk."""
        ny, nx = self.info.grid.grid_shape
        by, bx = self.info.block
        return [(r, c) for r in range(-(-ny // by)) for c in range(-(-nx // bx))]
