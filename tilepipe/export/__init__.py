"""Exports of a result store: GeoTIFF / Cloud-Optimized GeoTIFF, and a quicklook PNG."""

from tilepipe.export.geotiff import export_geotiff
from tilepipe.export.quicklook import quicklook

__all__ = ["export_geotiff", "quicklook"]
