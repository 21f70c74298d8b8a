"""A quicklook PNG of one band of a result store, for people who would rather look.

The band is shrunk by an integer factor ``step`` to fit the picture: each shown pixel is
the mean of a ``step`` x ``step`` block of the band (NaN and infinite values left out; a
block with no finite value is transparent). Block means rather than every step-th pixel,
because a sparse detection one pixel wide would vanish between samples. The band is read
one group of whole Zarr chunks at a time, so every chunk is decoded once and memory stays
at about 16 MB plus the picture, whatever the scene size.

The axes carry the scene's map coordinates (x and y in the result's CRS, from its affine
transform, the CRS named in the axis labels); a rotated grid, or one without a transform,
is labelled in pixels. Colours come from a perceptual colour map (viridis by default), and
a band whose values all lie in [0, 1] (a probability map) is shown on that whole scale.

The figure is drawn with matplotlib's object API (``matplotlib.figure.Figure``) rather
than pyplot: it needs no backend switch, so a notebook's backend is left alone, and it
keeps no global state between calls.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tilepipe.errors import InputError, StoreError, TilepipeError
from tilepipe.export._publish import check_output, publish
from tilepipe.export.bands import band_names
from tilepipe.export.geotiff import open_result
from tilepipe.sources.georef import crs_name, wkt_name
from tilepipe.store.result import ResultStore

__all__ = ["DEFAULT_CMAP", "DEFAULT_MAX_SIZE", "MIN_SIZE", "quicklook"]

#: Pixels per read when averaging: about 4 M float32 pixels (16 MB), in whole chunks.
_READ_PIXELS = 1 << 22

#: The figure is laid out in pixels at this resolution (dots per inch).
_DPI = 100

#: Margins around the image in pixels: title on top, coordinates left and below, colour bar right.
_TOP, _BOTTOM, _LEFT = 44, 46, 52
_CBAR_GAP, _CBAR_WIDTH, _CBAR_LABELS = 12, 16, 50
_RIGHT = _CBAR_GAP + _CBAR_WIDTH + _CBAR_LABELS

#: Smallest figure width and colour bar height (pixels), so the title and ticks fit.
_MIN_WIDTH, _MIN_CBAR = 256, 120

#: Small scenes are magnified by a whole factor until the image is about this big (pixels).
_MIN_IMAGE = 256

#: The picture cannot be smaller than this (pixels per side): below it nothing fits.
MIN_SIZE = 256

#: The picture's longest side where none is given (pixels), and its colour map.
DEFAULT_MAX_SIZE, DEFAULT_CMAP = 1024, "viridis"


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where the parts of the picture go, in pixels from the bottom-left corner."""

    step: int  # store pixels per shown pixel, per axis
    zoom: int  # screen pixels per shown pixel, per axis (> 1 for small scenes only)
    sample_shape: tuple[int, int]  # (rows, cols) of the block-mean image
    width: int
    height: int
    image: tuple[int, int, int, int]  # left, bottom, width, height
    colorbar: tuple[int, int, int, int]


