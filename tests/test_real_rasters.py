"""Real GeoTIFFs (rasterio's test files, in ../shared/data) through ingest + run.

The reference reads each file with rasterio directly (nodata pixels -> 0, as absent entries
densify) and runs Keras on the whole dense scene; tilepipe's stores are never the reference.
The files stay in the shared folder; tests skip where it is absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS

import tilepipe
from tilepipe.errors import InputError
from tilepipe.store import ResultStore

from helpers import Checker, conv_model, expected_status, reference

pytestmark = pytest.mark.cluster


def _read_dense(path: Path, nodata: float | None = None) -> tuple[np.ndarray, Any, Any]:
    """``(y, x, band)`` float32 with nodata (the file's, or ``nodata``) set to 0; and CRS, transform."""
    with rasterio.open(path) as src:
        data = src.read()
        # The file's own mask, or the overriding nodata value.
        valid = src.read_masks() != 0 if nodata is None else data != np.asarray(nodata, dtype=data.dtype)
        crs, transform = src.crs, src.transform
    dense = np.where(valid, data, 0).astype(np.float32)
    return np.moveaxis(dense, 0, -1), crs, transform


def _check_raster(
    path: Path, tmp_path: Path, client: Any, assert_exact: Checker, *, tile_size: int, seed: int,
    nodata: float | None = None,
) -> dict[str, Any]:
    dense, crs, transform = _read_dense(path, nodata)
    # A dilated layer, a sigmoid at the end; small first weights: uint8 inputs reach 255, and the
    # output should not saturate.
    model = conv_model(dense.shape[2], (4, 3, "same", "relu"), (3, 3, "same", "tanh", 2), (2, 1, "same", "sigmoid"),
                       seed=seed, input_scale=0.01)
    model_path = tmp_path / "m.keras"
    model.save(model_path)
    scene, result = tmp_path / "scene.zarr", tmp_path / "result.zarr"
    tilepipe.ingest(str(path), scene, tile_size=tile_size, model=model, nodata=nodata, client=client)
    report = tilepipe.run(scene, str(model_path), result, client=client)
    store = ResultStore.open(result, mode="r")
    ref = reference(model, dense)
    if np.any(dense):
        assert np.std(ref) > 1e-3, "the model saturates: the comparison would say little"
    assert_exact(store.read(), ref, path.name)
    attrs = store.attrs
    # Georeferencing carried through unchanged ('same' layers only: no shift).
    assert attrs["crs_wkt"] == crs.to_wkt()
    assert CRS.from_wkt(attrs["crs_wkt"]) == crs
    np.testing.assert_array_equal(attrs["transform"], list(transform)[:6])
    info = tilepipe.info(scene)
    assert info["shape"] == list(dense.shape[:2]) and info["bands"] == dense.shape[2]
    assert info["halo"] == tilepipe.footprint_of(model).halo
    assert info["tiles_occupied"] == int((expected_status(dense, tile_size, info["halo"]) == 1).sum())
    assert report.computed + report.empty == report.tiles_total == info["tiles_total"]
    return info


def test_rgb1_nodata_collar(shared_data: Path, tmp_path: Path, dask_client: Any, assert_exact: Checker) -> None:
    info = _check_raster(shared_data / "rgb1.tif", tmp_path, dask_client, assert_exact, tile_size=256, seed=1)
    assert info["tiles_total"] == 4 and info["nodata"] == 0


def test_world_byte_geographic_non_square(
    shared_data: Path, tmp_path: Path, dask_client: Any, assert_exact: Checker
) -> None:
    info = _check_raster(shared_data / "world.byte.tif", tmp_path, dask_client, assert_exact, tile_size=256, seed=2)
    assert info["crs"] == "EPSG:4326"
    assert info["tiles_total"] == 5 * 12  # neither 1200 nor 2880 is a multiple of 256
    assert 0 < info["tiles_occupied"] < info["tiles_total"]  # the open ocean tiles are empty


def test_shade_nodata_255_densifies_to_zero(
    shared_data: Path, tmp_path: Path, dask_client: Any, assert_exact: Checker
) -> None:
    # shade.tif holds only 0 and 255 (= nodata): the scene is all absent entries, so the
    # result is the response to zeros, and nowhere the response to 255.
    info = _check_raster(shared_data / "shade.tif", tmp_path, dask_client, assert_exact, tile_size=256, seed=3)
    assert info["nodata"] == 255 and info["tiles_occupied"] == 0


def test_shade_with_nodata_overridden(
    shared_data: Path, tmp_path: Path, dask_client: Any, assert_exact: Checker
) -> None:
    # nodata=0 instead: the 255s are values now, and the zeros are absent.
    info = _check_raster(
        shared_data / "shade.tif", tmp_path, dask_client, assert_exact, tile_size=256, seed=4, nodata=0
    )
    assert info["nodata"] == 0 and info["tiles_occupied"] > 0


def test_all_nodata_scene_narrower_than_a_tile(
    shared_data: Path, tmp_path: Path, dask_client: Any, assert_exact: Checker
) -> None:
    info = _check_raster(shared_data / "all-nodata.tif", tmp_path, dask_client, assert_exact, tile_size=512, seed=5)
    assert info["tiles_occupied"] == 0 and info["tiles_total"] == 5 and info["bands"] == 4
    assert info["dtype"] == "uint16"


def test_float_raster_with_far_nodata(
    shared_data: Path, tmp_path: Path, dask_client: Any, assert_exact: Checker
) -> None:
    info = _check_raster(
        shared_data / "float_raster_with_nodata.tif", tmp_path, dask_client, assert_exact, tile_size=256, seed=6
    )
    assert info["tiles_total"] == 1 and info["nonzero_entries"] == 3  # only the three 0.25s are values
    assert info["nodata"] == pytest.approx(-3.4e38, rel=1e-6)


@pytest.mark.parametrize(
    "use_client",
    [False, True],
    ids=["threads", "cluster"],
)
def test_corrupt_tiff_is_an_input_error(
    use_client: bool, shared_data: Path, tmp_path: Path, dask_client: Any
) -> None:
    scene = tmp_path / "scene.zarr"
    with pytest.raises(InputError, match=r"corrupt\.tif"):
        tilepipe.ingest(str(shared_data / "corrupt.tif"), scene, tile_size=512,
                        client=dask_client if use_client else None)
    # Nothing half-written that looks like a scene (no zero-filled tiles).
    assert not (scene / "zarr.json").exists()
