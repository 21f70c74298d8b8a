"""What a model needs around each output pixel, and where its outputs sit.

A :class:`Footprint` is derived from a model's layers (see
:mod:`tilepipe.model.receptive`) and knows nothing of TensorFlow. Per axis it
holds four integers, all in input pixels:

``before``/``after``
    How many input pixels before and after an output pixel's position a tile
    must hold so that the pixel is computed exactly: the receptive field, and
    the reach of zero padding that ``padding="same"`` inserts at a window edge
    that is not a scene edge. ``after`` includes what ``valid`` layers consume.
``shrink``
    How many pixels shorter the output is than the input (``valid`` layers).
``offset``
    Output pixel ``j`` sits at input pixel ``j + offset`` (for georeferencing).
"""

from __future__ import annotations

from dataclasses import dataclass

from tilepipe.geometry.window import Window

__all__ = ["AxisFootprint", "Footprint"]


@dataclass(frozen=True, slots=True)
class AxisFootprint:
    """Footprint along one axis; see the module docstring. Units: input pixels."""

    before: int = 0
    after: int = 0
    shrink: int = 0
    offset: int = 0

    @property
    def radius(self) -> int:
        """The larger of ``before`` and ``after``."""
        return max(self.before, self.after)


@dataclass(frozen=True, slots=True)
class Footprint:
    """A model's footprint along rows and columns: ``(row, col)`` order."""

    rows: AxisFootprint = AxisFootprint()
    cols: AxisFootprint = AxisFootprint()

    @property
    def halo(self) -> int:
        """The halo a tile store must hold for this model (pixels, all sides)."""
        return max(self.rows.radius, self.cols.radius)

    def describe(self) -> str:
        """A few words, e.g. ``"halo 7 px (rows 7/7, cols 7/7)"``; rows/cols are before/after margins."""
        r, c = self.rows, self.cols
        text = f"halo {self.halo} px (rows {r.before}/{r.after}, cols {c.before}/{c.after})"
        if r.shrink or c.shrink:
            text += f"; output {-r.shrink:+d} rows, {-c.shrink:+d} cols"
        return text

    def output_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """Output raster shape for an input of ``shape = (rows, cols)``."""
        return (shape[0] - self.rows.shrink, shape[1] - self.cols.shrink)

    def input_window(self, out_core: Window, scene_shape: tuple[int, int]) -> Window:
        """The input window that computes ``out_core`` (output pixels) exactly.

        The window is the core grown by the footprint and clipped to the scene.
        A model run on that window gives output pixel ``j`` (window-local) for
        scene output pixel ``j + window start``; the core is exact because every
        window edge that is not a scene edge lies at least ``before``/``after``
        pixels away from it.
        """
        r, c = self.rows, self.cols
        return out_core.grow(r.before, r.after, c.before, c.after).clip(*scene_shape)

    def output_window(self, in_window: Window) -> Window:
        """The output pixels a model run on ``in_window`` produces (scene output coordinates)."""
        return Window(
            in_window.row_start,
            in_window.row_stop - self.rows.shrink,
            in_window.col_start,
            in_window.col_stop - self.cols.shrink,
        )
