"""What importing a tilepipe module loads, each checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("zarr", "rasterio", "tensorflow", "keras", "distributed")


def run_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_workflow_imports_no_zarr_rasterio_tensorflow_or_distributed() -> None:
    # Parsing a workflow file (the CLI's and the watcher's first step) needs no GDAL, Zarr, TensorFlow or cluster.
    code = f"import sys, tilepipe.workflow; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    assert run_python(code) == "[]"


def test_export_products_import_without_gdal_or_zarr() -> None:
    code = (
        "import sys; from tilepipe.export import Classes, Product, Scale, Threshold; "
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    assert run_python(code) == "[]"


@pytest.mark.parametrize(
    "first",
    [
        "from tilepipe.export import quicklook",
        "import importlib; importlib.import_module('tilepipe.export.quicklook')",
        "import tilepipe.export.quicklook",
        "from tilepipe.export.quicklook import quicklook",
        "import tilepipe; tilepipe.quicklook",
    ],
)
def test_export_quicklook_is_the_function_whichever_import_comes_first(first: str) -> None:
    # `quicklook` names a function and the module holding it; the package's name is the function.
    code = (
        f"{first}\n"
        "import importlib, types, tilepipe, tilepipe.export\n"
        "from tilepipe.export import export_geotiff, quicklook, record_band_names\n"
        "module = importlib.import_module('tilepipe.export.quicklook')\n"
        "assert isinstance(module, types.ModuleType)\n"
        "assert quicklook is module.quicklook is tilepipe.export.quicklook is tilepipe.quicklook\n"
        "assert export_geotiff is importlib.import_module('tilepipe.export.geotiff').export_geotiff\n"
        "assert record_band_names is importlib.import_module('tilepipe.export.bands').record_band_names\n"
        "print(quicklook.__module__, export_geotiff.__module__)"
    )
    assert run_python(code) == "tilepipe.export.quicklook tilepipe.export.geotiff"


def test_export_unknown_name_is_an_attribute_error() -> None:
    import tilepipe.export

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = tilepipe.export.nope  # type: ignore[attr-defined]
    with pytest.raises(ImportError):
        exec("from tilepipe.export import nope")
