"""CF georeferencing of the result store: what rioxarray, odc-geo and GDAL read from a Zarr group.

The conventions, as those readers apply them (rioxarray's ``rio.crs`` / ``rio.transform()``,
odc-geo's ``odc.geobox``, GDAL's netCDF/Zarr georeferencing):

- a scalar *grid mapping* variable, ``spatial_ref``, whose attributes hold the CRS as WKT
  (``crs_wkt``, the CF name, and ``spatial_ref``, GDAL's) and the affine transform as
  ``GeoTransform``: six numbers in GDAL's order ``c a b f d e``, separated by spaces;
- on every data variable, ``grid_mapping: spatial_ref`` naming it, and ``coordinates:
  spatial_ref`` so that ``xarray.open_zarr`` (which decodes ``coordinates`` by default, but
  ``grid_mapping`` only with ``decode_coords="all"``) makes it a coordinate: rioxarray and
  odc-geo look for it among a variable's coordinates;
- dimensions named ``y`` and ``x`` with coordinate arrays of pixel centres (``axis: Y`` /
  ``X``); odc-geo works the transform out from them and keeps ``GeoTransform``'s where the
  two agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["GRID_MAPPING", "axis_attrs", "centres", "geo_transform", "grid_mapping_attrs", "variable_attrs"]

#: The name of the grid mapping variable (rioxarray's and odc-geo's default).
GRID_MAPPING = "spatial_ref"


def geo_transform(transform: Sequence[float]) -> str:
    """GDAL's ``GeoTransform`` text of a rasterio-order transform ``(a, b, c, d, e, f)``.

    ``repr`` of each float: the shortest text that reads back as the same double.
    """
    a, b, c, d, e, f = (float(v) for v in transform[:6])
    return " ".join(repr(v) for v in (c, a, b, f, d, e))


def grid_mapping_attrs(crs_wkt: str | None, transform: Sequence[float]) -> dict[str, Any]:
    """Attributes of the ``spatial_ref`` variable: the CRS (where known) and the transform."""
    attrs: dict[str, Any] = {}
    if crs_wkt:
        attrs["crs_wkt"] = crs_wkt
        attrs["spatial_ref"] = crs_wkt
    attrs["GeoTransform"] = geo_transform(transform)
    return attrs


def variable_attrs(long_name: str) -> dict[str, Any]:
    """Attributes of a data variable on the georeferenced ``(y, x)`` grid."""
    return {"grid_mapping": GRID_MAPPING, "coordinates": GRID_MAPPING, "long_name": long_name}


def axis_attrs(axis: str) -> dict[str, Any]:
    """Attributes of the ``x`` or ``y`` coordinate (pixel centres, in CRS units)."""
    return {"axis": axis.upper(), "long_name": f"{axis.lower()} coordinate of pixel centres"}


def centres(transform: Sequence[float], rows: int, cols: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Pixel-centre coordinates ``(y, x)`` of a north-up grid, float64; None where the grid is rotated."""
    a, b, c, d, e, f = (float(v) for v in transform[:6])
    if b != 0 or d != 0:
        return None
    return f + e * (np.arange(rows) + 0.5), c + a * (np.arange(cols) + 0.5)
