"""Multi-band outputs cost what single-band ones do: empty interior tiles are free in every band.

A 3-band model whose three responses to zeros differ (a bias per band) over a sparse scene: the
empty interior tiles are recorded free and no band holds a chunk for them (looked for on disk),
and the result, read by tilepipe, exported to GeoTIFF and resumed, equals Keras on the whole dense
scene. Which tiles are free is worked out here (``helpers.expected_status``), not by tilepipe.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import zarr

import tilepipe
from tilepipe.errors import StoreError
from tilepipe.export import export_geotiff, quicklook
from tilepipe.store import ResultStore
from tilepipe.store.result import STATUS_EMPTY, STATUS_FREE, STATUS_NOT_DONE

from helpers import Checker, conv_model, coo, expected_status, patches, reference

pytestmark = pytest.mark.cluster

BIASES = (0.25, -0.6, 1.5)  # the last layer's, one per band: three different responses to zeros
TILE, HALO = 12, 2


def _biased_model() -> Any:
    """Three bands whose responses to zeros differ: the last layer's biases are :data:`BIASES`."""
    model = conv_model(2, (3, 3, "same", "tanh"), (3, 3, "same", None), seed=51)
    last = model.layers[-1]
    kernel, _ = last.get_weights()
    last.set_weights([kernel, np.asarray(BIASES, np.float32)])
    return model


def _saved(path: Path) -> Any:
    """The model the run used, loaded from its file: the reference runs exactly that one."""
    import keras

    return keras.saving.load_model(path)


def _chunk_files(result: Path) -> dict[tuple[int, int], set[int]]:
    """Every data chunk file on disk: ``(row, col) -> {zero-based bands}``, from the folder tree alone."""
    found: dict[tuple[int, int], set[int]] = {}
    for path in result.rglob("*"):
        parts = path.relative_to(result).parts
        if path.is_file() and len(parts) == 4 and parts[1] == "c" and (m := re.fullmatch(r"band_(\d+)", parts[0])):
            found.setdefault((int(parts[2]), int(parts[3])), set()).add(int(m.group(1)) - 1)
    return found


@pytest.fixture(scope="module")
def three_band(tmp_path_factory: pytest.TempPathFactory, dask_client: Any) -> tuple[Path, Path, Any, np.ndarray, Any]:
    """A 96 x 108 scene with two busy patches in 8 x 9 tiles, and a 3-band run over it."""
    folder = tmp_path_factory.mktemp("three")
    model = _biased_model()
    assert tilepipe.footprint_of(model).halo == HALO
    model_path = folder / "model.keras"
    model.save(model_path)
    dense = patches((96, 108, 2), [(2, 10, 80, 100), (50, 58, 30, 40)], seed=51)
    scene, result = folder / "scene.zarr", folder / "result.zarr"
    tilepipe.ingest(coo(dense), str(scene), tile_size=TILE, model=model)
    report = tilepipe.run(str(scene), str(model_path), str(result), client=dask_client)
    return scene, result, model_path, dense, report


def test_empty_interior_tiles_are_free_in_every_band_and_never_written(
    three_band: tuple[Path, Path, Any, np.ndarray, Any], assert_exact: Checker
) -> None:
    _, result, model_path, dense, report = three_band
    model = _saved(model_path)
    ref = reference(model, dense)
    expected = expected_status(dense, TILE, HALO, free_interior=True)
    free = {(int(r), int(c)) for r, c in zip(*np.nonzero(expected == STATUS_FREE), strict=True)}
    assert len(free) >= 20
    store = ResultStore.open(result, mode="r")
    np.testing.assert_array_equal(store.status(), expected)
    assert report.computed == int((expected == 1).sum()) and report.empty == int((expected >= 2).sum())
    # On disk: not one chunk, in any band, for a free tile; all three for every other tile.
    files = _chunk_files(result)
    assert free.isdisjoint(files)
    for r, c in np.ndindex(expected.shape):
        if (r, c) not in free:
            assert files.get((r, c)) == {0, 1, 2}, (r, c)
    assert not (result / "data").exists()
    # Each band's fill value is its own response to zeros (Keras on an all-zero scene, deep inside).
    zeros = reference(model, np.zeros((48, 48, 2), np.float32))[:, 24, 24]
    assert len(set(np.float32(zeros).tolist())) == 3
    np.testing.assert_allclose(store.fill_values, zeros, rtol=1e-5)
    assert tilepipe.info(result)["fill_values"] == list(store.fill_values)
    assert_exact(store.read(), ref, "three bands, free interior tiles")