def _layout(rows: int, cols: int, max_size: int) -> _Layout:
    """Choose the shrink factor and place image, colour bar and title within ``max_size``."""
    room_w = max_size - _LEFT - _RIGHT
    room_h = max_size - _TOP - _BOTTOM
    step = max(1, math.ceil(cols / room_w), math.ceil(rows / room_h))
    ny, nx = math.ceil(rows / step), math.ceil(cols / step)
    zoom = max(1, min(room_w // nx, room_h // ny, math.ceil(_MIN_IMAGE / max(nx, ny))))
    iw, ih = nx * zoom, ny * zoom
    body_h = max(ih, min(_MIN_CBAR, room_h))
    width = max(_LEFT + iw + _RIGHT, min(_MIN_WIDTH, max_size))
    height = _TOP + body_h + _BOTTOM
    # Centre the image and colour bar in whatever width and height exceed them.
    left = _LEFT + (width - (_LEFT + iw + _RIGHT)) // 2
    image = (left, _BOTTOM + (body_h - ih) // 2, iw, ih)
    colorbar = (left + iw + _CBAR_GAP, _BOTTOM, _CBAR_WIDTH, body_h)
    return _Layout(step, zoom, (ny, nx), width, height, image, colorbar)


def _bin_starts(start: int, stop: int, step: int) -> tuple[int, np.ndarray]:
    """First output bin of ``[start, stop)`` and where each bin begins, relative to start."""
    first = start // step
    edges = np.arange(first * step, stop, step)
    edges[0] = start
    return first, edges - start


def _read_unit(data: Any) -> tuple[int, int]:
    """``(rows, cols)`` of the unit a store reads at once: the shard if sharded, else the chunk."""
    _, rows, cols = data.shape
    unit = getattr(data, "shards", None) or getattr(data, "chunks", None) or (1, rows, cols)
    return int(unit[1]), int(unit[2])


def _block_mean(data: Any, band: int, step: int, *, read_pixels: int = _READ_PIXELS) -> np.ndarray:
    """Mean of each ``step`` x ``step`` block of one band, ignoring non-finite values.

    Parameters
    ----------
    data : zarr array or numpy array
        ``(band, y, x)`` values; ``chunks`` is used where present to read whole chunks.
    band : int
        Zero-based band index.
    step : int
        Block side in pixels.
    read_pixels : int
        About how many pixels to read at once (memory bound: 4 bytes each, as float32).

    Returns
    -------
    numpy.ndarray
        float32, ``(ceil(rows / step), ceil(cols / step))``; NaN where a block has no
        finite value. Edge blocks are averaged over the pixels they have.
    """
    _, rows, cols = data.shape
    ny, nx = math.ceil(rows / step), math.ceil(cols / step)
    sums = np.zeros((ny, nx), dtype=np.float64)
    counts = np.zeros((ny, nx), dtype=np.int64)
    chunk_r, chunk_c = _read_unit(data)
    # Read pieces made of whole chunks, as near to read_pixels as the chunks allow; a
    # piece need not line up with the blocks, since partial blocks are summed into place.
    across = max(1, min(math.ceil(cols / chunk_c), read_pixels // (chunk_r * chunk_c)))
    piece_c = chunk_c * across
    piece_r = chunk_r * max(1, read_pixels // (chunk_r * piece_c))
    for r0 in range(0, rows, piece_r):
        r1 = min(rows, r0 + piece_r)
        first_r, starts_r = _bin_starts(r0, r1, step)
        for c0 in range(0, cols, piece_c):
            c1 = min(cols, c0 + piece_c)
            first_c, starts_c = _bin_starts(c0, c1, step)
            piece = np.asarray(data[band, r0:r1, c0:c1], dtype=np.float32)
            finite = np.isfinite(piece)
            values = np.where(finite, piece, np.float32(0))
            # Sum in float64: a block of millions of float32 values would lose digits.
            s = np.add.reduceat(np.add.reduceat(values, starts_r, axis=0, dtype=np.float64), starts_c, axis=1)
            n = np.add.reduceat(np.add.reduceat(finite, starts_r, axis=0, dtype=np.int64), starts_c, axis=1)
            sums[first_r : first_r + s.shape[0], first_c : first_c + s.shape[1]] += s
            counts[first_r : first_r + n.shape[0], first_c : first_c + n.shape[1]] += n
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(counts > 0, sums / counts, np.nan)
    return mean.astype(np.float32)


def _colour_limits(sample: np.ndarray, vmin: float | None, vmax: float | None) -> tuple[float, float]:
    """Colour limits: the given ones, else 0 and 1 where every finite value lies in [0, 1] (a
    probability map, whose few hot spots percentiles would hide), else the 2nd and 98th
    percentiles of the finite sample."""
    if vmin is not None and vmax is not None and not vmin < vmax:
        raise InputError(f"vmin, vmax: expected vmin < vmax, got vmin={vmin}, vmax={vmax}")
    finite = sample[np.isfinite(sample)]
    if finite.size and finite.min() >= 0 and finite.max() <= 1 and finite.min() < finite.max():
        low, high = 0.0, 1.0
    else:
        low, high = (float(v) for v in np.percentile(finite, [2, 98])) if finite.size else (0.0, 1.0)
    lo = low if vmin is None else float(vmin)
    hi = high if vmax is None else float(vmax)
    if not lo < hi:
        # A constant band, or one given limit beyond the other percentile: widen the range
        # away from what the user gave, so the colour bar still has a span.
        pad = max(abs(lo), abs(hi)) * 0.01 or 0.5
        if vmin is None and vmax is None:
            lo, hi = lo - pad, hi + pad
        elif vmin is None:
            lo = hi - 2 * pad
        else:
            hi = lo + 2 * pad
    return lo, hi


def _parse_band(band: int, count: int) -> int:
    if isinstance(band, bool) or not isinstance(band, (int, np.integer)) or not 0 <= band < count:
        raise InputError(f"band: expected an index from 0 to {count - 1} (zero-based), got {band!r}")
    return int(band)


def _parse_max_size(max_size: int) -> int:
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < MIN_SIZE:
        raise InputError(
            f"max_size: expected an integer of at least {MIN_SIZE} pixels, got {max_size!r}"
        )
    return max_size


def _parse_cmap(cmap: str) -> Any:
    import matplotlib  # noqa: PLC0415 - matplotlib loads only when a quicklook is drawn

    try:
        colormap = matplotlib.colormaps[cmap]
    except (KeyError, ValueError, TypeError) as exc:
        raise InputError(
            f"cmap: expected a matplotlib colour map name such as 'viridis', got {cmap!r}"
        ) from exc
    # NaN (a block with no finite value) shows as fully transparent.
    return colormap.with_extremes(bad=(0.0, 0.0, 0.0, 0.0))


def _title(store: ResultStore, band: int, step: int) -> str:
    name = _cut(store.location.name or store.path)
    bands, rows, cols = store.info.shape
    # The band's name as the GeoTIFF export gives it: recorded in the store, else band_N.
    shown = band_names(store)[band]
    default = f"band_{band + 1}"
    line1 = f"{name}: {default} of {bands}"
    if shown != default:
        line1 = f"{name}: {_cut(shown)} (band {band + 1} of {bands})"
    if not store.complete:
        line1 += " (INCOMPLETE)"
    line2 = f"{rows} x {cols} px" + (f", shown 1:{step} (mean)" if step > 1 else "")
    return f"{line1}\n{line2}"


def _cut(text: str, most: int = 24) -> str:
    """``text`` cut to ``most`` characters for a title line, an ellipsis saying so."""
    return text if len(text) <= most else text[: most - 1].rstrip() + "…"


@dataclass(frozen=True, slots=True)
class _Axes:
    """What the axes show: the image's ``(left, right, bottom, top)`` extent and the axis labels."""

    extent: tuple[float, float, float, float]
    xlabel: str
    ylabel: str


def _axes(store: ResultStore, covered: tuple[int, int]) -> _Axes:
    """Map coordinates from the result's transform and CRS; pixels for a rotated grid or no georeference.

    ``covered`` is ``(rows, cols)`` of store pixels the picture spans: whole blocks of the
    block mean, so an edge block that the scene fills only in part reaches past its edge
    by less than one block.
    """
    rows, cols = covered
    a, b, c, d, e, f = store.info.transform
    wkt = store.info.crs_wkt
    if b != 0 or d != 0 or (wkt is None and (a, e, c, f) == (1.0, 1.0, 0.0, 0.0)):
        return _Axes((0.0, float(cols), float(rows), 0.0), "column (px)", "row (px)")
    extent = (c, c + a * cols, f + e * rows, f)
    if wkt is None:
        return _Axes(extent, "x (no CRS)", "y (no CRS)")
    from rasterio.crs import CRS  # noqa: PLC0415 - with matplotlib, only when a quicklook is drawn

    crs = CRS.from_wkt(wkt)
    name = crs_name(wkt)
    full = wkt_name(wkt)
    shown = f"{name} ({full})" if full and full not in name else name
    if crs.is_geographic:
        return _Axes(extent, f"longitude (°), {shown}", f"latitude (°), {name}")
    unit = {"metre": "m", "meter": "m", "foot": "ft", "US survey foot": "ftUS"}.get(crs.linear_units or "", "")
    unit = f" ({unit or crs.linear_units})" if (unit or crs.linear_units) not in ("", "unknown") else ""
    return _Axes(extent, f"x{unit}, {shown}", f"y{unit}, {name}")


def _ticks(a: float, b: float, pixels: int) -> list[float]:
    """About four round coordinates between ``a`` and ``b``, none within a screen pixel of either end:
    a tick mark on the image's edge would paint over its edge pixels."""
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415 - matplotlib loads only when a quicklook is drawn

    lo, hi = min(a, b), max(a, b)
    margin = (hi - lo) / max(pixels, 1)
    return [float(v) for v in MaxNLocator(nbins=4).tick_values(lo, hi) if lo + margin <= v <= hi - margin]


def _tick(value: float, _pos: object = None) -> str:
    """A coordinate as a tick label: whole thousands-separated numbers where large, else short."""
    return f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:.6g}"


def _render(
    sample: np.ndarray, layout: _Layout, *, colormap: Any, lo: float, hi: float, title: str, path: Path,
    axes: _Axes | None = None,
) -> None:
    """Draw the block-mean image, its colour bar and title, and save them as PNG at ``path``."""
    from matplotlib.figure import Figure  # noqa: PLC0415 - matplotlib loads only when a quicklook is drawn

    fig = Figure(figsize=(layout.width / _DPI, layout.height / _DPI), dpi=_DPI)

    def box(rect: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
        left, bottom, w, h = rect
        return left / layout.width, bottom / layout.height, w / layout.width, h / layout.height

    from matplotlib.ticker import FixedLocator, FuncFormatter  # noqa: PLC0415 - as above

    ax = fig.add_axes(box(layout.image))
    # Nearest neighbour at a whole zoom factor: each shown pixel is exactly zoom² pixels.
    image = ax.imshow(sample, cmap=colormap, vmin=lo, vmax=hi, interpolation="nearest", aspect="auto",
                      extent=None if axes is None else axes.extent)
    if axes is None:
        ax.set_axis_off()
    else:
        ax.set_xlabel(axes.xlabel, fontsize=8, labelpad=2)
        ax.set_ylabel(axes.ylabel, fontsize=8, labelpad=2)
        left, right, bottom, top = axes.extent
        _, _, width, height = layout.image
        for axis, lo_hi, pixels in ((ax.xaxis, (left, right), width), (ax.yaxis, (bottom, top), height)):
            axis.set_major_locator(FixedLocator(_ticks(*lo_hi, pixels)))
            axis.set_major_formatter(FuncFormatter(_tick))
        ax.tick_params(labelsize=7, length=3, pad=1, direction="out")
        for spine in ax.spines.values():
            # No frame, and ticks set 2 points off the image: drawn on its edge they would
            # paint over its edge pixels (anti-aliasing bleeds into them).
            spine.set_visible(False)
            spine.set_position(("outward", 2))
        for label in ax.get_yticklabels():
            label.set_rotation(90)
            label.set_verticalalignment("center")
    finite = sample[np.isfinite(sample)]
    below = bool(finite.size and finite.min() < lo)
    above = bool(finite.size and finite.max() > hi)
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max"}.get((below, above), "both")
    cax = fig.add_axes(box(layout.colorbar))
    fig.colorbar(image, cax=cax, extend=extend)
    cax.tick_params(labelsize=8)
    fig.text(0.5, 1 - 6 / layout.height, title, ha="center", va="top", fontsize=9)
    # transparent=True: the figure and axes backgrounds too, or NaN would show them.
    fig.savefig(path, format="png", dpi=_DPI, transparent=True)


def quicklook(
    result: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    *,
    band: int = 0,
    max_size: int = DEFAULT_MAX_SIZE,
    cmap: str = DEFAULT_CMAP,
    overwrite: bool = False,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Path:
    """Draw one band of a result store as a colour-mapped PNG with map axes, a colour bar and a title.

    The band is shrunk by a whole factor so that the PNG, margins included, is at most
    ``max_size`` pixels on each side; each shown pixel is the mean of the block it stands
    for (non-finite values ignored). Pixels with no finite value are transparent, as is
    the background. Small scenes are magnified by a whole factor so they stay visible.
    An incomplete store is drawn too (unfinished tiles show the store's fill value), and
    the title says INCOMPLETE.

    Memory stays bounded whatever the scene size: one group of chunks (about 16 MB) is
    read at a time, plus the picture (at most ``max_size`` squared pixels).

    Parameters
    ----------
    result : str or os.PathLike
        Path or URL of a tilepipe result store (Zarr v3).
    out_png : str or os.PathLike
        Local path of the PNG to create.
    band : int, default 0
        Zero-based index of the band to draw, titled with the name the GeoTIFF export
        gives it: the one recorded in the store (``record_band_names``, a workflow's
        ``output.band_names``), else ``band_<band + 1>``.
    max_size : int, default 1024
        Largest width and height of the PNG in pixels, at least 256.
    cmap : str, default "viridis"
        A matplotlib colour map name.
    overwrite : bool, default False
        Replace ``out_png`` if it exists.
    vmin, vmax : float, optional
        Band values at the ends of the colour bar, in the band's units. Default: 0 and 1
        where every shown pixel lies in [0, 1] (a probability map), else the 2nd and 98th
        percentiles of the shown pixels, robust to a few extreme values.

    Returns
    -------
    Path
        ``out_png``, now a complete PNG (RGBA): it was reopened and decoded before it was
        moved onto its name.

    Raises
    ------
    StoreError
        The store is missing, not a tilepipe result store, or cannot be read; or the PNG
        cannot be written whole (disk full, ...): then nothing is left at ``out_png``.
    InputError
        ``out_png`` exists and ``overwrite`` is false, or an argument is invalid.
    """
    store = open_result(result)
    store.verify()  # every chunk its record promises is there: an absent one must not read as the fill value
    band = _parse_band(band, store.info.shape[0])
    max_size = _parse_max_size(max_size)
    colormap = _parse_cmap(cmap)
    _, rows, cols = store.info.shape
    layout = _layout(rows, cols, max_size)
    out_path = Path(out_png)
    check_output(out_path, overwrite=overwrite)  # say so before reading the whole band, not after
    try:
        sample = _block_mean(store.data, band, layout.step)
    except Exception as exc:  # zarr and its stores raise many types for a bad chunk
        raise store.read_error(exc, band) from exc  # names the tile whose chunk fails
    lo, hi = _colour_limits(sample, vmin, vmax)
    with publish(out_path, overwrite=overwrite) as partial:
        try:
            title = _title(store, band, layout.step)
            ny, nx = layout.sample_shape
            axes = _axes(store, (ny * layout.step, nx * layout.step))
            _render(sample, layout, colormap=colormap, lo=lo, hi=hi, title=title, path=partial, axes=axes)
            _check_png(partial, layout)
        except TilepipeError:
            raise
        except Exception as exc:  # OSError (disk full, permissions), Pillow's errors for a cut PNG
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else " ".join(str(exc).split())
            raise StoreError(f"{out_path}: cannot write the PNG: {reason or type(exc).__name__}") from exc
    return out_path


def _check_png(path: Path, layout: _Layout) -> None:
    """Prove a just-written PNG whole before it is published: it must reopen, pass its
    checksums to the end chunk, have the layout's size and decode to the last row."""
    from PIL import Image  # noqa: PLC0415 - Pillow loads only when a quicklook is drawn

    with Image.open(path) as image:
        image.verify()  # every chunk's CRC, up to IEND
    with Image.open(path) as image:
        if image.format != "PNG" or image.size != (layout.width, layout.height):
            width, height = image.size
            expected = f"{layout.width} x {layout.height}"
            raise ValueError(f"expected a {expected} PNG, got a {width} x {height} {image.format}")
        image.load()
