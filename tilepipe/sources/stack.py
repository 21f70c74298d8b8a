"""Band stacks: rasters on one grid read as one scene, their bands stacked in the order given.

Real scenes often come as one file per band (Sentinel-2 and Landsat deliveries). A
stack reads a window from every file and stacks the bands on the last axis,
``(y, x, band)``; each band keeps its own nodata. A single raster (a GeoTIFF, a
VRT) is a stack of one, so ingest has one reader for all.

Rasters on different grids are refused before anything is written, with one line
that names the file and what differs (CRS, transform or shape, with both values):
resampling is a choice about the data that tilepipe does not make silently.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rasterio.crs import CRS
from rasterio.errors import CRSError

from tilepipe.errors import InputError
from tilepipe.geometry import Window
from tilepipe.location import Location
from tilepipe.sources.georef import crs_name
from tilepipe.sources.geotiff import GeoTiffSource, probe_geotiff, read_window
from tilepipe.sources.kinds import is_stac_item
from tilepipe.sources.stac import stac_asset_paths

__all__ = ["RasterStack", "probe_stack", "read_stack_entries"]

Transform = tuple[float, float, float, float, float, float]


@dataclass(frozen=True, slots=True)
class RasterStack:
    """Rasters on one grid, read as one scene: ``layers[0]``'s chosen bands first, and so on.

    ``name`` is how messages and the scene store name the scene (a path, or the
    first path and how many more, or a STAC item and its asset keys). ``dtype``
    holds every layer's values.
    """

    layers: tuple[GeoTiffSource, ...]
    name: str
    dtype: str

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of every layer."""
        return self.layers[0].shape

    @property
    def crs_wkt(self) -> str | None:
        return self.layers[0].crs_wkt

    @property
    def transform(self) -> Transform:
        return self.layers[0].transform

    @property
    def bands(self) -> int:
        """Bands of the stacked scene."""
        return sum(len(layer.bands) for layer in self.layers)

    @property
    def band_nodata(self) -> tuple[float | None, ...]:
        """Each stacked band's nodata, in order."""
        return tuple(layer.nodata_of(i) for layer in self.layers for i in range(len(layer.bands)))

    @property
    def nodata(self) -> float | None:
        """The nodata every band shares (what a scene store records), else None."""
        values = self.band_nodata
        first = values[0]
        same = all(v == first or (v is not None and first is not None and math.isnan(v) and math.isnan(first))
                   for v in values)
        return first if same else None

    @property
    def paths(self) -> tuple[str, ...]:
        """The rasters opened, in stack order (one per layer)."""
        return tuple(layer.path for layer in self.layers)

    @property
    def files(self) -> tuple[str, ...]:
        """Every local file read (a VRT's sources included), each once, absolute."""
        seen: dict[str, None] = {}
        for layer in self.layers:
            seen.update(dict.fromkeys(layer.files))
        return tuple(seen)


def probe_stack(
    source: str | Sequence[str],
    *,
    assets: Sequence[str] | None = None,
    bands: Sequence[int] | None = None,
    nodata: float | None = None,
    mask: bool = True,
) -> RasterStack:
    """Describe a raster, a list of rasters, or a STAC item's ``assets``, refusing what cannot be one scene.

    Parameters
    ----------
    source
        A raster path (GeoTIFF, VRT, anything rasterio opens), a list of raster
        paths on one grid, or a local STAC item JSON (with ``assets``).
    assets
        The STAC item's asset keys to stack, in order; only with a STAC item.
    bands
        1-based bands of a single raster; refused with a list or a STAC item,
        whose order already names the bands.
    nodata
        Overrides every band's nodata.
    mask
        Honour each raster's mask (per-dataset or alpha), where it has one: pixels
        outside it are absent, as nodata pixels are. False reads them as data.
    """
    if isinstance(source, str):
        if is_stac_item(source) and assets is None:
            raise InputError(f"{source}: a STAC item: name the asset keys to stack (assets, --assets or input.assets)")
        if assets is not None:
            if not is_stac_item(source):
                raise InputError(f"{source}: assets are only for a STAC item (a .json file)")
            paths = stac_asset_paths(source, assets)
            name = f"{source} (assets {', '.join(assets)})"
        else:
            paths, name = (source,), source
    else:
        paths = tuple(source)
        if assets is not None:
            raise InputError("assets are only for a STAC item, not for a list of rasters")
        if not paths:
            raise InputError("source: expected at least one raster in the list, got []")
        name = paths[0] if len(paths) == 1 else f"{paths[0]} + {len(paths) - 1} more"
    if bands is not None and (len(paths) > 1 or assets is not None):
        raise InputError(f"{name}: bands: not valid with a band stack (the list or the assets name the bands)")
    _check_distinct(paths)
    layers = tuple(probe_geotiff(p, bands=None if bands is None else tuple(bands), nodata=nodata, mask=mask)
                   for p in paths)
    for layer in layers[1:]:
        _check_same_grid(layer, layers[0])
    dtype = np.result_type(*[np.dtype(layer.dtype) for layer in layers])
    return RasterStack(layers, name, str(dtype))


