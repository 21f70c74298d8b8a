"""Pixel geometry: windows, tile grids and model footprints. No TensorFlow, no Zarr."""

from tilepipe.geometry.footprint import AxisFootprint, Footprint
from tilepipe.geometry.grid import Tile, TileGrid, parse_tile_size
from tilepipe.geometry.window import Window

__all__ = ["AxisFootprint", "Footprint", "Tile", "TileGrid", "Window", "parse_tile_size"]
