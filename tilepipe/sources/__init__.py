"""Sources of scenes, read: GeoTIFFs and VRTs (anything rasterio opens), band stacks (a list of
rasters on one grid, or a STAC item's assets), SparseTensors and COO arrays; which tiles
and blocks of a raster may hold data, from its file's block table.

Readers only: writing them into scene stores is :mod:`tilepipe.execute.ingest`'s job.
"""

from tilepipe.sources.coo import CooScene, TileBuckets, as_coo, coo_from_arrays, coo_from_sparse_tensor
from tilepipe.sources.georef import IDENTITY_TRANSFORM, parse_crs, parse_transform
from tilepipe.sources.geotiff import GeoTiffSource, open_raster, probe_geotiff, read_window_entries
from tilepipe.sources.occupancy import occupied_blocks, raster_block_occupancy, raster_tile_occupancy
from tilepipe.sources.stack import RasterStack, crs_name, is_stac_item, probe_stack, read_stack_entries
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
