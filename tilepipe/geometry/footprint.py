"""What a model needs around each output pixel, where its outputs sit, and how windows align.

A :class:`Footprint` is derived from a model's layers (see
:mod:`tilepipe.model.receptive`) and knows nothing of TensorFlow. Per axis it
holds, in input pixels unless said otherwise:

``step``
    The model's total stride ``S`` (8 for three halvings; 1 for a stride-1
    model). A strided model is equivariant only to shifts by multiples of
    ``S``, and Keras's ``padding="same"`` on a strided layer pads by an amount
    that depends on its input's length: so every window starts at a multiple
    of ``S`` and is a multiple of ``S`` long.
``scale``
    Output pixels per input pixel (1, or 1/8 for an output at 1/8 of the input
    resolution, or 2 for one upsampled past it).
``before``/``after``
    How far a window must reach before and after an output core (measured from
    the core's position in input pixels) so that every core pixel is exact: the
    receptive field, and the reach of the zero padding that ``same`` layers
    insert at a window edge that is not a scene edge. Multiples of ``step``.
``shrink``
    Output length = ``scale * L - shrink`` for a window of ``L`` input pixels
    (``L`` a multiple of ``step``): what ``valid`` layers take away.
``offset``
    Output pixel ``j``'s corner sits at input position ``j / scale + offset``
    (for georeferencing).
``min_length``
    The shortest window the model runs on (TF refuses a ``valid`` layer a
    shorter input than its kernel). A multiple of ``step``.

The reference a tiled run equals is the whole-scene model on the scene padded
with zeros at the bottom and right to a multiple of ``step``, cropped back to
the output pixels that cover the scene. Windows may therefore reach past the
scene, into that padding (which holds zeros), but never past the padded scene.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from math import ceil, floor

from tilepipe.geometry.window import Window

__all__ = ["AxisFootprint", "Footprint", "round_up", "stride_aligned"]


def round_up(value: int, step: int) -> int:
    """``value`` rounded up to a multiple of ``step`` (a length aligned to a model's stride)."""
    return -(-value // step) * step


def stride_aligned(size: tuple[int, int], step: tuple[int, int]) -> tuple[int, int]:
    """A tile size ``(rows, cols)`` rounded up to multiples of a model's total stride ``step``
    (a strided model's windows start at, and are, multiples of it)."""
    return (round_up(size[0], step[0]), round_up(size[1], step[1]))


@dataclass(frozen=True, slots=True)
class AxisFootprint:
    """Footprint along one axis; see the module docstring. Units: input pixels."""

    before: int = 0
    after: int = 0
    shrink: int = 0
    offset: Fraction | int = 0
    step: int = 1
    scale: Fraction | int = 1
    min_length: int = 1

    @property
    def radius(self) -> int:
        """How far from a core a window may reach: the halo a scene store needs along this axis."""
        # A window shorter than min_length is lengthened; its far edge then lies
        # at most min_length - step from the (step-aligned) core.
        return max(self.before, self.after, self.min_length - self.step)

    def padded(self, length: int) -> int:
        """The scene length the reference model runs on: ``length`` rounded up to a multiple of ``step``."""
        return round_up(length, self.step)

    def output_length(self, length: int) -> int:
        """Output pixels for a scene of ``length`` input pixels: those of the padded scene that cover it."""
        return ceil(Fraction(self.scale) * length - self.shrink)

    def span(self, start: int, stop: int, length: int) -> tuple[int, int]:
        """The input window ``[a, b)`` that computes output pixels ``[start, stop)`` of a scene of ``length``.

        Aligned to ``step`` and clipped to the padded scene; lengthened to
        ``min_length`` where clipping left it shorter.
        """
        scale, step = Fraction(self.scale), self.step
        padded = self.padded(length)
        a = floor(start / scale) - self.before
        b = ceil(stop / scale) + self.after
        a = max(0, min(a - a % step, padded - self.min_length))
        b = min(padded, max(round_up(b, step), a + self.min_length))
        return a, b

    def free_span(self, start: int, stop: int) -> tuple[int, int]:
        """:meth:`span` in a scene without ends: the window that nothing clipped. Where ``span`` gives
        the same, the outputs ``[start, stop)`` of a model run on it do not depend on what lies around it."""
        scale, step = Fraction(self.scale), self.step
        a = floor(start / scale) - self.before
        a -= a % step
        return a, max(round_up(ceil(stop / scale) + self.after, step), a + self.min_length)

    def output_span(self, start: int, stop: int) -> tuple[int, int]:
        """The output pixels a model run on input ``[start, stop)`` produces (``start`` aligned to ``step``)."""
        scale = Fraction(self.scale)
        first = start * scale
        return int(first), int(first + (stop - start) * scale - self.shrink)


@dataclass(frozen=True, slots=True)
class Footprint:
    """A model's footprint along rows and columns: ``(row, col)`` order."""

    rows: AxisFootprint = AxisFootprint()
    cols: AxisFootprint = AxisFootprint()

    @property
    def halo(self) -> int:
        """The halo a tile store must hold for this model (pixels, all sides)."""
        return max(self.rows.radius, self.cols.radius)

    @property
    def step(self) -> tuple[int, int]:
        """The total stride ``(rows, cols)``: windows start at, and are, multiples of it."""
        return (self.rows.step, self.cols.step)

    @property
    def scale(self) -> tuple[Fraction, Fraction]:
        """Output pixels per input pixel, ``(rows, cols)``."""
        return (Fraction(self.rows.scale), Fraction(self.cols.scale))

    @property
    def strided(self) -> bool:
        """Whether windows must be aligned (any stride or resampling)."""
        return self.step != (1, 1) or self.scale != (Fraction(1), Fraction(1))

    def describe(self) -> str:
        """A few words, e.g. ``"halo 7 px (rows 7/7, cols 7/7)"``; rows/cols are before/after margins."""
        r, c = self.rows, self.cols
        text = f"halo {self.halo} px (rows {r.before}/{r.after}, cols {c.before}/{c.after})"
        if self.step != (1, 1):
            text += f"; stride {_pair(self.step)} (windows aligned to it)"
        if self.scale != (Fraction(1), Fraction(1)):
            text += f"; output at {_pair(self.scale)} of the input's resolution"
        if r.shrink or c.shrink:
            text += f"; output {-r.shrink:+d} rows, {-c.shrink:+d} cols"
        return text

    def padded_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """The shape the reference model runs on: ``shape`` rounded up to multiples of the stride."""
        return (self.rows.padded(shape[0]), self.cols.padded(shape[1]))

    def output_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """Output raster shape for an input of ``shape = (rows, cols)``."""
        return (self.rows.output_length(shape[0]), self.cols.output_length(shape[1]))

    def input_window(self, out_core: Window, scene_shape: tuple[int, int]) -> Window:
        """The input window that computes ``out_core`` (output pixels) exactly.

        The core's position in input pixels, grown by the footprint, aligned to
        the stride and clipped to the padded scene (it may reach past
        ``scene_shape`` into the padding, which holds zeros). A model run on it
        gives output pixel ``j`` (window-local) for scene output pixel
        ``j + window start * scale``.
        """
        r0, r1 = self.rows.span(out_core.row_start, out_core.row_stop, scene_shape[0])
        c0, c1 = self.cols.span(out_core.col_start, out_core.col_stop, scene_shape[1])
        return Window(r0, r1, c0, c1)

    def free_window(self, out_core: Window) -> Window:
        """:meth:`input_window` in a scene without borders (see :meth:`AxisFootprint.free_span`)."""
        r0, r1 = self.rows.free_span(out_core.row_start, out_core.row_stop)
        c0, c1 = self.cols.free_span(out_core.col_start, out_core.col_stop)
        return Window(r0, r1, c0, c1)

    def output_window(self, in_window: Window) -> Window:
        """The output pixels a model run on ``in_window`` produces (scene output coordinates)."""
        r0, r1 = self.rows.output_span(in_window.row_start, in_window.row_stop)
        c0, c1 = self.cols.output_span(in_window.col_start, in_window.col_stop)
        return Window(r0, r1, c0, c1)


def _pair(values: tuple[int, int] | tuple[Fraction, Fraction]) -> str:
    a, b = values
    return str(a) if a == b else f"{a} x {b}"
