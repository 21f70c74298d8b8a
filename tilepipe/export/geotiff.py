"""Export a finished result store to a tiled GeoTIFF or a Cloud-Optimized GeoTIFF.

The result store is dense Zarr: one float32 ``(y, x)`` array per band, one chunk per tile
core (older stores: one ``(band, y, x)`` array), read through :attr:`ResultStore.data` as
``(band, y, x)``. The export never holds the raster in memory: it walks the raster in square
windows whose sides are whole multiples of the GeoTIFF block size, so every compressed
GeoTIFF tile is written exactly once (a window that cut a tile would make GDAL rewrite it,
and a rewritten compressed tile leaves dead bytes in the file). Peak memory is one
window (about 16 MB) plus GDAL's block cache, whatever the scene size.

Sparse results are mostly one constant (the fill value of free tiles). A block that
holds nothing else is not written at all: GDAL fills every never-written block at close,
compressing one such block once and reusing its bytes (see :func:`_write_tiled`), and a
window inside free tiles is not even read (:func:`window_action` decides, per window and
band: left out, filled with the constant, or read). What readers see is unchanged: every
block is in the file, with the exact values, and no nodata value is added to a float result.

Nothing half-written ever sits at the output's name: the file is built in a private
folder beside it and moved onto the name only once it is proven whole. A COG goes
through a second file there: GDAL's COG driver only copies from an existing dataset.

Proven, not assumed: GDAL reports many write failures, a full disk among them, as
messages rather than errors (libtiff prints some straight onto file descriptor 2), and a
tile it failed to write reads back as zeros, not as an error. So after closing, the file
is reopened and every tile of every band and overview must lie inside the file, and the
last tile of each must decode. A folder left by an export that was killed (its owner
process is gone) is removed by the next export to the same name.

Publishing (the private folder, the move, cleaning up after killed exports) lives in
:mod:`tilepipe.export._publish`, shared with the quicklook.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.windows import Window

from tilepipe.errors import InputError, StoreError, TilepipeError
from tilepipe.export._publish import failure_reason, gdal_messages, publish
from tilepipe.export.bands import band_names as stored_band_names
from tilepipe.export.bands import parse_band_names
from tilepipe.export.products import Layout, Product, layout
from tilepipe.geometry import Window as CoreWindow
from tilepipe.geometry import tile_name
from tilepipe.progress import progress_bar
from tilepipe.store.result import STATUS_FREE, ResultStore

__all__ = ["WindowAction", "export_geotiff", "open_result", "window_action"]

#: Side of a read/write window in pixels, rounded down to a multiple of the block size:
#: 2048 x 2048 float32 is 16 MB, large enough that per-call overhead vanishes.
_WINDOW_SIDE = 2048

#: Lossless codecs GDAL applies to float32 in both the GTiff and the COG drivers.
_COMPRESSIONS = ("deflate", "lzw", "zstd", "lzma", "lerc", "none")

#: Codecs that gain from the floating-point predictor (GDAL's PREDICTOR=3).
_PREDICTED = frozenset({"deflate", "lzw", "zstd"})

#: Provenance values longer than this (characters) stay out of the tags: a tag is for
#: identifying a run, not for carrying a per-tile table.
_MAX_TAG_CHARS = 1024


def open_result(result: str | os.PathLike[str]) -> ResultStore:
    """Open a result store read-only (its attributes checked against its band arrays)."""
    return ResultStore.open(result, mode="r")


class _NotWhole(Exception):
    """A written file that reopens but lacks part of its contents."""


def _check_whole(path: Path, count: int) -> None:
    """Prove a just-written GeoTIFF whole, or raise ``_NotWhole`` (or rasterio's error).

    Every tile of every band, at full resolution and in every overview, must have an
    offset and a byte count that lie inside the file (GDAL reads a tile it never wrote
    as zeros, without a word), and the last tile of each, the one written last, must
    decode. Reads only the tile index and one tile per band and level.
    """
    size = path.stat().st_size
    with rasterio.open(path) as src:
        if src.count != count:
            raise _NotWhole(f"expected {count} bands, got {src.count}")
        levels = len(src.overviews(1))
    for level in [None, *range(levels)]:
        where = "" if level is None else f" of overview {level + 1}"
        with rasterio.open(path, overview_level=level) as src:
            block_rows, block_cols = src.block_shapes[0]
            ny, nx = math.ceil(src.height / block_rows), math.ceil(src.width / block_cols)
            for bidx in range(1, count + 1):
                for y in range(ny):
                    for x in range(nx):
                        offset = src.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=bidx)
                        nbytes = src.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=bidx)
                        if not offset or not nbytes or int(offset) + int(nbytes) > size:
                            raise _NotWhole(f"{tile_name(y, x)} of band {bidx}{where} is missing or cut short")
                r0, c0 = (ny - 1) * block_rows, (nx - 1) * block_cols
                src.read(bidx, window=Window(c0, r0, src.width - c0, src.height - r0))


def _parse_compress(compress: str) -> str:
    value = str(compress).lower()
    if value not in _COMPRESSIONS:
        raise InputError(f"compress: expected one of {', '.join(_COMPRESSIONS)}, got {compress!r}")
    return value


def _parse_blocksize(blocksize: int) -> int:
    # TIFF tiles must be multiples of 16 pixels; beyond 4096 a tile is no longer a tile.
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or not 16 <= blocksize <= 4096:
        raise InputError(f"blocksize: expected an integer from 16 to 4096 pixels, got {blocksize!r}")
    if blocksize % 16:
        raise InputError(f"blocksize: expected a multiple of 16 pixels, got {blocksize}")
    return blocksize


def _parse_bands(bands: Sequence[int] | None, count: int) -> tuple[int, ...]:
    if bands is None:
        return tuple(range(count))
    if isinstance(bands, (str, bytes)):
        raise InputError(f"bands: expected a sequence of band indices, got {bands!r}")
    chosen = tuple(bands)
    if not chosen:
        raise InputError("bands: expected at least one band index, got an empty sequence")
    for band in chosen:
        if isinstance(band, bool) or not isinstance(band, (int, np.integer)) or not 0 <= band < count:
            raise InputError(f"bands: expected band indices from 0 to {count - 1} (zero-based), got {band!r}")
    return tuple(int(band) for band in chosen)


def _provenance_tags(provenance: Mapping[str, Any], prefix: str = "TILEPIPE") -> dict[str, str]:
    """Flatten the provenance record into ``TILEPIPE_<KEY>`` GeoTIFF tags."""
    tags: dict[str, str] = {}
    for key, value in provenance.items():
        name = f"{prefix}_{re.sub(r'[^A-Z0-9]+', '_', str(key).upper()).strip('_')}"
        if isinstance(value, Mapping):
            tags.update(_provenance_tags(value, name))
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if len(text) <= _MAX_TAG_CHARS:
            tags[name] = text
    return tags


def _windows(rows: int, cols: int, side: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(row_off, col_off, height, width)`` windows tiling the raster, row-major."""
    for r0 in range(0, rows, side):
        for c0 in range(0, cols, side):
            yield r0, c0, min(side, rows - r0), min(side, cols - c0)


def _read_window(store: ResultStore, band: int, window: tuple[int, int, int, int]) -> np.ndarray:
    """Read one ``(row_off, col_off, height, width)`` window of one band as float32, ``(y, x)``."""
    r0, c0, height, width = window
    try:
        block = store.data[band, r0 : r0 + height, c0 : c0 + width]
    except Exception as exc:  # zarr and its stores raise many types for a bad chunk
        # Names the tile whose chunk fails (its checksum, its decompression).
        raise store.read_error(exc, band, CoreWindow(r0, r0 + height, c0, c0 + width)) from exc
    return np.asarray(block, dtype=np.float32)


def _free_blocks(store: ResultStore, region: CoreWindow, side: int) -> np.ndarray:
    """Which ``side``-pixel blocks of ``region``, ``(block_row, block_col)``, lie wholly in free tiles.

    A free tile (:data:`STATUS_FREE`) is never written and reads as each band's fill
    value; :meth:`ResultStore.verify`, run before every export, proved none of them holds
    a chunk. So such a block is the fill value without being read.
    """
    status = np.asarray(store.status())
    th, tw = store.info.tile_size
    # Prefix sums of the tiles that are not free: one subtraction per block answers "none of them".
    busy = np.zeros((status.shape[0] + 1, status.shape[1] + 1), np.int64)
    busy[1:, 1:] = (status != STATUS_FREE).cumsum(0).cumsum(1)
    r = np.arange(region.row_start, region.row_stop, side)
    c = np.arange(region.col_start, region.col_stop, side)
    r0, r1 = r // th, -(-np.minimum(r + side, region.row_stop) // th)
    c0, c1 = c // tw, -(-np.minimum(c + side, region.col_stop) // tw)
    count = busy[np.ix_(r1, c1)] - busy[np.ix_(r0, c1)] - busy[np.ix_(r1, c0)] + busy[np.ix_(r0, c0)]
    return np.asarray(count == 0)


def region_of(store: ResultStore, *, window: Sequence[int] | None = None,
              bounds: Sequence[float] | None = None) -> CoreWindow:
    """The result pixels to export: the whole result, ``window = (row, col, height, width)`` (result
    pixels), or ``bounds = (minx, miny, maxx, maxy)`` in the result's CRS (every pixel the box
    touches). Raises :class:`InputError` for both, a malformed one, or one outside the result."""
    _, rows, cols = store.info.shape
    whole = CoreWindow(0, rows, 0, cols)
    if window is not None and bounds is not None:
        raise InputError("give a window or bounds, not both")
    if window is not None:
        try:
            row, col, height, width = (int(v) for v in window)
        except (TypeError, ValueError):
            raise InputError(f"window: expected ROW COL HEIGHT WIDTH (four integers), got {window!r}") from None
        if height <= 0 or width <= 0 or row < 0 or col < 0 or row + height > rows or col + width > cols:
            raise InputError(f"window {row} {col} {height} {width}: expected a window inside the result's "
                             f"{rows} x {cols} pixels (row, col, height, width)")
        return CoreWindow(row, row + height, col, col + width)
    if bounds is not None:
        try:
            minx, miny, maxx, maxy = (float(v) for v in bounds)
        except (TypeError, ValueError):
            raise InputError(f"bounds: expected MINX MINY MAXX MAXY (four numbers), got {bounds!r}") from None
        if not (minx < maxx and miny < maxy):
            raise InputError(f"bounds {minx:g} {miny:g} {maxx:g} {maxy:g}: expected MINX < MAXX and MINY < MAXY")
        inverse = ~Affine(*store.info.transform)
        corners = [inverse @ (x, y) for x in (minx, maxx) for y in (miny, maxy)]
        cs, rs = [p[0] for p in corners], [p[1] for p in corners]
        # Every pixel the box touches; a box edge on a pixel edge takes no pixel beyond it.
        r0, r1 = max(math.floor(min(rs) + 1e-9), 0), min(math.ceil(max(rs) - 1e-9), rows)
        c0, c1 = max(math.floor(min(cs) + 1e-9), 0), min(math.ceil(max(cs) - 1e-9), cols)
        if r0 >= r1 or c0 >= c1:
            raise InputError(f"bounds {minx:g} {miny:g} {maxx:g} {maxy:g}: they do not overlap the result "
                             "(give them in the result's CRS)")
        return CoreWindow(r0, r1, c0, c1)
    return whole


#: What the export does with one window of one output band (:func:`window_action`).
WindowAction = Literal["skip", "fill", "read"]


def window_action(free: np.ndarray, window: tuple[int, int, int, int], blocksize: int, *,
                  constant_is_skip: bool) -> WindowAction:
    """Whether one window of one output band is left unwritten, filled with the band's constant or read; pure.

    ``free``: which ``blocksize``-pixel blocks of the exported region lie wholly in free tiles,
    ``(block_row, block_col)`` (:func:`_free_blocks`); ``window``: ``(row_off, col_off, height,
    width)`` in the region, in whole blocks but at its bottom and right edges. A window whose
    blocks are all free holds only the band's constant: ``"skip"`` where that constant is the
    value never-written blocks get (``constant_is_skip``: GDAL fills them at close), else
    ``"fill"`` (written from ``np.full``, nothing read). Any other window is ``"read"`` from the
    store (and its blocks that hold only the skip value are still left out by the writer).
    """
    r0, c0, height, width = window
    rows = slice(r0 // blocksize, -(-(r0 + height) // blocksize))
    cols = slice(c0 // blocksize, -(-(c0 + width) // blocksize))
    if not free[rows, cols].all():
        return "read"
    return "skip" if constant_is_skip else "fill"


def _same_bits(pixels: np.ndarray, value: np.ndarray) -> bool:
    """Whether every pixel has exactly the bits of ``value`` (NaN payloads, -0.0 told apart)."""
    kind = f"u{pixels.dtype.itemsize}"
    return bool(np.all(pixels.view(kind) == value.view(kind)))


def _skip_value(plan: Layout) -> float:
    """The value never-written blocks get: the commonest constant of the output's bands (the first on ties)."""
    constants = [np.asarray(v, plan.dtype).tobytes() for v in plan.constants]
    best = max(range(len(constants)), key=lambda i: (constants.count(constants[i]), -i))
    return plan.constants[best]


def _write_blocks(dst: Any, index: int, pixels: np.ndarray, window: tuple[int, int, int, int], blocksize: int,
                  skip: np.ndarray | None) -> None:
    """Write a window's pixels, ``(y, x)``, leaving out whole blocks that hold only ``skip``."""
    r0, c0, height, width = window
    if skip is None:
        dst.write(pixels, index, window=Window(c0, r0, width, height))
        return
    blocks = [(r, c) for r in range(0, height, blocksize) for c in range(0, width, blocksize)]
    kept = [(r, c) for r, c in blocks if not _same_bits(pixels[r : r + blocksize, c : c + blocksize], skip)]
    if len(kept) == len(blocks):
        dst.write(pixels, index, window=Window(c0, r0, width, height))
        return
    for r, c in kept:
        part = pixels[r : r + blocksize, c : c + blocksize]
        dst.write(part, index, window=Window(c0 + c, r0 + r, part.shape[1], part.shape[0]))


def _write_tiled(
    store: ResultStore, plan: Layout, path: Path, compress: str, blocksize: int, progress: bool = False,
    region: CoreWindow | None = None,
) -> None:
    """Write ``plan``'s bands to a tiled, compressed, band-interleaved GeoTIFF at ``path``.

    Constant blocks cost next to nothing: a block that holds only the skip value (the
    commonest constant of the output's bands, the fill value of a sparse result) is never
    written, so GDAL fills it when the file is closed, with the dataset's nodata value,
    which is the skip value meanwhile: GDAL compresses such a block once and writes its
    bytes for every block left empty (GTiff, ``SPARSE_OK=FALSE``, the default). The
    nodata value is then set to what the product says (none for a float result: the fill
    value is a real value). Blocks of free tiles are not even read (:func:`_free_blocks`).
    """
    info = store.info
    _, all_rows, all_cols = info.shape
    region = region or CoreWindow(0, all_rows, 0, all_cols)
    rows, cols = region.shape
    try:
        crs = CRS.from_wkt(info.crs_wkt) if info.crs_wkt else None
    except Exception as exc:  # rasterio raises CRSError, GDAL may raise others
        raise StoreError(f"{store.path}: the store's CRS is not valid WKT: {exc}") from exc
    skip_value = _skip_value(plan)
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": cols,
        "height": rows,
        "count": len(plan.sources),
        "dtype": plan.dtype,
        "crs": crs,
        "transform": Affine(*info.transform) @ Affine.translation(region.col_start, region.row_start),
        "tiled": True,
        "blockxsize": blocksize,
        "blockysize": blocksize,
        "compress": compress,
        # Band-interleaved, because bands are written one at a time: pixel interleaving
        # would make GDAL decompress and rewrite every tile once per band.
        "interleave": "band",
        # Classic TIFF stops at 4 GB; GDAL switches to BigTIFF only where it may be needed.
        "bigtiff": "IF_SAFER",
        "num_threads": "ALL_CPUS",
        # What GDAL fills never-written blocks with (see above); replaced once the file is closed.
        "nodata": skip_value,
    }
    if compress in _PREDICTED and plan.dtype == "float32":
        profile["predictor"] = 3
    # Whole blocks per window; see the module docstring for why.
    side = blocksize * max(1, _WINDOW_SIDE // blocksize)
    windows = list(_windows(rows, cols, side))
    free = _free_blocks(store, region, blocksize)
    bar = progress_bar(len(windows) * len(plan.sources), "export", "window", enabled=progress)
    try:
        with rasterio.open(path, "w", **profile) as dst:
            dst.update_tags(**_provenance_tags(store.attrs["provenance"]), **plan.tags)
            if plan.colormap is not None:
                dst.write_colormap(1, plan.colormap)
            if plan.scales is not None and plan.offsets is not None:
                dst.scales, dst.offsets = plan.scales, plan.offsets
            bands = zip(plan.sources, plan.transforms, plan.constants, plan.descriptions, strict=True)
            for index, (sources, transform, constant, description) in enumerate(bands, start=1):
                dst.set_band_description(index, description)
                value = np.asarray(constant, plan.dtype)
                skip = value if _same_bits(value, np.asarray(skip_value, plan.dtype)) else None
                for window in windows:
                    action = window_action(free, window, blocksize, constant_is_skip=skip is not None)
                    r0, c0, height, width = window
                    if action == "fill":
                        _write_blocks(dst, index, np.full((height, width), value, plan.dtype), window, blocksize, skip)
                    elif action == "read":
                        there = (r0 + region.row_start, c0 + region.col_start, height, width)
                        pixels = transform(np.stack([_read_window(store, b, there) for b in sources]))
                        _write_blocks(dst, index, pixels, window, blocksize, skip)
                    bar.update(1)
        with rasterio.open(path, "r+") as dst:
            dst.nodata = plan.nodata
    finally:
        # Closed here on failure too: the stream it writes to may not outlive the export.
        bar.close()


def _to_cog(src: Path, dst: Path, compress: str, blocksize: int, resampling: str, floating: bool = True) -> None:
    """Copy a GeoTIFF into a Cloud-Optimized GeoTIFF with overviews."""
    options: dict[str, Any] = {
        "compress": compress,
        "blocksize": blocksize,
        "overview_resampling": resampling,
        "bigtiff": "IF_SAFER",
        "num_threads": "ALL_CPUS",
    }
    if compress in _PREDICTED and floating:
        options["predictor"] = "FLOATING_POINT"
    rasterio.shutil.copy(str(src), str(dst), driver="COG", **options)


def _parse_resampling(resampling: str | None) -> str | None:
    if resampling is None:
        return None
    allowed = ("nearest", "average", "bilinear", "cubic", "mode", "rms")
    value = str(resampling).lower()
    if value not in allowed:
        raise InputError(f"resampling: expected one of {', '.join(allowed)}, got {resampling!r}")
    return value


def export_geotiff(
    result: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    cog: bool = False,
    overwrite: bool = False,
    bands: Sequence[int] | None = None,
    compress: str = "deflate",
    blocksize: int = 512,
    resampling: str | None = None,
    progress: bool = False,
    product: Product | None = None,
    band_names: Sequence[str] | None = None,
    window: Sequence[int] | None = None,
    bounds: Sequence[float] | None = None,
) -> Path:
    """Write a finished result store, or a product of it, to a GeoTIFF, block by block.

    By default the GeoTIFF holds the float32 result itself. With ``product`` it holds what
    that product computes from the exact float values instead (:mod:`tilepipe.export.products`):
    a class map (:class:`~tilepipe.export.products.Classes`), a binary mask
    (:class:`~tilepipe.export.products.Threshold`) or uint8 codes with their scale and
    offset (:class:`~tilepipe.export.products.Scale`); export once per file wanted.

    The GeoTIFF has the store's CRS and affine transform, square tiles of ``blocksize``
    pixels, lossless compression (with the floating-point predictor for float32 where the
    codec uses one), band descriptions naming the store's bands (``band_names``, else the
    names recorded in the store, else ``band_1``, ``band_2``, ... one-based), and the run's
    provenance as ``TILEPIPE_*`` tags (``TILEPIPE_MODEL_SHA256``, ``TILEPIPE_RUN_ID``, ...;
    nested records are flattened, long values left out). The float result has no nodata
    value: every pixel of a complete result is a model output, and the store's fill value is
    a real value there (the response of empty tiles). Products state their own nodata.

    Memory stays bounded whatever the scene size: one window of 2048 x 2048 pixels per
    band read (16 MB each; one block where blocks are larger) at a time, plus GDAL's block
    cache. Blocks that hold one constant (the free tiles of a sparse result) are
    compressed once, not once per block, and blocks of free tiles are not read at all.

    Parameters
    ----------
    result : str or os.PathLike
        Path or URL of a tilepipe result store (Zarr v3).
    out : str or os.PathLike
        Local path of the GeoTIFF to create.
    cog : bool, default False
        Write a Cloud-Optimized GeoTIFF (GDAL's COG driver: overviews down to one block,
        header and overviews first). Needs scratch space beside ``out`` for a second copy.
    overwrite : bool, default False
        Replace ``out`` if it exists. The old file stays in place until the new one is whole.
    bands : sequence of int, optional
        Zero-based indices of the store's bands to export, in output order. Default: all.
        Used by the float result and :class:`~tilepipe.export.products.Scale`.
    compress : str, default "deflate"
        Lossless codec: "deflate", "lzw", "zstd", "lzma", "lerc" or "none".
    blocksize : int, default 512
        Side of the GeoTIFF's square tiles in pixels, a multiple of 16.
    resampling : str, optional
        How COG overviews are computed: "nearest", "average", "bilinear", "cubic", "mode"
        or "rms". Default: "nearest" for class maps and masks, "average" otherwise.
        Ignored without ``cog``.
    progress : bool, default False
        Show a progress bar (one step per window and band).
    product : Classes, Threshold or Scale, optional
        What to write instead of the float result.
    band_names : sequence of str, optional
        One name per band of the store, for band descriptions and class names.
    window : (row, col, height, width), optional
        Export only these result pixels (a continental result is used region by region).
    bounds : (minx, miny, maxx, maxy), optional
        Export only the pixels this box touches, in the result's CRS. The GeoTIFF of a
        ``window`` or ``bounds`` is georeferenced for the region and holds exactly the same
        values as those pixels of the whole export.

    Returns
    -------
    Path
        ``out``, now a complete GeoTIFF: it was reopened and checked tile by tile before
        it was moved onto its name.

    Raises
    ------
    StoreError
        The store is missing, not a tilepipe result store, inconsistent or incomplete
        (its run did not finish), or reading or writing failed (disk full, ...): then
        nothing new is left at ``out``.
    InputError
        ``out`` exists and ``overwrite`` is false, is a folder or a device, an argument is
        invalid, or the product does not fit the result.
    """
    compress = _parse_compress(compress)
    blocksize = _parse_blocksize(blocksize)
    chosen_resampling = _parse_resampling(resampling)
    store = open_result(result)
    if not store.complete:
        raise StoreError(f"{store.path}: the result is incomplete: its run did not finish; run it again to resume")
    store.verify()  # every chunk its record promises is there: an absent one must not read as the fill value
    count = store.info.shape[0]
    try:
        chosen = _parse_bands(bands, count)
        names = parse_band_names(band_names, count) or stored_band_names(store)
        plan = layout(product, chosen, store.fill_values, names)
        region = region_of(store, window=window, bounds=bounds)
    except InputError as exc:  # the bands, names or product do not fit this result: say which result
        raise InputError(f"{store.path}: {exc}") from None
    out_path = Path(out)
    with publish(out_path, overwrite=overwrite) as partial:
        native: list[str] = []
        try:
            with gdal_messages() as native:
                if cog:
                    tiled = partial.with_name(f"{partial.stem}.tiled.tif")
                    _write_tiled(store, plan, tiled, compress, blocksize, progress, region)
                    # Checked before copying: a tile missing here would be copied as zeros.
                    _check_whole(tiled, len(plan.sources))
                    _to_cog(tiled, partial, compress, blocksize, chosen_resampling or plan.resampling,
                            plan.dtype == "float32")
                else:
                    _write_tiled(store, plan, partial, compress, blocksize, progress, region)
                _check_whole(partial, len(plan.sources))
        except InputError as exc:  # a value the product cannot hold (NaN in a scaled product without nodata)
            raise InputError(f"{store.path}: {exc}") from None
        except TilepipeError:
            raise
        except Exception as exc:  # GDAL errors (RasterioIOError, CPLE_*), OSError (disk full), _NotWhole
            raise StoreError(f"{out_path}: cannot write the GeoTIFF: {failure_reason(exc, native)}") from exc
    return out_path
