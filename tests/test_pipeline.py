"""ingest + run on a Dask cluster, compared with the whole-scene dense model.

Every value check is against Keras on the whole dense scene (``model(dense[None])``), computed
here from the test's own arrays, never from tilepipe's stores. All runs share one small cluster
(the ``dask_client`` fixture in conftest.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine

import tilepipe
from tilepipe.errors import StoreError
from tilepipe.store import ResultStore

from helpers import Checker, conv, coo, expected_status, patches, reference, sequential, write_geotiff

pytestmark = pytest.mark.cluster


# -- helpers ----------------------------------------------------------------------------------------


def _save(model: keras.Model, tmp_path: Path, name: str = "m") -> str:
    path = tmp_path / f"{name}.keras"
    model.save(path)
    return str(path)


def _ingest_run(
    source: Any, model_path: str, tmp_path: Path, client: Any, *, tag: str = "", **ingest_kwargs: Any
) -> tuple[np.ndarray, Any, str, str]:
    scene = str(tmp_path / f"scene{tag}.zarr")
    result = str(tmp_path / f"result{tag}.zarr")
    tilepipe.ingest(source, scene, **ingest_kwargs)
    report = tilepipe.run(scene, model_path, result, client=client)
    return ResultStore.open(result, mode="r").read(), report, scene, result


# -- values -----------------------------------------------------------------------------------------


def test_multiband_multichannel_tile_not_dividing(tmp_path: Path, dask_client: Any, assert_exact: Checker) -> None:
    model = sequential(3, conv(4, 3, padding="same", activation="relu"),
                          conv(2, 3, padding="same", dilation_rate=2, activation="sigmoid"), seed=0)
    dense = patches((70, 53, 3), [(3, 12, 40, 53), (30, 37, 20, 26), (60, 70, 0, 9)])
    got, report, scene, result = _ingest_run(
        coo(dense), _save(model, tmp_path), tmp_path, dask_client, tile_size=16, model=model
    )
    assert got.shape == (2, 70, 53)
    assert_exact(got, reference(model, dense), "multi-band, multi-channel, 16 px tiles over 70 x 53")
    info = tilepipe.info(scene)
    assert info["tiles_total"] == 5 * 4 and info["shape"] == [70, 53] and info["bands"] == 3
    halo = info["halo"]
    assert halo == tilepipe.footprint_of(model).halo
    # Two output bands, each with its own response to zeros: empty interior tiles are free all the same.
    expected = expected_status(dense, 16, halo, free_interior=True)
    assert (expected == 3).sum() >= 1
    np.testing.assert_array_equal(ResultStore.open(result, mode="r").status(), expected)
    assert report.tiles_total == 20
    assert report.computed == int((expected == 1).sum())
    assert report.empty == int((expected >= 2).sum())  # free tiles count as empty
    assert report.failed == 0 and not report.up_to_date


def test_valid_layers_shrink_and_shift_the_georeferencing(
    tmp_path: Path, dask_client: Any, assert_exact: Checker
) -> None:
    model = sequential(2, conv(3, 5, padding="valid", activation="tanh"),
                          conv(1, 3, padding="same", dilation_rate=3, activation="sigmoid"), seed=1)
    dense = patches((41, 37, 2), [(0, 41, 0, 6), (17, 25, 30, 37)], seed=1)
    transform = (2.0, 0.0, 1000.0, 0.0, -2.0, 5000.0)
    got, _, _, result = _ingest_run(
        coo(dense), _save(model, tmp_path), tmp_path, dask_client, tile_size=10, model=model,
        crs="EPSG:32633", transform=transform,
    )
    assert got.shape == (1, 37, 33)
    assert_exact(got, reference(model, dense), "valid + dilated same, 10 px tiles")
    # Output pixel j sits at input pixel j + 2 (a 5 x 5 'valid' kernel): the transform moves by 2 px.
    np.testing.assert_allclose(ResultStore.open(result, mode="r").attrs["transform"], [2, 0, 1004, 0, -2, 4996])


def test_complete_result_has_nothing_left_to_do(tmp_path: Path, dask_client: Any) -> None:
    model = sequential(2, conv(1, 5, padding="valid"), seed=1)
    dense = patches((41, 37, 2), [(3, 9, 4, 10)], seed=1)
    _, _, _, result = _ingest_run(coo(dense), _save(model, tmp_path), tmp_path, dask_client,
                                  tile_size=10, model=model)
    info = tilepipe.info(result)
    assert info["complete"]
    assert info["status"]["todo"] == 0, info["status"]


def test_two_dimensional_sparse_tensor_and_integer_values(
    tmp_path: Path, dask_client: Any, assert_exact: Checker
) -> None:
    tf = pytest.importorskip("tensorflow")
    model = sequential(1, conv(2, 3, padding="same", activation="tanh"), seed=14)
    path = _save(model, tmp_path)
    plane = np.zeros((20, 23), np.float32)
    plane[4, 7], plane[19, 22], plane[0, 0] = 3.0, -1.0, 0.5
    got, _, scene, _ = _ingest_run(tf.SparseTensor(*coo(plane)), path, tmp_path, dask_client, tile_size=8, halo=1)
    assert tilepipe.info(scene)["bands"] == 1
    assert_exact(got, reference(model, plane[:, :, None]), "H x W SparseTensor")
    # Integer values beyond uint16 and negative ones keep their dtype in the store.
    ints = np.zeros((20, 20, 1), np.int64)
    ints[3, 3, 0], ints[15, 2, 0] = 70000, -5
    got, _, scene, _ = _ingest_run(coo(ints), path, tmp_path, dask_client, tag="-int", tile_size=8, halo=1)
    assert tilepipe.info(scene)["dtype"] == "int64"
    assert_exact(got, reference(model, ints.astype(np.float32)), "int64 COO values")


def test_scene_smaller_than_one_tile(tmp_path: Path, dask_client: Any, assert_exact: Checker) -> None:
    model = sequential(1, conv(2, 3, padding="same", activation="relu"), conv(1, 5, padding="same"), seed=2)
    dense = patches((12, 13, 1), [(0, 12, 0, 13)], seed=2)
    got, report, scene, _ = _ingest_run(coo(dense), _save(model, tmp_path), tmp_path, dask_client,
                                        tile_size=64, model=model)
    assert tilepipe.info(scene)["tiles_total"] == 1
    assert report.tiles_total == 1 and report.computed == 1
    assert_exact(got, reference(model, dense), "12 x 13 scene in one 64 px tile")


def test_all_empty_scene_is_the_response_to_zeros(tmp_path: Path, dask_client: Any, assert_exact: Checker) -> None:
    model = sequential(2, conv(3, 3, padding="same", activation="relu"),
                          conv(2, 3, padding="same", activation="sigmoid"), seed=3)
    shape = (50, 47, 2)
    empty = (np.zeros((0, 3), np.int64), np.zeros(0, np.float32), shape)
    got, report, scene, _ = _ingest_run(empty, _save(model, tmp_path), tmp_path, dask_client,
                                        tile_size=12, model=model)
    assert tilepipe.info(scene)["tiles_occupied"] == 0
    assert report.computed == 0 and report.empty == report.tiles_total == 5 * 4
    ref = reference(model, np.zeros(shape, np.float32))
    assert_exact(got, ref, "all-empty scene")
    assert np.all(got != 0)  # sigmoid: never zero, and borders differ from the interior
    assert not np.allclose(got[:, 0, 0], got[:, 25, 25])


@pytest.mark.parametrize("out_bands", [1, 2])
def test_every_empty_tile_class(out_bands: int, tmp_path: Path, dask_client: Any, assert_exact: Checker) -> None:
    # 6 x 6 tiles of 9 px over 50 x 52: empty interior, edge and corner tiles around two busy
    # ones. Each output band's array takes that band's response to zeros as its fill value, so
    # empty interior tiles are free (never written) with one band and with two (whose responses differ).
    model = sequential(1, conv(2, 3, padding="same", activation="tanh"),
                          conv(out_bands, 3, padding="same", activation="sigmoid"), seed=4)
    dense = patches((50, 52, 1), [(21, 24, 20, 25), (47, 50, 0, 3)], seed=4)
    got, _, _, result = _ingest_run(
        coo(dense), _save(model, tmp_path), tmp_path, dask_client, tile_size=9, model=model
    )
    ref = reference(model, dense)
    assert_exact(got, ref, f"empty tile classes, {out_bands} output band(s)")
    expected = expected_status(dense, 9, tilepipe.footprint_of(model).halo, free_interior=True)
    assert (expected == 3).sum() >= 4
    np.testing.assert_array_equal(ResultStore.open(result, mode="r").status(), expected)
    for r, c in np.ndindex(expected.shape):  # free: no chunk file in any band; every other tile: one per band
        for band in range(out_bands):
            chunk = Path(result) / f"band_{band + 1}" / "c" / str(r) / str(c)
            assert chunk.is_file() == (expected[r, c] != 3), (band, r, c)
    # Each class on its own: corners, edges and interior empty tiles.
    tile = 9
    for r, c in [(0, 0), (0, 5), (5, 5), (0, 2), (3, 0), (5, 3), (3, 5), (1, 1), (4, 4), (1, 4)]:
        assert expected[r, c] in (2, 3)
        sl = (slice(None), slice(r * tile, (r + 1) * tile), slice(c * tile, (c + 1) * tile))
        assert_exact(got[sl], ref[sl], f"empty tile (row {r}, col {c})")


def test_model_object_and_tuple_tile_size(tmp_path: Path, dask_client: Any, assert_exact: Checker) -> None:
    model = sequential(2, conv(2, 3, padding="same", activation="relu"), seed=5)
    dense = patches((33, 40, 2), [(5, 30, 10, 20)], seed=5)
    scene, result = str(tmp_path / "s.zarr"), str(tmp_path / "r.zarr")
    tilepipe.ingest(coo(dense), scene, tile_size=(7, 11), halo=4)
    report = tilepipe.run(scene, model, result, client=dask_client, batch_size=2)
    assert report.tiles_total == 5 * 4
    assert_exact(ResultStore.open(result, mode="r").read(), reference(model, dense), "keras.Model, (7, 11) tiles")


# -- resume, overwrite, halo ------------------------------------------------------------------------


def test_second_run_is_up_to_date_and_changes_nothing(tmp_path: Path, dask_client: Any) -> None:
    model = sequential(1, conv(1, 3, padding="same", activation="sigmoid"), seed=6)
    dense = patches((30, 30, 1), [(10, 20, 10, 20)], seed=6)
    path = _save(model, tmp_path)
    first, _, scene, result = _ingest_run(coo(dense), path, tmp_path, dask_client, tile_size=8, model=model)
    report = tilepipe.run(scene, path, result, client=dask_client)
    assert report.up_to_date
    np.testing.assert_array_equal(ResultStore.open(result, mode="r").read(), first)


def test_interrupted_run_resumes_only_missing_tiles(tmp_path: Path, dask_client: Any, assert_exact: Checker) -> None:
    model = sequential(2, conv(3, 3, padding="same", activation="relu"), conv(2, 3, padding="same"), seed=7)
    dense = patches((40, 40, 2), [(0, 40, 0, 40)], seed=7)
    path = _save(model, tmp_path)
    _, first, scene, result = _ingest_run(coo(dense), path, tmp_path, dask_client, tile_size=10, model=model)
    assert first.computed == 16
    # Pretend the run died after some tiles: their status is 0 and their chunks were never written.
    lost = [(0, 0), (1, 2), (3, 3)]
    store = ResultStore.open(result)
    store.set_status(np.array([r for r, _ in lost]), np.array([c for _, c in lost]), 0)
    store.mark_incomplete()
    for r, c in lost:
        for band in range(2):
            chunk = Path(result) / f"band_{band + 1}" / "c" / str(r) / str(c)
            assert chunk.is_file()
            chunk.unlink()
    with pytest.raises(StoreError, match="incomplete"):
        ResultStore.open(result, mode="r").read()
    report = tilepipe.run(scene, path, result, client=dask_client)
    assert not report.up_to_date
    assert report.already_done == 16 - len(lost)
    assert report.computed + report.empty == len(lost)
    got = ResultStore.open(result, mode="r").read()
    assert_exact(got, reference(model, dense), "resumed run")
    assert np.all(ResultStore.open(result, mode="r").status() == 1)


def test_other_model_into_same_result_needs_overwrite(
    tmp_path: Path, dask_client: Any, assert_exact: Checker
) -> None:
    a = sequential(1, conv(1, 3, padding="same", activation="relu"), seed=8)
    b = sequential(1, conv(1, 3, padding="same", activation="sigmoid"), seed=9)
    dense = patches((20, 20, 1), [(2, 18, 2, 18)], seed=8)
    path_a, path_b = _save(a, tmp_path, "a"), _save(b, tmp_path, "b")
    first, _, scene, result = _ingest_run(coo(dense), path_a, tmp_path, dask_client, tile_size=8, halo=2)
    with pytest.raises(StoreError, match="overwrite"):
        tilepipe.run(scene, path_b, result, client=dask_client)
    np.testing.assert_array_equal(ResultStore.open(result, mode="r").read(), first)  # left alone
    tilepipe.run(scene, path_b, result, client=dask_client, overwrite=True)
    assert_exact(ResultStore.open(result, mode="r").read(), reference(b, dense), "overwritten with model b")


def test_store_halo_smaller_than_the_model_needs(tmp_path: Path, dask_client: Any) -> None:
    model = sequential(1, conv(1, 3, padding="same"), conv(1, 5, padding="same"), seed=10)
    need = tilepipe.footprint_of(model).halo
    assert need == 3
    scene, result = str(tmp_path / "s.zarr"), str(tmp_path / "r.zarr")
    tilepipe.ingest(coo(patches((20, 20, 1), [(5, 9, 5, 9)])), scene, tile_size=8, halo=need - 1)
    with pytest.raises(StoreError, match="halo") as err:
        tilepipe.run(scene, _save(model, tmp_path), result, client=dask_client)
    assert str(need) in str(err.value)
    assert not Path(result).exists()


# -- georeferencing and interoperability ------------------------------------------------------------


def test_georeferencing_and_xarray(tmp_path: Path, dask_client: Any, assert_exact: Checker) -> None:
    xr = pytest.importorskip("xarray")
    # One output band and empty interior tiles: those are never written and read as the
    # store's fill value (the response to zeros), which xarray must not turn into NaN.
    model = sequential(2, conv(1, 3, padding="same", activation="sigmoid"), seed=11)
    dense = patches((40, 48, 2), [(0, 6, 3, 27)], seed=11)
    transform = (30.0, 0.0, 500000.0, 0.0, -30.0, 4600000.0)
    got, report, _, result = _ingest_run(
        coo(dense), _save(model, tmp_path), tmp_path, dask_client, tile_size=8, model=model,
        crs="EPSG:32633", transform=Affine(*transform),
    )
    assert report.empty > 0
    ref = reference(model, dense)
    assert_exact(got, ref, "georeferenced")
    attrs = ResultStore.open(result, mode="r").attrs
    assert CRS.from_wkt(attrs["crs_wkt"]) == CRS.from_epsg(32633)
    np.testing.assert_allclose(attrs["transform"], transform)
    prov = attrs["provenance"]
    assert prov["halo"] == 1 and prov["tile_size"] == [8, 8] and len(prov["model_sha256"]) == 64

    ds = xr.open_zarr(result, consolidated=False)
    assert ds["band_1"].dims == ("y", "x")
    assert ds["band_1"].shape == (40, 48)
    assert_exact(ds["band_1"].values[None], ref, "through xarray")
    np.testing.assert_allclose(ds["x"].values, 500000 + 30 * (np.arange(48) + 0.5))
    np.testing.assert_allclose(ds["y"].values, 4600000 - 30 * (np.arange(40) + 0.5))


def test_geotiff_ingest(tmp_path: Path, dask_client: Any, assert_exact: Checker) -> None:
    rng = np.random.default_rng(12)
    rows, cols = 45, 38
    pixels = rng.integers(1, 4000, size=(3, rows, cols), dtype=np.uint16)
    pixels[:, :, :12] = 0  # a nodata collar
    pixels[:, rng.random((rows, cols)) < 0.3] = 0
    pixels[1, 30:, :] = 0  # one band empty where the others are not
    tif = tmp_path / "scene.tif"
    transform = Affine(10.0, 0.0, 300000.0, 0.0, -10.0, 5000000.0)
    write_geotiff(tif, pixels, crs="EPSG:32618", transform=transform, nodata=0)
    model = sequential(3, conv(2, 3, padding="same", activation="relu"),
                          conv(2, 3, padding="valid", activation="sigmoid"), seed=12)
    # The reference reads the file with rasterio itself: (band, y, x) -> (y, x, band), nodata -> 0.
    with rasterio.open(tif) as src:
        data = src.read().astype(np.float32)
        data[src.read_masks() == 0] = 0
        assert src.nodata == 0
    got, _, scene, result = _ingest_run(
        str(tif), _save(model, tmp_path), tmp_path, dask_client, tile_size=16, model=model
    )
    assert_exact(got, reference(model, np.moveaxis(data, 0, -1)), "3-band uint16 GeoTIFF")
    info = tilepipe.info(scene)
    assert info["bands"] == 3 and info["dtype"] == "uint16" and info["crs"] == "EPSG:32618"
    attrs = ResultStore.open(result, mode="r").attrs
    assert CRS.from_wkt(attrs["crs_wkt"]) == CRS.from_epsg(32618)
    # One 'valid' 3 x 3 layer: output pixel 0 sits at input pixel 1.
    np.testing.assert_allclose(attrs["transform"], [10, 0, 300010, 0, -10, 4999990])

    # A band subset, in a chosen order.
    sub = sequential(2, conv(1, 3, padding="same", activation="tanh"), seed=13)
    got2, _, _, _ = _ingest_run(str(tif), _save(sub, tmp_path, "sub"), tmp_path, dask_client, tag="-bands",
                                tile_size=16, model=sub, bands=[3, 1])
    assert_exact(got2, reference(sub, np.moveaxis(data[[2, 0]], 0, -1)), "GeoTIFF bands [3, 1]")


def test_reingest_same_source_is_reused_and_other_is_refused(tmp_path: Path) -> None:
    dense = patches((20, 20, 1), [(5, 9, 5, 9)])
    scene = str(tmp_path / "s.zarr")
    tilepipe.ingest(coo(dense), scene, tile_size=8, halo=2)
    tilepipe.ingest(coo(dense), scene, tile_size=8, halo=2)  # same scene, same tiling: reused
    other = patches((20, 20, 1), [(1, 3, 1, 3)], seed=1)
    with pytest.raises(StoreError, match="overwrite"):
        tilepipe.ingest(coo(other), scene, tile_size=8, halo=2)
    tilepipe.ingest(coo(other), scene, tile_size=8, halo=2, overwrite=True)
    assert tilepipe.info(scene)["nonzero_entries"] == int(np.count_nonzero(other))
    shutil.rmtree(scene)


def test_stores_given_as_file_urls(tmp_path: Path, dask_client: Any, assert_exact: Checker) -> None:
    """Scene and result stores given as ``file://`` URLs, as a workflow on a shared filesystem may name them."""
    model = sequential(2, conv(3, 3, padding="same", activation="relu"), conv(1, 3, padding="same"), seed=9)
    model_path = tmp_path / "m.keras"
    model.save(model_path)
    dense = patches((70, 90, 2), [(10, 20, 30, 45), (60, 70, 80, 90)], seed=9)
    scene_url = (tmp_path / "scene.zarr").as_uri()
    result_url = (tmp_path / "result.zarr").as_uri()
    tilepipe.ingest(coo(dense), scene_url, tile_size=32, model=model_path)
    report = tilepipe.run(scene_url, model_path, result_url, client=dask_client)
    assert report.computed > 0
    got = ResultStore.open(result_url).read()
    assert_exact(got, reference(model, dense), "file:// URLs")
