"""Sources of scenes, read: GeoTIFFs and VRTs (anything rasterio opens), band stacks (a list of
rasters on one grid, or a STAC item's assets), SparseTensors and COO arrays; which tiles
and blocks of a raster may hold data, from its file's block table.

Readers only: writing them into scene stores is :mod:`tilepipe.execute.ingest`'s job.

Loaded lazily: :mod:`tilepipe.sources.kinds` (what an input path names) and
:mod:`tilepipe.sources.identity` (a file's identity) import without rasterio, so a workflow
file is parsed without GDAL; the readers load it on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tilepipe.sources.coo import CooScene, TileBuckets, as_coo, coo_from_arrays, coo_from_sparse_tensor
    from tilepipe.sources.georef import IDENTITY_TRANSFORM, crs_name, parse_crs, parse_transform
    from tilepipe.sources.geotiff import GeoTiffSource, open_raster, probe_geotiff, read_window_entries
    from tilepipe.sources.kinds import is_scene_store, is_stac_item
    from tilepipe.sources.occupancy import occupied_blocks, raster_block_occupancy, raster_tile_occupancy
    from tilepipe.sources.stack import RasterStack, probe_stack, read_stack_entries
    from tilepipe.sources.synthetic import synthetic_scene

__all__ = [
    "IDENTITY_TRANSFORM",
    "CooScene",
    "GeoTiffSource",
    "RasterStack",
    "TileBuckets",
    "as_coo",
    "coo_from_arrays",
    "coo_from_sparse_tensor",
    "crs_name",
    "is_scene_store",
    "is_stac_item",
    "occupied_blocks",
    "open_raster",
    "parse_crs",
    "parse_transform",
    "probe_geotiff",
    "probe_stack",
    "raster_block_occupancy",
    "raster_tile_occupancy",
    "read_stack_entries",
    "read_window_entries",
    "synthetic_scene",
]

# Public name -> the submodule that defines it.
_HOMES = {
    "CooScene": "coo", "TileBuckets": "coo", "as_coo": "coo", "coo_from_arrays": "coo",
    "coo_from_sparse_tensor": "coo",
    "IDENTITY_TRANSFORM": "georef", "crs_name": "georef", "parse_crs": "georef", "parse_transform": "georef",
    "GeoTiffSource": "geotiff", "open_raster": "geotiff", "probe_geotiff": "geotiff",
    "read_window_entries": "geotiff",
    "is_scene_store": "kinds", "is_stac_item": "kinds",
    "occupied_blocks": "occupancy", "raster_block_occupancy": "occupancy", "raster_tile_occupancy": "occupancy",
    "RasterStack": "stack", "probe_stack": "stack", "read_stack_entries": "stack",
    "synthetic_scene": "synthetic",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'tilepipe.sources' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"tilepipe.sources.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
