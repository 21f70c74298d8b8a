"""The result store opened as the geospatial xarray stack opens it: xarray, rioxarray, odc-geo.

Results come from real runs (``tilepipe.ingest`` of a GeoTIFF, ``tilepipe.run``); the reference
for the grid is the source GeoTIFF as rasterio reads it (its CRS and transform; an output at 1/8
resolution has that transform scaled by 8 by hand), the reference for the values is Keras on the
whole dense scene. Every band is its own variable ``band_1``, ``band_2``, ... with its own fill value,
which xarray, not only tilepipe, must read for the tiles that were never written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

import tilepipe
from tilepipe.store import ResultStore
from tilepipe.store.result import STATUS_FREE

from helpers import Checker, conv, patches, reference, sequential, write_geotiff

xr = pytest.importorskip("xarray")
pytest.importorskip("rioxarray")
odc_xr = pytest.importorskip("odc.geo.xr")
from odc.geo.geobox import GeoBox  # noqa: E402 - only once odc-geo is known to be there

pytestmark = pytest.mark.cluster

SOURCE_TRANSFORM = Affine(20.0, 0.0, 300_020.0, 0.0, -20.0, 5_000_040.0)


def _source(tmp_path: Path, dense: np.ndarray) -> tuple[Path, CRS, Affine]:
    """``dense`` ``(y, x, band)`` as a GeoTIFF (nodata 0), and its CRS and transform as rasterio reads them."""
    tif = tmp_path / "scene.tif"
    write_geotiff(tif, np.moveaxis(dense, -1, 0), crs="EPSG:32618", transform=SOURCE_TRANSFORM, nodata=0)
    with rasterio.open(tif) as src:
        return tif, src.crs, src.transform


def _check_grid(var: Any, crs: CRS, transform: Affine, shape: tuple[int, int], what: str) -> None:
    """rioxarray and odc-geo each say ``var`` lies on the grid ``(crs, transform, shape)``."""
    assert var.rio.crs == crs, what
    assert var.rio.transform() == transform, what
    assert var.rio.shape == shape, what
    box = var.odc.geobox
    assert box is not None, what
    assert box == GeoBox(shape, transform, crs), what
    assert CRS.from_wkt(box.crs.wkt) == crs, what


def test_rioxarray_and_odc_geo_read_the_result_grid_and_every_band(
    tmp_path: Path, dask_client: Any, assert_exact: Checker
) -> None:
    rows, cols = 60, 70
    dense = patches((rows, cols, 2), [(0, 8, 10, 30), (40, 50, 44, 52)], seed=41)
    tif, crs, transform = _source(tmp_path, dense)
    model = sequential(2, conv(3, 3, padding="same", activation="relu"),
                       conv(3, 3, padding="same", activation="sigmoid"), seed=41)
    scene, result = tmp_path / "s.zarr", tmp_path / "r.zarr"
    tilepipe.ingest(str(tif), str(scene), tile_size=10, model=model)
    tilepipe.run(str(scene), model, str(result), client=dask_client)
    assert (ResultStore.open(result, mode="r").status() == STATUS_FREE).sum() >= 4  # absent chunks to read

    ds = xr.open_zarr(result)  # as a user would: consolidated metadata, CF decoding
    assert set(ds.data_vars) >= {"band_1", "band_2", "band_3"}
    ref = reference(model, dense)
    for band in range(3):
        var = ds[f"band_{band + 1}"]
        assert var.dims == ("y", "x")
        assert var.attrs["grid_mapping"] == "spatial_ref" and "spatial_ref" in var.coords
        _check_grid(var, crs, transform, (rows, cols), f"band_{band + 1}")
        # Unwritten (free) tiles read as this band's own response to zeros: xarray honours it too.
        assert_exact(var.values, ref[band], f"band {band + 1} through xarray")
    _check_grid(ds, crs, transform, (rows, cols), "the dataset")
    stacked = ds[["band_1", "band_2", "band_3"]].to_dataarray("band")
    assert_exact(stacked.values, ref, "the bands stacked")
    # Pixel centres, as rasterio places them.
    xs, _ = rasterio.transform.xy(transform, np.zeros(cols, int), np.arange(cols), offset="center")
    _, ys = rasterio.transform.xy(transform, np.arange(rows), np.zeros(rows, int), offset="center")
    np.testing.assert_allclose(ds["x"].values, xs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ds["y"].values, ys, rtol=0, atol=1e-6)
    # Unconsolidated, the same.
    _check_grid(xr.open_zarr(result, consolidated=False)["band_2"], crs, transform, (rows, cols), "unconsolidated")


def test_output_at_an_eighth_of_the_resolution_is_georeferenced_for_xarray(tmp_path: Path, dask_client: Any) -> None:
    import keras
    from keras import layers as kl

    keras.utils.set_random_seed(5)
    encoder = keras.Sequential(
        [keras.Input((None, None, 2)),
         *[kl.Conv2D(3, 3, strides=2, padding="same", activation="tanh") for _ in range(3)]]
    )
    model_path = tmp_path / "encoder.keras"
    encoder.save(model_path)
    dense = patches((83, 70, 2), [(0, 20, 5, 30), (60, 83, 40, 70)], seed=42)
    tif, crs, transform = _source(tmp_path, dense)
    scene, result = tmp_path / "s.zarr", tmp_path / "r.zarr"
    tilepipe.ingest(str(tif), str(scene), tile_size=20, model=str(model_path), client=dask_client)
    tilepipe.run(str(scene), str(model_path), str(result), client=dask_client)
    # Output pixel (0, 0) covers source pixels 0 .. 7 along each axis: pixels 8 times larger, same corner.
    eighth = transform @ Affine.scale(8)
    assert eighth == Affine(160.0, 0.0, 300_020.0, 0.0, -160.0, 5_000_040.0)
    ds = xr.open_zarr(result)
    for band in range(3):
        _check_grid(ds[f"band_{band + 1}"], crs, eighth, (11, 9), f"band_{band + 1}")  # ceil(83 / 8), ceil(70 / 8)
    np.testing.assert_allclose(ds["x"].values, 300_020.0 + 160.0 * (np.arange(9) + 0.5))
    np.testing.assert_allclose(ds["y"].values, 5_000_040.0 - 160.0 * (np.arange(11) + 0.5))
