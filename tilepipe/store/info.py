"""What stores say about themselves, without opening one: scene and result metadata, tile status codes.

No zarr, no I/O: :mod:`tilepipe.plan` and anything else that only reasons about stores
import this module; :mod:`tilepipe.store.scene` and :mod:`tilepipe.store.result` read and
write these values (``to_attrs`` / ``from_attrs``) in their Zarr groups.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from tilepipe.errors import StoreError
from tilepipe.geometry import TileGrid, tile_name

__all__ = [
    "FORMAT_VERSION",
    "LEGACY_FORMAT_VERSION",
    "NOT_WRITTEN",
    "STATUS_COMPUTED",
    "STATUS_EMPTY",
    "STATUS_FREE",
    "STATUS_NOT_DONE",
    "ResultInfo",
    "SceneInfo",
    "TileDamage",
    "block_size_for",
    "utc_timestamp",
]

#: The result store format this version writes (one array per band, each with its own fill value;
#: status chunks of free tiles only are not written).
FORMAT_VERSION = 4

#: Index entry of a tile whose block was never written (the ``nnz`` fill value).
NOT_WRITTEN = -1

def utc_timestamp(seconds: float | None = None) -> str:
    """``seconds`` since the epoch (default: now) as ISO 8601, UTC, to the second (``2026-01-01T12:00:00Z``):
    how every record tilepipe writes (a store's provenance, a lock, the watch ledger) says when."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


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

    @property
    def block_grid(self) -> tuple[int, int]:
        """Index chunks (blocks) per side ``(rows, cols)``."""
        (ny, nx), (by, bx) = self.grid.grid_shape, self.block
        return -(-ny // by), -(-nx // bx)

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


#: The result store format with one ``(band, y, x)`` array ``data`` and one fill value (still read).
LEGACY_FORMAT_VERSION = 2

#: Not done yet: nothing of the tile may be read.
STATUS_NOT_DONE = 0
#: Computed by the model; every band's chunk written.
STATUS_COMPUTED = 1
#: Empty (no input in its window), its response to zeros written to every band's chunk.
STATUS_EMPTY = 2
#: Empty, away from every border, its response each band's fill value: recorded, never written.
STATUS_FREE = 3

_STATUS_WORDS = {STATUS_COMPUTED: "computed", STATUS_EMPTY: "empty"}

@dataclass(frozen=True, slots=True)
class TileDamage:
    """A tile whose stored chunks disagree with its recorded status.

    ``problem`` is ``"missing"`` (done and written, but band ``band``'s chunk is
    absent), ``"not done"`` (in a store marked complete), ``"unfinished"`` (not done
    at the end of a run that handed out every tile), ``"stray"`` (recorded free, yet
    band ``band`` has a chunk) or ``"unknown status"``; ``band`` is None where no
    band is concerned.
    """

    row: int
    col: int
    band: int | None
    problem: str
    status: int

    def describe(self) -> str:
        """The problem in words, naming the tile (row, col) and band."""
        tile = tile_name(self.row, self.col)
        if self.problem == "missing":
            return (f"{tile} band {self.band}: its data chunk is missing, though the store records the tile "
                    f"{_STATUS_WORDS.get(self.status, 'done')}")
        if self.problem == "stray":
            return (f"{tile} band {self.band}: holds a data chunk, though the store records the tile free "
                    "(it must read as the band's fill value)")
        if self.problem == "status missing":
            return (f"{tile}: the status chunk that records it (and the tiles after it in its block) is missing, "
                    "though the store lists it")
        if self.problem == "not done":
            return f"{tile}: not done, though the store is marked complete"
        if self.problem == "unfinished":
            return f"{tile}: not done, though the run handed out every tile"
        return f"{tile}: unknown status {self.status}"


@dataclass(frozen=True, slots=True)
class ResultInfo:
    """What a result store says about itself: the one way its attributes are read.

    Attributes
    ----------
    shape : tuple of int
        ``(bands, rows, cols)`` of the output raster, pixels.
    transform : tuple of float
        The six affine coefficients (rasterio order) of the output grid.
    crs_wkt : str or None
        The scene's CRS as WKT.
    tile_size : tuple of int
        ``(rows, cols)`` of a tile core, pixels: the band arrays' chunk.
    identity : dict
        What makes two runs the same run (scene source and tiling, model sha256).
    provenance : dict
        The record of the run that made the store (model, footprint, version, run id, ...).
    complete : bool
        Whether every tile was written and checked.
    report : dict or None
        The last run's report (:meth:`tilepipe.execute.run.RunReport.to_dict`).
    format_version : int
        The store's layout: :data:`FORMAT_VERSION` (one array per band) for a new
        store, :data:`LEGACY_FORMAT_VERSION` for an older one.
    """

    shape: tuple[int, int, int]
    transform: tuple[float, float, float, float, float, float]
    crs_wkt: str | None
    tile_size: tuple[int, int]
    identity: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    complete: bool = False
    report: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION

    @property
    def grid_shape(self) -> tuple[int, int]:
        """Tiles ``(rows, cols)`` over the output raster."""
        return (-(-self.shape[1] // self.tile_size[0]), -(-self.shape[2] // self.tile_size[1]))

    def to_attrs(self) -> dict[str, Any]:
        """JSON-ready ``tilepipe`` attributes."""
        return {
            "format_version": self.format_version,
            "kind": "result",
            "shape": list(self.shape),
            "tile_size": list(self.tile_size),
            "crs_wkt": self.crs_wkt,
            "transform": list(self.transform),
            "complete": self.complete,
            "provenance": {**self.provenance, "identity": self.identity},
            "report": self.report,
        }

    @classmethod
    def from_attrs(cls, d: dict[str, Any], *, path: str = "", chunks: tuple[int, ...] | None = None) -> ResultInfo:
        """Inverse of :meth:`to_attrs`; ``chunks`` of a format 2 store's ``(band, y, x)`` array ``data``
        stand in for a missing tile size.

        Raises :class:`StoreError` naming ``path`` where a value is missing or malformed.
        """
        try:
            shape = tuple(int(v) for v in d["shape"])
            transform = tuple(float(v) for v in d["transform"])[:6]
            tile = d.get("tile_size") or (list(chunks[1:]) if chunks else None)
            tile_size = (int(tile[0]), int(tile[1])) if tile else (shape[1], shape[2])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise StoreError(
                f"{path}: the result store's attributes are malformed ({type(exc).__name__}: {exc})"
            ) from None
        if len(shape) != 3 or len(transform) != 6:
            raise StoreError(
                f"{path}: expected a (bands, rows, cols) shape and six transform coefficients, "
                f"got {d.get('shape')!r} and {d.get('transform')!r}"
            )
        crs_wkt = d.get("crs_wkt")
        if crs_wkt is not None and not isinstance(crs_wkt, str):
            raise StoreError(f"{path}: expected the CRS as a WKT string or null, got {crs_wkt!r}")
        provenance = d.get("provenance")
        provenance = dict(provenance) if isinstance(provenance, dict) else {}
        identity = provenance.pop("identity", None)
        report = d.get("report")
        version = d.get("format_version", FORMAT_VERSION)
        return cls(
            shape=(shape[0], shape[1], shape[2]),
            transform=(transform[0], transform[1], transform[2], transform[3], transform[4], transform[5]),
            crs_wkt=crs_wkt,
            tile_size=tile_size,
            identity=dict(identity) if isinstance(identity, dict) else {},
            provenance=provenance,
            complete=d.get("complete") is True,
            report=report if isinstance(report, dict) else None,
            format_version=version if isinstance(version, int) else FORMAT_VERSION,
        )