def _check_distinct(paths: Sequence[str]) -> None:
    """Refuse a stack that names one file twice (however spelled): like ``bands: [1, 1]``, it is a slip."""
    seen: dict[str, int] = {}
    for i, path in enumerate(paths):
        location = Location.of(path)
        key = os.path.realpath(location.path) if location.is_local else path
        if key in seen:
            raise InputError(f"{path}: expected distinct rasters in a band stack, got the same file twice "
                             f"(rasters {seen[key] + 1} and {i + 1} of the stack)")
        seen[key] = i


def _check_same_grid(layer: GeoTiffSource, first: GeoTiffSource) -> None:
    """Refuse ``layer`` unless it has ``first``'s CRS, transform and shape, naming what differs."""
    said = []
    if layer.shape != first.shape:
        said.append(f"shape {layer.shape[0]} x {layer.shape[1]} (not {first.shape[0]} x {first.shape[1]})")
    if not _same_crs(layer.crs_wkt, first.crs_wkt):
        said.append(f"CRS {crs_name(layer.crs_wkt)} (not {crs_name(first.crs_wkt)})")
    if not _same_transform(layer.transform, first.transform):
        said.append(f"transform {_shown(layer.transform)} (not {_shown(first.transform)})")
    if said:
        raise InputError(f"{layer.path}: not on the grid of {first.path}: {'; '.join(said)}; "
                         "a band stack needs one grid (nothing is resampled)")


def _same_crs(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    try:
        return bool(CRS.from_wkt(a) == CRS.from_wkt(b))
    except CRSError:
        return a == b


def _same_transform(a: Transform, b: Transform) -> bool:
    """Equal up to float noise: 1e-9 of a coefficient or of the pixel size, whichever is larger."""
    pixel = max(abs(v) for v in (*a[:2], *a[3:5]))
    return all(abs(x - y) <= 1e-9 * max(abs(x), abs(y), pixel) for x, y in zip(a, b, strict=True))


def _shown(t: Transform) -> str:
    return "(" + ", ".join(f"{v:.10g}" for v in t) + ")"


def read_stack_entries(stack: RasterStack, window: Window, datasets: Sequence[object] | None = None):  # type: ignore[no-untyped-def]
    """Read ``window`` from every layer and return ``(shape, flat, values)`` of the stacked scene's entries.

    ``shape`` is ``(rows, cols, bands)``; ``flat`` are sorted flat indices into it; a
    value is an entry unless it is zero, NaN or its own band's nodata. ``datasets``:
    the layers' open rasterio datasets, in order (opened and closed here if None).
    """
    opened = datasets if datasets is not None else [None] * len(stack.layers)
    parts = [read_window(layer, window, ds) for layer, ds in zip(stack.layers, opened, strict=True)]
    if len(parts) == 1:
        data, present = parts[0]
        data = data.astype(stack.dtype, copy=False)
    else:
        data = np.concatenate([d.astype(stack.dtype, copy=False) for d, _ in parts], axis=-1)
        present = np.concatenate([p for _, p in parts], axis=-1)
    flat = np.flatnonzero(present)
    return data.shape, flat, data.reshape(-1)[flat]
