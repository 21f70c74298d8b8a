"""Pixel geometry: windows, tile grids and model footprints. No TensorFlow, no Zarr."""

from tilepipe.geometry.footprint import AxisFootprint, Footprint, round_up, stride_aligned
from tilepipe.geometry.grid import DEFAULT_TILE_SIZE, Tile, TileGrid, parse_tile_size, tile_name
from tilepipe.geometry.window import Window

__all__ = [
    "DEFAULT_TILE_SIZE",
    "AxisFootprint",
    "Footprint",
    "Tile",
    "TileGrid",
    "Window",
    "parse_tile_size",
    "round_up",
    "stride_aligned",
    "tile_name",
]
