"""GeoTIFF (any raster rasterio reads, VRTs included) as a tilepipe source.

Values equal to their band's nodata (and NaN) are the absent entries of the
sparse scene; so are zeros, which densify to zero anyway. The rule is per band
value: a pixel holds no entry where every band is absent. Windows are read one
tile at a time, so an ingest task holds one tile window in memory, whatever
the scene.

A raster may say which pixels are valid with a mask instead of a nodata value:
an internal or ``.msk`` mask (JPEG-compressed scenes, whose lossy codec cannot
keep a nodata value exact) or an alpha band, what GDAL calls a per-dataset or
alpha mask. Pixels outside it hold whatever the codec left there, so they are
absent too, as nodata pixels are, unless the caller asks to ignore the mask.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import numpy as np
import rasterio
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioError
from rasterio.windows import Window as RioWindow

from tilepipe.errors import InputError
from tilepipe.geometry import Window
from tilepipe.location import Location

__all__ = ["GeoTiffSource", "open_raster", "probe_geotiff", "read_window", "read_window_entries"]


@dataclass(frozen=True, slots=True)
class GeoTiffSource:
    """A raster source: shapes ``(rows, cols)``, ``bands`` 1-based as rasterio numbers them.

    ``nodata`` is the first chosen band's (what a scene store records);
    ``band_nodata`` holds each chosen band's, in the order of ``bands``
    (empty: ``nodata`` for every band). ``files`` are the local files GDAL
    reads for it: the raster itself, and a VRT's sources or sidecar files.
    ``masked``: pixels outside the raster's mask (per-dataset or alpha) are absent.
    """

    path: str
    shape: tuple[int, int]
    bands: tuple[int, ...]
    dtype: str
    nodata: float | None
    crs_wkt: str | None
    transform: tuple[float, float, float, float, float, float]
    band_nodata: tuple[float | None, ...] = ()
    files: tuple[str, ...] = ()
    masked: bool = False

    def nodata_of(self, index: int) -> float | None:
        """The nodata of the ``index``-th chosen band (zero-based)."""
        return self.band_nodata[index] if self.band_nodata else self.nodata


@contextlib.contextmanager
def open_raster(path: str) -> Iterator[Any]:
    """Open a raster with rasterio, closed when the ``with`` block ends; errors name the file.

    ``file://`` URLs are local paths. An ``s3://`` raster is opened, read and closed under
    the GDAL settings of :func:`_s3_endpoint`: GDAL looks for its masks and sidecar files
    after the open, and each such look is a request to the endpoint.
    """
    location = Location.of(path)
    if location.is_local and not os.path.exists(location.path):
        raise InputError(f"{path}: no such file")
    options = _s3_endpoint(location)
    with rasterio.Env(**options) if options else contextlib.nullcontext():
        # The InputError is raised outside the except block, with no chained context: GDAL's
        # exception types do not survive pickling back from a Dask worker, and would turn it
        # into a plain Exception there.
        why = None
        try:
            dataset = rasterio.open(location.target)
        except (RasterioError, OSError) as exc:
            why = _first_line(exc)
        if why is not None:
            raise InputError(f"{path}: cannot open as a raster: {why}")
        with dataset:
            yield dataset


def _s3_endpoint(location: Location) -> dict[str, str]:
    """GDAL's settings for an ``s3://`` raster at the endpoint the AWS SDKs are pointed at, if any.

    botocore and s3fs (which read and write tilepipe's stores at ``s3://``) honour
    ``AWS_ENDPOINT_URL_S3`` and ``AWS_ENDPOINT_URL`` (MinIO, moto, another cloud's S3);
    GDAL's ``/vsis3/`` does not, and would look for the same bucket on AWS itself. GDAL's
    own ``AWS_S3_ENDPOINT``, where set, wins.
    """
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if location.scheme != "s3" or not endpoint or "AWS_S3_ENDPOINT" in os.environ:
        return {}
    if rasterio.env.hasenv() and any(k.upper() == "AWS_S3_ENDPOINT" for k in rasterio.env.getenv()):
        return {}  # set by the caller's rasterio.Env
    parsed = urlparse(endpoint)
    return {"AWS_S3_ENDPOINT": parsed.netloc + parsed.path.rstrip("/"),
            "AWS_HTTPS": "NO" if parsed.scheme == "http" else "YES",
            "AWS_VIRTUAL_HOSTING": "FALSE"}  # path-style addressing, which S3-compatible servers take


def _first_line(exc: BaseException) -> str:
    """The most telling line of a GDAL error: rasterio's "see previous exception" points at its cause."""
    if "previous exception" in str(exc) and exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def probe_geotiff(
    path: str, *, bands: tuple[int, ...] | None = None, nodata: float | None = None, mask: bool = True
) -> GeoTiffSource:
    """Open ``path`` and describe it, refusing what cannot become a scene.

    ``mask``: honour the raster's mask, where it has one (see the module); False reads masked pixels as data.
    """
    with open_raster(path) as src:
        count = src.count
        chosen = tuple(range(1, count + 1)) if bands is None else tuple(bands)
        bad = [b for b in chosen if not 1 <= b <= count]
        if bad:
            raise InputError(f"{path}: band {bad[0]} does not exist (the file has {count} bands, numbered from 1)")
        if not chosen:
            raise InputError(f"{path}: expected at least one band")
        if len(set(chosen)) != len(chosen):
            raise InputError(f"{path}: expected distinct band indexes, got {', '.join(map(str, chosen))}")
        dtypes = {src.dtypes[b - 1] for b in chosen}
        dtype = np.result_type(*[np.dtype(d) for d in dtypes])
        if dtype.kind not in "biuf":
            raise InputError(f"{path}: unsupported data type {dtype} (expected integers or floats)")
        # A GeoTIFF has one nodata for all bands; a VRT may give each band its own.
        per_band = [nodata if nodata is not None else src.nodatavals[b - 1] for b in chosen]
        for nd in {float(v) for v in per_band if v is not None}:
            _check_nodata(path, nd, dtype)
        band_nodata = tuple(None if v is None else float(v) for v in per_band)
        crs_wkt = src.crs.to_wkt() if src.crs is not None else None
        t = src.transform
        return GeoTiffSource(
            path=path,
            shape=(src.height, src.width),
            bands=chosen,
            dtype=str(dtype),
            nodata=band_nodata[0],
            crs_wkt=crs_wkt,
            transform=(t.a, t.b, t.c, t.d, t.e, t.f),
            band_nodata=band_nodata,
            files=_local_files(src),
            masked=mask and _has_mask(src, chosen),
        )


def _has_mask(dataset, bands: tuple[int, ...]) -> bool:  # type: ignore[no-untyped-def]
    """Whether GDAL gives ``bands`` a real mask: per-dataset (internal, ``.msk``) or an alpha band.

    Not a nodata mask (the nodata value says that, and a nodata override must win) and
    not "all valid" (no mask at all).
    """
    flags = [dataset.mask_flag_enums[b - 1] for b in bands]
    return any(MaskFlags.per_dataset in f or MaskFlags.alpha in f for f in flags)


def _local_files(dataset) -> tuple[str, ...]:  # type: ignore[no-untyped-def]
    """The local files GDAL reads for ``dataset`` (absolute): the raster first, then a VRT's sources, sidecars."""
    found: list[str] = []
    for name in dataset.files:
        path = os.path.abspath(name)
        if os.path.isfile(path) and path not in found:
            found.append(path)
    return tuple(found)


def _check_nodata(path: str, nodata: float, dtype: np.dtype) -> None:
    """Refuse a nodata value that no pixel of ``dtype`` can equal.

    Casting it instead would turn -1 into 255 on uint8 and silently drop every
    real 255 pixel; a value that no pixel can hold is a user's mistake to report.
    """
    if dtype.kind == "f":
        if math.isfinite(nodata) and abs(nodata) > float(np.finfo(dtype).max):
            raise InputError(f"{path}: nodata {_number(nodata)} cannot be a {dtype} value (it overflows)")
        return
    info = np.iinfo(dtype) if dtype.kind in "iu" else None
    lo, hi = (int(info.min), int(info.max)) if info is not None else (0, 1)
    if not (math.isfinite(nodata) and nodata.is_integer() and lo <= nodata <= hi):
        raise InputError(f"{path}: nodata {_number(nodata)} cannot be a {dtype} value (whole numbers {lo} to {hi})")


def _number(value: float) -> str:
    """A number as a user wrote it: ``-1``, not ``-1.0``; ``0.5``; ``nan``."""
    return str(int(value)) if math.isfinite(value) and value.is_integer() and abs(value) < 2**53 else repr(value)


def read_window_entries(source: GeoTiffSource, window: Window, dataset=None):  # type: ignore[no-untyped-def]
    """Read ``window`` and return ``(shape, flat, values)``: its non-zero, non-nodata entries.

    ``shape`` is ``(rows, cols, bands)``; ``flat`` are sorted flat indices into it.
    """
    data, present = read_window(source, window, dataset)
    flat = np.flatnonzero(present)
    return data.shape, flat, data.reshape(-1)[flat]


def read_window(source: GeoTiffSource, window: Window, dataset=None):  # type: ignore[no-untyped-def]
    """Read ``window`` as ``(data, present)``, both ``(y, x, band)``; ``data`` in ``source.dtype``.

    ``present`` is False where a value is zero, NaN or its band's nodata, and outside the raster's
    mask where ``source.masked``: the sparse scene's absent entries.
    """
    rio_window = RioWindow(window.col_start, window.row_start, window.width, window.height)  # type: ignore[call-arg]
    why = None
    valid = None
    try:
        with contextlib.ExitStack() as opened:
            src = dataset if dataset is not None else opened.enter_context(open_raster(source.path))
            data = src.read(list(source.bands), window=rio_window)
            if source.masked:
                valid = src.dataset_mask(window=rio_window) != 0  # (y, x)
    except (RasterioError, OSError) as exc:
        why = _first_line(exc)
    if why is not None:  # raised here, unchained: see open_raster
        raise InputError(
            f"{source.path}: read failed in rows {window.row_start}-{window.row_stop}, "
            f"cols {window.col_start}-{window.col_stop}: {why}"
        )
    data = np.moveaxis(data, 0, -1).astype(source.dtype, copy=False)  # (bands, y, x) -> (y, x, bands)
    present = data != 0
    for i in range(len(source.bands)):
        nodata = source.nodata_of(i)
        if nodata is not None and not math.isnan(nodata):  # NaN is dropped below
            present[..., i] &= data[..., i] != np.asarray(nodata).astype(data.dtype)
    if data.dtype.kind == "f":
        present &= ~np.isnan(data)
    if valid is not None:
        present &= valid[..., None]
    return data, present
