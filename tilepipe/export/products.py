"""Products derived from a result's exact float values: class maps, masks, scaled bytes.

Each product is a small frozen value saying what a user asked for; :func:`layout` turns
it, with the store's band count, fill values and band names, into a :class:`Layout`: the
output's pixel type, bands, nodata, metadata, and one pure function per output band that
maps a window of the float result, ``(band, y, x)``, to the product's pixels, ``(y, x)``.
Nothing here reads or writes a file: :mod:`tilepipe.export.geotiff` does, window by window.

What each product holds, and its nodata
---------------------------------------
:class:`Classes`
    ``argmax`` over every band of the result (ties go to the lower band, as numpy's
    ``argmax``): uint8 for up to 255 classes, uint16 beyond, the top value (255 or
    65535) left for nodata: a pixel where any band is NaN. A colour table (nodata
    transparent) and the class names (``CLASS_NAMES``, JSON) go into the GeoTIFF.
:class:`Threshold`
    uint8 ``1`` where the chosen band is ``> value``, ``0`` where it is not; ``255``
    (nodata) where it is NaN.
:class:`Scale`
    Every band as uint8 codes, ``float = code * scale + offset``, with ``scale`` and
    ``offset`` recorded in the GeoTIFF (rasterio's ``scales`` / ``offsets``), so readers
    that honour them get floats back, within half a step (``(max - min) / 255 / 2`` with
    all 256 codes used). Values outside ``[min, max]`` are clipped. ``nodata`` ``None``
    (the default) uses all 256 codes and refuses a result holding NaN; ``0`` or ``255``
    reserves that code for NaN and spreads ``[min, max]`` over the other 255.
"""

from __future__ import annotations

import colorsys
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tilepipe.errors import InputError

__all__ = ["Classes", "Layout", "Product", "Scale", "Threshold", "layout"]

#: A qualitative palette (Tableau 20 order) for class maps; further classes get spread hues.
_PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
)


@dataclass(frozen=True, slots=True)
class Classes:
    """A class map: the index of the largest band at every pixel.

    ``names`` (one per band; default: the result's band names) and ``colors`` (one
    ``(r, g, b)`` of 0-255 per band; default: a qualitative palette) label the classes.
    """

    names: tuple[str, ...] | None = None
    colors: tuple[tuple[int, int, int], ...] | None = None


@dataclass(frozen=True, slots=True)
class Threshold:
    """A binary mask: band ``band`` (zero-based; may be left out for a one-band result) ``> value``."""

    value: float
    band: int | None = None


@dataclass(frozen=True, slots=True)
class Scale:
    """Every band as uint8 codes spanning ``[min, max]``; ``nodata``: None, 0 or 255 (see the module)."""

    min: float = 0.0
    max: float = 1.0
    nodata: int | None = None


Product = Classes | Threshold | Scale

#: Maps a ``(band, y, x)`` float32 window of the bands an output band reads to its ``(y, x)`` pixels.
Transform = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, slots=True)
class Layout:
    """What one output file holds, band by band.

    ``sources[i]`` are the zero-based result bands output band ``i`` is computed from,
    ``transforms[i]`` the function that computes it, ``constants[i]`` what it holds where
    every source band holds its fill value (the free tiles of a sparse result).
    """

    dtype: str
    sources: tuple[tuple[int, ...], ...]
    transforms: tuple[Transform, ...]
    constants: tuple[float, ...]
    descriptions: tuple[str, ...]
    nodata: float | None = None
    tags: dict[str, str] = field(default_factory=dict)
    colormap: dict[int, tuple[int, int, int, int]] | None = None
    scales: tuple[float, ...] | None = None
    offsets: tuple[float, ...] | None = None
    resampling: str = "average"


def _constant(transform: Transform, fills: Sequence[float], sources: tuple[int, ...]) -> float:
    pixel = np.array([fills[b] for b in sources], np.float32).reshape(len(sources), 1, 1)
    return float(transform(pixel)[0, 0])


def _identity(window: np.ndarray) -> np.ndarray:
    return window[0]


def _float_layout(bands: tuple[int, ...], fills: Sequence[float], names: Sequence[str]) -> Layout:
    sources = tuple((b,) for b in bands)
    return Layout("float32", sources, (_identity,) * len(bands),
                  tuple(_constant(_identity, fills, s) for s in sources), tuple(names[b] for b in bands))


def _argmax(nodata: int, dtype: type[np.integer]) -> Transform:
    def transform(window: np.ndarray) -> np.ndarray:
        out = np.argmax(window, axis=0).astype(dtype)
        out[np.isnan(window).any(axis=0)] = nodata
        return out

    return transform


def _colour(index: int) -> tuple[int, int, int]:
    if index < len(_PALETTE):
        return _PALETTE[index]
    r, g, b = colorsys.hsv_to_rgb((index * 0.618033988749895) % 1.0, 0.65, 0.9)
    return (round(r * 255), round(g * 255), round(b * 255))


