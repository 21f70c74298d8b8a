"""The tile grid: a scene cut into cores, each grown by a halo into a window."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from tilepipe.geometry.window import Window

__all__ = ["DEFAULT_TILE_SIZE", "Tile", "TileGrid", "parse_tile_size", "tile_name"]

#: Tile core side in pixels where none is given (the API, the CLI and workflow files).
DEFAULT_TILE_SIZE = 1024


def tile_name(row: int, col: int) -> str:
    """``"tile (row R, col C)"``: how every tilepipe message names tile ``(row, col)`` of a grid."""
    return f"tile (row {row}, col {col})"


def parse_tile_size(value: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """Parse a tile size given as one int or ``(rows, cols)`` into ``(rows, cols)``.

    Raises ``ValueError("expected ..., got ...")``; the caller names the value (``tile_size: ...``).
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a tile size as a positive int, got {value!r}")
    if isinstance(value, int):
        pair = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"expected a tile size as a positive int or (rows, cols), got {value!r}")
    if pair[0] <= 0 or pair[1] <= 0:
        raise ValueError(f"expected a tile size > 0, got {value!r}")
    return pair


@dataclass(frozen=True, slots=True)
class Tile:
    """One tile of a :class:`TileGrid`.

    ``core`` is the part of the scene this tile is responsible for; ``window`` is
    the core grown by the halo and clipped to the scene (so edge tiles have
    smaller windows, and edge cores may be smaller than the tile size).
    """

    row: int
    col: int
    core: Window
    window: Window

    @property
    def index(self) -> tuple[int, int]:
        """``(row, col)`` of the tile in the grid."""
        return (self.row, self.col)

    @property
    def name(self) -> str:
        """``"tile (row R, col C)"``, as messages name it (:func:`tile_name`)."""
        return tile_name(self.row, self.col)


@dataclass(frozen=True, slots=True)
class TileGrid:
    """A scene of ``shape = (rows, cols)`` pixels cut into tiles of ``tile_size``.

    Tiles are numbered ``(row, col)`` from the top-left; the last row and column
    of tiles may have smaller cores when the tile size does not divide the scene.
    Every window is its core grown by ``halo`` pixels on each side, clipped to the
    scene: never padded beyond it.
    """

    shape: tuple[int, int]
    tile_size: tuple[int, int]
    halo: int = 0

    def __post_init__(self) -> None:
        if self.shape[0] <= 0 or self.shape[1] <= 0:
            raise ValueError(f"Expected a scene shape > 0. Got {self.shape} instead.")
        parse_tile_size(self.tile_size)
        if self.halo < 0:
            raise ValueError(f"Expected a halo >= 0. Got {self.halo} instead.")

    @property
    def grid_shape(self) -> tuple[int, int]:
        """Number of tiles ``(rows, cols)``."""
        return (-(-self.shape[0] // self.tile_size[0]), -(-self.shape[1] // self.tile_size[1]))

    @property
    def n_tiles(self) -> int:
        """Total number of tiles."""
        rows, cols = self.grid_shape
        return rows * cols

    def core(self, row: int, col: int) -> Window:
        """The core window of tile ``(row, col)``."""
        rows, cols = self.grid_shape
        if not (0 <= row < rows and 0 <= col < cols):
            raise IndexError(f"Expected a tile inside the {rows} x {cols} grid. Got ({row}, {col}) instead.")
        ty, tx = self.tile_size
        return Window(
            row * ty, min((row + 1) * ty, self.shape[0]), col * tx, min((col + 1) * tx, self.shape[1])
        )

    def tile(self, row: int, col: int) -> Tile:
        """Tile ``(row, col)`` with its core and haloed window."""
        core = self.core(row, col)
        h = self.halo
        return Tile(row, col, core, core.grow(h, h, h, h).clip(*self.shape))

    def __iter__(self) -> Iterator[Tile]:
        rows, cols = self.grid_shape
        for r in range(rows):
            for c in range(cols):
                yield self.tile(r, c)

    def tiles_touching(self, window: Window) -> tuple[range, range]:
        """Ranges of tile rows and cols whose cores intersect ``window``."""
        ty, tx = self.tile_size
        rows, cols = self.grid_shape
        r0 = max(window.row_start // ty, 0)
        r1 = min(-(-window.row_stop // ty), rows)
        c0 = max(window.col_start // tx, 0)
        c1 = min(-(-window.col_stop // tx), cols)
        return range(r0, r1), range(c0, c1)
