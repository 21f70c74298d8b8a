"""Export a finished result store to a tiled GeoTIFF or a Cloud-Optimized GeoTIFF.

The result store is dense Zarr (``data``: float32, ``(band, y, x)``, one chunk per tile
core). The export never holds the raster in memory: it walks the raster in square
windows whose sides are whole multiples of the GeoTIFF block size, so every compressed
GeoTIFF tile is written exactly once (a window that cut a tile would make GDAL rewrite it,
and a rewritten compressed tile leaves dead bytes in the file). Peak memory is one
window (about 16 MB) plus GDAL's block cache, whatever the scene size.

Nothing half-written ever sits at the output's name: the file is built in a private
folder beside it and moved onto the name only when it is whole. A COG goes through a
second file there: GDAL's COG driver only copies from an existing dataset.

This module also holds the small helpers :mod:`tilepipe.export.quicklook` shares
(opening a result store, publishing a file atomically).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from tilepipe.errors import InputError, StoreError, TilepipeError
from tilepipe.store._zarr import open_group

__all__ = ["export_geotiff"]

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


@dataclass(frozen=True, slots=True)
class ResultInfo:
    """What an export needs to know about an opened result store.

    Attributes
    ----------
    path : str
        The store's path or URL, as the user gave it (for messages).
    data : zarr.Array
        The ``data`` zarr array, float32, axes ``(band, y, x)``.
    shape : tuple of int
        ``(bands, rows, cols)`` in pixels.
    crs_wkt : str or None
        The scene's CRS as WKT, or None where the scene had none.
    transform : tuple of float
        The first six coefficients of the pixel-to-CRS affine transform (rasterio order).
    complete : bool
        Whether the run that wrote the store finished every tile.
    provenance : dict
        The run's provenance record (model sha256, run id, ...), possibly empty.
    """

    path: str
    data: zarr.Array[Any]
    shape: tuple[int, int, int]
    crs_wkt: str | None
    transform: tuple[float, float, float, float, float, float]
    complete: bool
    provenance: dict[str, Any]


def open_result(result: str | os.PathLike[str]) -> ResultInfo:
    """Open a result store read-only and check that it is consistent.

    Parameters
    ----------
    result : str or os.PathLike
        Path or URL of the result store (a Zarr v3 group).

    Returns
    -------
    ResultInfo
        The store's ``data`` array and georeferencing.

    Raises
    ------
    StoreError
        The store is missing, is not a tilepipe result store, or its attributes disagree
        with its ``data`` array. Completeness is not checked here: callers decide.
    """
    path = os.fspath(result)
    group, attrs = open_group(path, "r", kind="result")
    data = group.get("data")
    if not isinstance(data, zarr.Array):
        raise StoreError(f"{path}: the result store has no 'data' array")
    shape = tuple(int(n) for n in data.shape)
    if len(shape) != 3 or attrs.get("shape") is None or list(shape) != list(attrs["shape"]):
        raise StoreError(
            f"{path}: 'data' has shape {shape}, but the store says {attrs.get('shape')} (expected (bands, rows, cols))"
        )
    if np.dtype(data.dtype) != np.float32:
        raise StoreError(f"{path}: 'data' holds {data.dtype}, expected float32")
    transform = attrs.get("transform")
    if not isinstance(transform, list) or len(transform) < 6:
        raise StoreError(f"{path}: expected an affine transform of six numbers, got {transform!r}")
    crs_wkt = attrs.get("crs_wkt")
    if crs_wkt is not None and not isinstance(crs_wkt, str):
        raise StoreError(f"{path}: expected the CRS as a WKT string or null, got {crs_wkt!r}")
    provenance = attrs.get("provenance")
    return ResultInfo(
        path=path,
        data=data,
        shape=(shape[0], shape[1], shape[2]),
        crs_wkt=crs_wkt,
        transform=(
            float(transform[0]),
            float(transform[1]),
            float(transform[2]),
            float(transform[3]),
            float(transform[4]),
            float(transform[5]),
        ),
        complete=attrs.get("complete") is True,
        provenance=provenance if isinstance(provenance, dict) else {},
    )


@contextlib.contextmanager
def publish(out: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a private path to write to; move it onto ``out`` only if the block succeeds.

    The private path lies in a hidden folder beside ``out`` (same file system, so the
    final move is an atomic rename). On any failure, interrupts included, the folder and
    everything GDAL may have put in it (sidecars, COG temporaries) are deleted, and an
    existing ``out`` is left as it was.

    Parameters
    ----------
    out : Path
        The file to create.
    overwrite : bool
        Whether an existing ``out`` may be replaced.

    Raises
    ------
    InputError
        ``out`` exists and ``overwrite`` is false, ``out`` is a folder, or its folder
        does not exist.
    StoreError
        The folder cannot be written to.
    """
    if out.is_dir():
        raise InputError(f"{out}: is a folder, expected a file name")
    if out.exists() and not overwrite:
        raise InputError(f"{out}: already exists; pass overwrite=True (--overwrite) to replace it")
    parent = out.parent
    if not parent.is_dir():
        raise InputError(f"{out}: the folder {parent} does not exist")
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=parent))
    except OSError as exc:
        raise StoreError(f"{out}: cannot write in {parent}: {exc.strerror or exc}") from exc
    try:
        partial = staging / out.name
        yield partial
        if not partial.is_file():
            raise StoreError(f"{out}: nothing was written")
        if overwrite:
            os.replace(partial, out)
        else:
            _move_without_clobbering(partial, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_without_clobbering(src: Path, dst: Path) -> None:
    # A hard link fails if dst appeared while we were writing (another export racing us),
    # where a rename would silently replace it.
    try:
        os.link(src, dst)
    except FileExistsError as exc:
        raise InputError(f"{dst}: already exists; pass overwrite=True (--overwrite) to replace it") from exc
    except OSError:
        # File systems without hard links: a check then a rename is the best there is.
        if dst.exists():
            raise InputError(f"{dst}: already exists; pass overwrite=True (--overwrite) to replace it") from None
        os.replace(src, dst)


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


def _read_window(info: ResultInfo, band: int, window: tuple[int, int, int, int]) -> np.ndarray:
    """Read one ``(row_off, col_off, height, width)`` window of one band as float32, ``(y, x)``."""
    r0, c0, height, width = window
    try:
        block = info.data[band, r0 : r0 + height, c0 : c0 + width]
    except Exception as exc:  # zarr and its stores raise many types for a bad chunk
        raise StoreError(
            f"{info.path}: cannot read band {band}, rows {r0}..{r0 + height}, cols {c0}..{c0 + width}: {exc}"
        ) from exc
    return np.asarray(block, dtype=np.float32)


def _write_tiled(
    info: ResultInfo, bands: tuple[int, ...], path: Path, compress: str, blocksize: int, progress: bool = False
) -> None:
    """Write the chosen bands to a tiled, compressed, band-interleaved GeoTIFF at ``path``."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import Affine
    from rasterio.windows import Window

    _, rows, cols = info.shape
    try:
        crs = CRS.from_wkt(info.crs_wkt) if info.crs_wkt else None
    except Exception as exc:  # rasterio raises CRSError, GDAL may raise others
        raise StoreError(f"{info.path}: the store's CRS is not valid WKT: {exc}") from exc
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
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(windows) * len(bands), desc="export", unit="window")
    with rasterio.open(path, "w", **profile) as dst:
        dst.update_tags(**_provenance_tags(info.provenance))
        for index, band in enumerate(bands, start=1):
            # One-based names, as GDAL counts bands; they name the store's band.
            dst.set_band_description(index, f"band_{band + 1}")
            for window in windows:
                r0, c0, height, width = window
                block = _read_window(info, band, window)
                dst.write(block, index, window=Window(c0, r0, width, height))
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()


def _to_cog(src: Path, dst: Path, compress: str, blocksize: int, resampling: str) -> None:
    """Copy a GeoTIFF into a Cloud-Optimized GeoTIFF with overviews."""
    import rasterio.shutil

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
        ``out``, now a complete GeoTIFF.

    Raises
    ------
    StoreError
        The store is missing, not a tilepipe result store, inconsistent or incomplete
        (its run did not finish), or reading or writing failed (disk full, ...).
    InputError
        ``out`` exists and ``overwrite`` is false, or an argument is invalid.
    """
    compress = _parse_compress(compress)
    blocksize = _parse_blocksize(blocksize)
    resampling = _parse_resampling(resampling)
    info = open_result(result)
    if not info.complete:
        raise StoreError(f"{info.path}: the result is incomplete: its run did not finish; run it again to resume")
    chosen = _parse_bands(bands, info.shape[0])
    out_path = Path(out)
    with publish(out_path, overwrite=overwrite) as partial:
        try:
            if cog:
                tiled = partial.with_name(f"{partial.stem}.tiled.tif")
                _write_tiled(info, chosen, tiled, compress, blocksize, progress)
                _to_cog(tiled, partial, compress, blocksize, resampling)
            else:
                _write_tiled(info, chosen, partial, compress, blocksize, progress)
        except TilepipeError:
            raise
        except Exception as exc:  # GDAL errors (RasterioIOError, CPLE_*), OSError (disk full)
            raise StoreError(f"{out_path}: cannot write the GeoTIFF: {exc}") from exc
    return out_path