def _classes_layout(product: Classes, count: int, fills: Sequence[float], names: Sequence[str]) -> Layout:
    if count < 2:
        raise InputError(f"classes: expected a result with at least 2 bands for a class map, got {count} band")
    classes = tuple(product.names) if product.names is not None else tuple(names)
    if len(classes) != count:
        raise InputError(f"classes: expected {count} class names, one per band, got {len(classes)}")
    colours = tuple(product.colors) if product.colors is not None else tuple(_colour(i) for i in range(count))
    if len(colours) != count:
        raise InputError(f"classes: expected {count} class colours, one per band, got {len(colours)}")
    small = count <= 255
    nodata = 255 if small else 65535
    transform = _argmax(nodata, np.uint8 if small else np.uint16)
    sources = (tuple(range(count)),)
    colormap = {i: (*colour, 255) for i, colour in enumerate(colours)}
    colormap[nodata] = (0, 0, 0, 0)
    return Layout(
        "uint8" if small else "uint16", sources, (transform,), (_constant(transform, fills, sources[0]),),
        ("class",), nodata=nodata, colormap=colormap, resampling="nearest",
        tags={"CLASS_NAMES": json.dumps(classes), "CLASS_NODATA": str(nodata)},
    )


def _pick_band(band: int | None, count: int, what: str) -> int:
    if band is None:
        if count != 1:
            raise InputError(f"{what}: expected the band of a {what} (zero-based, 0 to {count - 1}) for a result of "
                             f"{count} bands, got none")
        return 0
    if not 0 <= band < count:
        raise InputError(f"{what}: expected the band of a {what} to be from 0 to {count - 1} (zero-based), "
                         f"got {band}")
    return band


def _threshold_layout(product: Threshold, count: int, fills: Sequence[float], names: Sequence[str]) -> Layout:
    band = _pick_band(product.band, count, "threshold")
    value = np.float32(product.value)
    if not math.isfinite(float(value)):
        raise InputError(f"threshold: expected a finite threshold value, got {product.value!r}")

    def transform(window: np.ndarray) -> np.ndarray:
        out = (window[0] > value).astype(np.uint8)
        out[np.isnan(window[0])] = 255
        return out

    sources = ((band,),)
    return Layout("uint8", sources, (transform,), (_constant(transform, fills, sources[0]),),
                  (f"{names[band]} > {float(value):g}",), nodata=255, resampling="nearest",
                  tags={"THRESHOLD_BAND": names[band], "THRESHOLD_VALUE": repr(float(value))})


def scale_codes(product: Scale) -> tuple[int, int, float, float]:
    """``(lowest code, highest code, scale, offset)`` of a scaled product: ``float = code * scale + offset``."""
    low = 1 if product.nodata == 0 else 0
    high = 254 if product.nodata == 255 else 255
    step = (product.max - product.min) / (high - low)
    return low, high, step, product.min - low * step


def _scale_layout(product: Scale, bands: tuple[int, ...], fills: Sequence[float], names: Sequence[str]) -> Layout:
    if product.nodata not in (None, 0, 255):
        raise InputError(f"scale: expected the scaled product's nodata to be 0, 255 or None, got {product.nodata!r}")
    if not (math.isfinite(product.min) and math.isfinite(product.max) and product.min < product.max):
        raise InputError(f"scale: expected a scale range with finite min < max, got [{product.min}, {product.max}]")
    low, high, step, offset = scale_codes(product)
    nodata = product.nodata

    def transform(window: np.ndarray) -> np.ndarray:
        values = window[0].astype(np.float64)
        nan = np.isnan(values)
        if nodata is None and nan.any():
            raise InputError("the result holds NaN, which a scaled product without nodata cannot hold; "
                             "give it nodata 0 or 255 (nodata, --scale-nodata or output.scale.nodata)")
        codes = np.clip(np.rint((values - offset) / step), low, high)
        codes[nan] = 0 if nodata is None else nodata
        return codes.astype(np.uint8)

    sources = tuple((b,) for b in bands)
    return Layout("uint8", sources, (transform,) * len(bands), tuple(_constant(transform, fills, s) for s in sources),
                  tuple(names[b] for b in bands), nodata=None if nodata is None else float(nodata),
                  scales=(step,) * len(bands), offsets=(offset,) * len(bands))


def layout(product: Product | None, bands: tuple[int, ...], fills: Sequence[float], names: Sequence[str]) -> Layout:
    """The :class:`Layout` of ``product`` (None: the float result itself) over a result's bands.

    ``bands`` are the zero-based result bands chosen for a float or scaled export (a class
    map reads every band, a threshold its own); ``fills`` and ``names`` hold one entry per
    band of the result.

    Raises
    ------
    InputError
        The product does not fit the result (a class map of one band, a threshold band
        out of range, names or colours of the wrong count, an empty scale range).
    """
    count = len(fills)
    if product is None:
        return _float_layout(bands, fills, names)
    if isinstance(product, Classes):
        return _classes_layout(product, count, fills, names)
    if isinstance(product, Threshold):
        return _threshold_layout(product, count, fills, names)
    return _scale_layout(product, bands, fills, names)