def test_three_band_geotiff_and_quicklook(
    three_band: tuple[Path, Path, Any, np.ndarray, Any], tmp_path: Path, assert_exact: Checker
) -> None:
    _, result, model_path, dense, _ = three_band
    ref = reference(_saved(model_path), dense)
    out = export_geotiff(result, tmp_path / "out.tif")
    with rasterio.open(out) as src:
        assert src.count == 3
        assert_exact(src.read(), ref, "GeoTIFF of three bands")
    one = export_geotiff(result, tmp_path / "band3.tif", bands=[2])
    with rasterio.open(one) as src:
        assert_exact(src.read(1), ref[2], "GeoTIFF of band 3 alone")
    assert quicklook(result, tmp_path / "look.png", band=2).stat().st_size > 0


def test_stray_or_missing_chunk_in_another_band_is_found_and_repaired(
    three_band: tuple[Path, Path, Any, np.ndarray, Any], tmp_path: Path, dask_client: Any, assert_exact: Checker
) -> None:
    scene, original, model_path, dense, _ = three_band
    result = tmp_path / "result.zarr"
    shutil.copytree(original, result)
    status = ResultStore.open(result, mode="r").status()
    free = tuple(int(v) for v in np.argwhere(status == STATUS_FREE)[0])
    busy = tuple(int(v) for v in np.argwhere(status == 1)[0])
    rows, cols = slice(free[0] * TILE, (free[0] + 1) * TILE), slice(free[1] * TILE, (free[1] + 1) * TILE)
    ResultStore.open(result).data[2, rows, cols] = 7.0  # a foreign writer's chunk in band 3 of a free tile
    (result / "band_2" / "c" / str(busy[0]) / str(busy[1])).unlink()  # band 2 of a computed tile, gone
    with pytest.raises(StoreError) as caught:
        ResultStore.open(result, mode="r").read()
    problems = {d.describe() for d in ResultStore.open(result, mode="r").damage()}
    assert problems == {
        f"tile (row {free[0]}, col {free[1]}) band 2: holds a data chunk, though the store records the tile free "
        "(it must read as the band's fill value)",
        f"tile (row {busy[0]}, col {busy[1]}) band 1: its data chunk is missing, though the store records the tile "
        "computed",
    }, caught.value
    report = tilepipe.run(str(scene), str(model_path), str(result), client=dask_client)
    assert report.repaired == 2 and not report.up_to_date
    assert _chunk_files(result).keys().isdisjoint({free})
    assert_exact(ResultStore.open(result, mode="r").read(), reference(_saved(model_path), dense), "repaired")


def _as_format_2(result: Path) -> int:
    """Turn a finished format 3 store into what an older tilepipe left half done: one ``(band, y, x)`` array
    ``data`` whose fill value is band 0's, its free tiles not done yet. Returns how many tiles that leaves."""
    group = zarr.open_group(str(result), mode="r+", use_consolidated=False)
    attrs = dict(group.attrs["tilepipe"])
    bands, rows, cols = attrs["shape"]
    th, tw = attrs["tile_size"]
    planes = [group[f"band_{b + 1}"] for b in range(bands)]
    status = np.asarray(group["status"][...])
    data = group.create_array("data", shape=(bands, rows, cols), chunks=(1, th, tw), dtype="float32",
                              fill_value=planes[0].fill_value, dimension_names=("band", "y", "x"),
                              config={"write_empty_chunks": True})
    for r, c in zip(*np.nonzero(status != STATUS_FREE), strict=True):
        rs, cs = slice(r * th, (r + 1) * th), slice(c * tw, (c + 1) * tw)
        for b, plane in enumerate(planes):
            data[b, rs, cs] = plane[rs, cs]
    todo = int((status == STATUS_FREE).sum())
    status[status == STATUS_FREE] = STATUS_NOT_DONE
    group["status"][...] = status
    for b in range(bands):
        shutil.rmtree(result / f"band_{b + 1}")
    shutil.rmtree(result / "spatial_ref")
    group.attrs["tilepipe"] = {**attrs, "format_version": 2, "complete": False}
    zarr.consolidate_metadata(str(result))
    return todo


def test_a_format_2_store_is_still_read_and_resumed(
    three_band: tuple[Path, Path, Any, np.ndarray, Any], tmp_path: Path, dask_client: Any, assert_exact: Checker
) -> None:
    scene, original, model_path, dense, _ = three_band
    result = tmp_path / "result.zarr"
    shutil.copytree(original, result)
    todo = _as_format_2(result)
    report = tilepipe.run(str(scene), str(model_path), str(result), client=dask_client)
    # One fill value (band 0's) for three different responses: the tiles left are written, not free.
    assert report.already_done + report.empty == report.tiles_total and report.empty == todo
    store = ResultStore.open(result, mode="r")
    assert store.info.format_version == 2 and store.complete
    assert set(store.fill_values) == {store.fill_values[0]}
    assert STATUS_FREE not in store.status() and (store.status() == STATUS_EMPTY).sum() >= todo
    ref = reference(_saved(model_path), dense)
    assert_exact(store.read(), ref, "a resumed format 2 store")
    with rasterio.open(export_geotiff(result, tmp_path / "old.tif")) as src:
        assert_exact(src.read(), ref, "GeoTIFF of a format 2 store")
