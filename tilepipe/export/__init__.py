"""Exports of a result store: GeoTIFF / Cloud-Optimized GeoTIFF, its products, and a quicklook PNG."""

from tilepipe.export.bands import record_band_names
from tilepipe.export.geotiff import export_geotiff
from tilepipe.export.products import Classes, Product, Scale, Threshold
from tilepipe.export.quicklook import quicklook

__all__ = ["Classes", "Product", "Scale", "Threshold", "export_geotiff", "quicklook", "record_band_names"]
