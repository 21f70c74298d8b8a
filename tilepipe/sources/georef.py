"""Georeferencing: a CRS and an affine transform given by a caller for in-memory scenes, and the
short name a CRS goes by in messages, ``info`` and quicklook axes."""

from __future__ import annotations

from typing import Any

from rasterio.crs import CRS
from rasterio.errors import CRSError

from tilepipe.errors import InputError

__all__ = ["IDENTITY_TRANSFORM", "crs_name", "parse_crs", "parse_transform", "wkt_name"]

#: Pixel coordinates: what a scene without a transform is placed on.
IDENTITY_TRANSFORM = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def parse_crs(crs: Any) -> str | None:
    """WKT of ``crs`` (anything ``rasterio.crs.CRS.from_user_input`` takes), None for None."""
    if crs is None:
        return None
    try:
        return str(CRS.from_user_input(crs).to_wkt())
    except (CRSError, ValueError, TypeError) as exc:
        raise InputError(f"crs: not a coordinate reference system: {crs!r}") from exc


def parse_transform(transform: Any) -> tuple[float, float, float, float, float, float]:
    """Six affine coefficients (rasterio order) from an ``affine.Affine`` or a sequence; identity for None."""
    if transform is None:
        return IDENTITY_TRANSFORM
    try:
        values = tuple(float(v) for v in tuple(transform)[:6])
    except (TypeError, ValueError) as exc:
        raise InputError(f"transform: expected 6 affine coefficients, got {transform!r}") from exc
    if len(values) != 6:
        raise InputError(f"transform: expected 6 affine coefficients, got {transform!r}")
    return values  # type: ignore[return-value]


def wkt_name(wkt: str) -> str:
    """The name a WKT gives its CRS (its first quoted string, ``WGS 84 / UTM zone 18N``); "" where none."""
    return wkt.split('"')[1] if '"' in wkt else ""


def crs_name(wkt: str | None) -> str:
    """A short name for a CRS: ``EPSG:32618`` where it has a code, else its WKT name (or the WKT's first
    60 characters); ``"none"`` for None."""
    if not wkt:
        return "none"
    try:
        epsg = CRS.from_wkt(wkt).to_epsg()
    except CRSError:
        epsg = None
    if epsg:
        return f"EPSG:{epsg}"
    return wkt_name(wkt) or wkt[:60]
