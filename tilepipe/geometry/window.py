"""Rectangular pixel windows, ``(row, col)`` order throughout."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Window"]


@dataclass(frozen=True, slots=True)
class Window:
    """A half-open pixel rectangle ``[row_start, row_stop) x [col_start, col_stop)``.

    Coordinates are pixels of the scene (or of the result raster), rows first.
    """

    row_start: int
    row_stop: int
    col_start: int
    col_stop: int

    def __post_init__(self) -> None:
        if self.row_stop < self.row_start or self.col_stop < self.col_start:
            raise ValueError(f"Expected a window with stop >= start. Got {self} instead.")

    @property
    def height(self) -> int:
        """Number of rows (pixels)."""
        return self.row_stop - self.row_start

    @property
    def width(self) -> int:
        """Number of columns (pixels)."""
        return self.col_stop - self.col_start

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` in pixels."""
        return (self.height, self.width)

    @property
    def size(self) -> int:
        """Number of pixels."""
        return self.height * self.width

    def grow(self, top: int, bottom: int, left: int, right: int) -> Window:
        """Return the window grown by the given margins (pixels, may be 0)."""
        return Window(
            self.row_start - top,
            self.row_stop + bottom,
            self.col_start - left,
            self.col_stop + right,
        )

    def clip(self, height: int, width: int) -> Window:
        """Return the window clipped to a raster of ``height x width`` pixels."""
        r0 = min(max(self.row_start, 0), height)
        c0 = min(max(self.col_start, 0), width)
        return Window(r0, max(r0, min(self.row_stop, height)), c0, max(c0, min(self.col_stop, width)))

    def relative_to(self, outer: Window) -> Window:
        """Return this window in the coordinates of ``outer`` (which must contain it)."""
        if not outer.contains(self):
            raise ValueError(f"Expected a window inside {outer}. Got {self} instead.")
        return Window(
            self.row_start - outer.row_start,
            self.row_stop - outer.row_start,
            self.col_start - outer.col_start,
            self.col_stop - outer.col_start,
        )

    def contains(self, other: Window) -> bool:
        """Whether ``other`` lies entirely inside this window."""
        return (
            self.row_start <= other.row_start
            and other.row_stop <= self.row_stop
            and self.col_start <= other.col_start
            and other.col_stop <= self.col_stop
        )

    @property
    def slices(self) -> tuple[slice, slice]:
        """``(row_slice, col_slice)`` for numpy indexing."""
        return (slice(self.row_start, self.row_stop), slice(self.col_start, self.col_stop))
