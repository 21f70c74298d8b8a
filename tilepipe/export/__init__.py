"""Exports of a result store: GeoTIFF / Cloud-Optimized GeoTIFF, its products, and a quicklook PNG.

The products (small values, numpy only) are imported at once, so a workflow file can be parsed
without GDAL or Zarr; the functions that read stores and write files load their modules (rasterio,
zarr) on first use.

``quicklook`` names both the function and the module that holds it. As before this package was
lazy, ``tilepipe.export.quicklook`` is the function, whichever is imported first; the module is
``sys.modules["tilepipe.export.quicklook"]`` (``importlib.import_module`` returns it).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from tilepipe.export.products import Classes, Product, Scale, Threshold

if TYPE_CHECKING:
    from tilepipe.export.bands import record_band_names
    from tilepipe.export.geotiff import export_geotiff
    from tilepipe.export.quicklook import quicklook

__all__ = ["Classes", "Product", "Scale", "Threshold", "export_geotiff", "quicklook", "record_band_names"]

# Public name -> the submodule that defines it under that name.
_LAZY = {
    "export_geotiff": "tilepipe.export.geotiff",
    "quicklook": "tilepipe.export.quicklook",
    "record_band_names": "tilepipe.export.bands",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    # Importing a submodule binds it on its package: for `quicklook` that would hide the
    # function behind its module, so the function is bound instead.
    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and value.__name__ == _LAZY.get(name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
