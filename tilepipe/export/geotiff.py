"""Export a finished result store to a tiled GeoTIFF or a Cloud-Optimized GeoTIFF.

The result store is dense Zarr (``data``: float32, ``(band, y, x)``, one chunk per tile
core). The export never holds the raster in memory: it walks the raster in square
windows whose sides are whole multiples of the GeoTIFF block size, so every compressed
GeoTIFF tile is written exactly once (a window that cut a tile would make GDAL rewrite it,
and a rewritten compressed tile leaves dead bytes in the file). Peak memory is one
window (about 16 MB) plus GDAL's block cache, whatever the scene size.

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
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.windows import Window

from tilepipe.errors import InputError, StoreError, TilepipeError
from tilepipe.export._publish import failure_reason, native_stderr, publish
from tilepipe.geometry import Window as CoreWindow
from tilepipe.progress import progress_bar
from tilepipe.store.result import ResultStore

__all__ = ["export_geotiff", "open_result"]

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
    """Open a result store read-only (its attributes checked against its ``data`` array)."""
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
            raise _NotWhole(f"it has {src.count} bands, expected {count}")
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
                            raise _NotWhole(f"tile (row {y}, col {x}) of band {bidx}{where} is missing or cut short")
                r0, c0 = (ny - 1) * block_rows, (nx - 1) * block_cols
                src.read(bidx, window=Window(c0, r0, src.width - c0, src.height - r0))


def _parse_compress(compress: str) -> str:
    value = str(compress).lower()
    if value not in _COMPRESSIONS:
        raise InputError(f"Expected compress to be one of {', '.join(_COMPRESSIONS)}. Got {compress!r} instead.")
    return value


def _parse_blocksize(blocksize: int) -> int:
    # TIFF tiles must be multiples of 16 pixels; beyond 4096 a tile is no longer a tile.
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or not 16 <= blocksize <= 4096:
        raise InputError(f"Expected blocksize to be an integer from 16 to 4096 pixels. Got {blocksize!r} instead.")
    if blocksize % 16:
        raise InputError(f"Expected blocksize to be a multiple of 16 pixels. Got {blocksize} instead.")
    return blocksize


def _parse_bands(bands: Sequence[int] | None, count: int) -> tuple[int, ...]:
    if bands is None:
        return tuple(range(count))
    if isinstance(bands, (str, bytes)):
        raise InputError(f"Expected bands to be a sequence of band indices. Got {bands!r} instead.")
    chosen = tuple(bands)
    if not chosen:
        raise InputError("Expected at least one band index. Got an empty sequence instead.")
    for band in chosen:
        if isinstance(band, bool) or not isinstance(band, (int, np.integer)) or not 0 <= band < count:
            raise InputError(f"Expected band indices from 0 to {count - 1} (zero-based). Got {band!r} instead.")
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


def _write_tiled(
    store: ResultStore, bands: tuple[int, ...], path: Path, compress: str, blocksize: int, progress: bool = False
) -> None:
    """Write the chosen bands to a tiled, compressed, band-interleaved GeoTIFF at ``path``."""
    info = store.info
    _, rows, cols = info.shape
    try:
        crs = CRS.from_wkt(info.crs_wkt) if info.crs_wkt else None
    except Exception as exc:  # rasterio raises CRSError, GDAL may raise others
        raise StoreError(f"{store.path}: the store's CRS is not valid WKT: {exc}") from exc
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": cols,
        "height": rows,
        "count": len(bands),
        "dtype": "float32",
        "crs": crs,
        "transform": Affine(*info.transform),
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
    }
    if compress in _PREDICTED:
        profile["predictor"] = 3
    # Whole blocks per window; see the module docstring for why.
    side = blocksize * max(1, _WINDOW_SIDE // blocksize)
    windows = list(_windows(rows, cols, side))
    bar = progress_bar(len(windows) * len(bands), "export", "window", enabled=progress)
    try:
        with rasterio.open(path, "w", **profile) as dst:
            dst.update_tags(**_provenance_tags(store.attrs["provenance"]))
            for index, band in enumerate(bands, start=1):
                # One-based names, as GDAL counts bands; they name the store's band.
                dst.set_band_description(index, f"band_{band + 1}")
                for window in windows:
                    r0, c0, height, width = window
                    block = _read_window(store, band, window)
                    dst.write(block, index, window=Window(c0, r0, width, height))
                    bar.update(1)
    finally:
        # Closed here on failure too: the stream it writes to may not outlive the export.
        bar.close()


def _to_cog(src: Path, dst: Path, compress: str, blocksize: int, resampling: str) -> None:
    """Copy a GeoTIFF into a Cloud-Optimized GeoTIFF with overviews."""
    options: dict[str, Any] = {
        "compress": compress,
        "blocksize": blocksize,
        "overview_resampling": resampling,
        "bigtiff": "IF_SAFER",
        "num_threads": "ALL_CPUS",
    }
    if compress in _PREDICTED:
        options["predictor"] = "FLOATING_POINT"
    rasterio.shutil.copy(str(src), str(dst), driver="COG", **options)


def _parse_resampling(resampling: str) -> str:
    allowed = ("nearest", "average", "bilinear", "cubic", "mode", "rms")
    value = str(resampling).lower()
    if value not in allowed:
        raise InputError(f"Expected resampling to be one of {', '.join(allowed)}. Got {resampling!r} instead.")
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
    resampling: str = "average",
    progress: bool = False,
) -> Path:
    """Write a finished result store to a float32 GeoTIFF, block by block.

    The GeoTIFF has the store's CRS and affine transform, square tiles of ``blocksize``
    pixels, lossless compression (with the floating-point predictor where the codec uses
    one), band descriptions ``band_1``, ``band_2``, ... naming the store's bands
    (one-based), and the run's provenance as ``TILEPIPE_*`` tags (``TILEPIPE_MODEL_SHA256``,
    ``TILEPIPE_RUN_ID``, ...; nested records are flattened, long values left out). No
    nodata value is set: every pixel of a complete result is a model output, and the
    store's fill value is a real value there (the response of empty tiles).

    Memory stays bounded whatever the scene size: one window of 2048 x 2048 pixels
    (16 MB; one block where blocks are larger) is held at a time, plus GDAL's block cache.

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
    compress : str, default "deflate"
        Lossless codec: "deflate", "lzw", "zstd", "lzma", "lerc" or "none".
    blocksize : int, default 512
        Side of the GeoTIFF's square tiles in pixels, a multiple of 16.
    resampling : str, default "average"
        How COG overviews are computed: "nearest" (use it for class labels), "average",
        "bilinear", "cubic", "mode" or "rms". Ignored without ``cog``.
    progress : bool, default False
        Show a progress bar (one step per window and band).

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
        ``out`` exists and ``overwrite`` is false, is a folder or a device, or an
        argument is invalid.
    """
    compress = _parse_compress(compress)
    blocksize = _parse_blocksize(blocksize)
    resampling = _parse_resampling(resampling)
    store = open_result(result)
    if not store.complete:
        raise StoreError(f"{store.path}: the result is incomplete: its run did not finish; run it again to resume")
    store.verify()  # every chunk its record promises is there: an absent one must not read as the fill value
    chosen = _parse_bands(bands, store.info.shape[0])
    out_path = Path(out)
    with publish(out_path, overwrite=overwrite) as partial:
        native: list[str] = []
        try:
            with native_stderr() as native:
                if cog:
                    tiled = partial.with_name(f"{partial.stem}.tiled.tif")
                    _write_tiled(store, chosen, tiled, compress, blocksize, progress)
                    # Checked before copying: a tile missing here would be copied as zeros.
                    _check_whole(tiled, len(chosen))
                    _to_cog(tiled, partial, compress, blocksize, resampling)
                else:
                    _write_tiled(store, chosen, partial, compress, blocksize, progress)
                _check_whole(partial, len(chosen))
        except TilepipeError:
            raise
        except Exception as exc:  # GDAL errors (RasterioIOError, CPLE_*), OSError (disk full), _NotWhole
            raise StoreError(f"{out_path}: cannot write the GeoTIFF: {failure_reason(exc, native)}") from exc
    return out_path
