"""User mistakes end in tilepipe's own errors, which name what is wrong and refine the builtins."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from affine import Affine
from keras import layers as kl

import tilepipe
from tilepipe.errors import (
    ClusterError,
    InputError,
    ModelError,
    StoreError,
    TilepipeError,
    UntileableModelError,
    WorkflowError,
)

from helpers import assert_one_clear_line, empty_sparse_tensor, run_tilepipe, write_geotiff


def _conv_model(bands: int = 2) -> keras.Model:
    return keras.Sequential([keras.Input((None, None, bands)), kl.Conv2D(1, 3, padding="same")])


def _coo(shape: tuple[int, int, int] = (20, 20, 2)) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    return np.array([[3, 4, 0], [10, 11, 1]]), np.array([1.0, 2.0], np.float32), shape


def _untileable() -> list[tuple[keras.Model, str]]:
    gap = keras.Sequential(
        [keras.Input((None, None, 2)), kl.Conv2D(3, 3, padding="same"), kl.GlobalAveragePooling2D(name="pool_all")]
    )
    flat = keras.Sequential(
        [keras.Input((16, 16, 2)), kl.Conv2D(3, 3), kl.Flatten(name="flatten_it"), kl.Dense(4, name="head")]
    )
    return [(gap, "pool_all"), (flat, "flatten_it")]


# -- the exception tree -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (InputError, ValueError),
        (ModelError, ValueError),
        (UntileableModelError, ModelError),
        (UntileableModelError, ValueError),
        (StoreError, OSError),
        (WorkflowError, ValueError),
        (ClusterError, RuntimeError),
    ],
)
def test_errors_refine_builtins(error: type[Exception], builtin: type[Exception]) -> None:
    assert issubclass(error, TilepipeError)
    assert issubclass(error, builtin)
    with pytest.raises(builtin):
        raise error("x")


def test_errors_are_exported_at_the_top() -> None:
    for name in ("TilepipeError", "InputError", "ModelError", "UntileableModelError", "StoreError"):
        assert getattr(tilepipe, name) is getattr(tilepipe.errors, name)


# -- inputs -----------------------------------------------------------------------------------------


def test_missing_geotiff_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "scene.tif"
    with pytest.raises(InputError, match=r"scene\.tif") as err:
        tilepipe.ingest(str(missing), tmp_path / "s.zarr")
    assert str(missing) in str(err.value)
    assert isinstance(err.value, ValueError)
    assert not (tmp_path / "s.zarr").exists()


def test_not_a_raster_names_the_file(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.tif"
    bogus.write_text("not a tiff")
    with pytest.raises(InputError, match=r"notes\.tif"):
        tilepipe.ingest(str(bogus), tmp_path / "s.zarr")


def test_band_that_does_not_exist(tmp_path: Path) -> None:
    pytest.importorskip("rasterio")
    tif = tmp_path / "two.tif"
    write_geotiff(tif, np.ones((2, 4, 4), np.uint8))
    with pytest.raises(InputError, match="band 3"):
        tilepipe.ingest(str(tif), tmp_path / "s.zarr", bands=[1, 3])


@pytest.mark.parametrize("tile_size", [0, -1, (8, 0), (-2, 8)])
def test_tile_size_must_be_positive(tile_size: Any, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="tile_size"):
        tilepipe.ingest(_coo(), tmp_path / "s.zarr", tile_size=tile_size)
    st_ = empty_sparse_tensor((10, 10, 2))
    with pytest.raises(InputError, match="tile_size"):
        tilepipe.conv_sparse(st_, _conv_model(), tile_size=tile_size)
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ((np.array([[30, 1, 0]]), np.array([1.0]), (20, 20, 2)), "outside"),
        ((np.array([[1, 1]]), np.array([1.0, 2.0]), (20, 20)), "values"),
        ((np.zeros((0, 2)), np.zeros(0), (0, 20)), "> 0"),
        ((np.zeros((0, 4)), np.zeros(0), (2, 2, 2, 2)), "shape"),
        (np.zeros((5, 5)), "tf.SparseTensor"),
    ],
)
def test_bad_in_memory_sources(source: Any, message: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=message):
        tilepipe.ingest(source, tmp_path / "s.zarr")


def test_duplicate_coordinates_are_refused(tmp_path: Path) -> None:
    dup = (np.array([[1, 1, 0], [1, 1, 0]]), np.array([1.0, 2.0]), (8, 8, 1))
    with pytest.raises(InputError, match="duplicate"):
        tilepipe.ingest(dup, tmp_path / "s.zarr", tile_size=4)
    assert not (tmp_path / "s.zarr" / "zarr.json").exists()


@pytest.mark.parametrize(
    "crs",
    [
        "not a crs",
        "EPSG:99999999",
        "EPSG:not-a-code",
    ],
)
def test_bad_crs(crs: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="crs"):
        tilepipe.ingest(_coo(), tmp_path / "s.zarr", crs=crs)
    assert not (tmp_path / "s.zarr").exists()


def test_bad_halo(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="halo"):
        tilepipe.ingest(_coo(), tmp_path / "s.zarr", halo=-1)
    deep = keras.Sequential([keras.Input((None, None, 2)), kl.Conv2D(1, 7, padding="same")])
    with pytest.raises(InputError, match="halo 1 is less than the 3"):
        tilepipe.ingest(_coo(), tmp_path / "s.zarr", halo=1, model=deep)


# -- models -----------------------------------------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.parametrize("name", ["model.h5", "model.keras.bak", "saved_model"])
def test_model_path_must_end_in_keras(name: str, tmp_path: Path, dask_client: Any) -> None:
    path = tmp_path / name
    path.write_bytes(b"whatever")
    with pytest.raises(ModelError, match=r"\.keras"):
        tilepipe.ingest(_coo(), tmp_path / "s.zarr", model=str(path))
    st_ = empty_sparse_tensor((10, 10, 2))
    with pytest.raises(ModelError, match=r"\.keras"):
        tilepipe.conv_sparse(st_, str(path))
    scene = tilepipe.ingest(_coo(), tmp_path / "scene.zarr", tile_size=8, halo=2)
    with pytest.raises(ModelError, match=name):
        tilepipe.run(scene.path, str(path), tmp_path / "r.zarr", client=dask_client)
    assert not (tmp_path / "r.zarr").exists()


def test_missing_or_broken_keras_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such model file"):
        tilepipe.ingest(_coo(), tmp_path / "s.zarr", model=str(tmp_path / "absent.keras"))
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip archive")
    with pytest.raises(ModelError, match=r"broken\.keras"):
        tilepipe.ingest(_coo(), tmp_path / "s.zarr", model=str(broken))


def test_not_a_model() -> None:
    st_ = empty_sparse_tensor((10, 10, 2))
    with pytest.raises(ModelError):
        tilepipe.conv_sparse(st_, object())
    with pytest.raises(ModelError):
        tilepipe.footprint_of(object())


@pytest.mark.cluster
@pytest.mark.parametrize("index", [0, 1], ids=["GlobalAveragePooling2D", "Flatten+Dense"])
def test_untileable_model_names_the_layer(index: int, tmp_path: Path, dask_client: Any) -> None:
    model, layer = _untileable()[index]
    with pytest.raises(UntileableModelError, match=layer) as err:
        tilepipe.footprint_of(model)
    assert isinstance(err.value, ModelError) and isinstance(err.value, ValueError)
    st_ = empty_sparse_tensor((16, 16, 2))
    with pytest.raises(UntileableModelError, match=layer):
        tilepipe.conv_sparse(st_, model)
    with pytest.raises(UntileableModelError, match=layer):
        tilepipe.ingest(_coo(), tmp_path / "s.zarr", model=model)
    path = tmp_path / "untileable.keras"
    model.save(path)
    scene = tilepipe.ingest(_coo(), tmp_path / "scene.zarr", tile_size=8, halo=2)
    with pytest.raises(UntileableModelError, match=layer):
        tilepipe.run(scene.path, str(path), tmp_path / "r.zarr", client=dask_client)
    assert not (tmp_path / "r.zarr").exists()


@pytest.mark.cluster
def test_a_model_file_with_a_non_local_layer_is_named_in_the_refusal(tmp_path: Path, dask_client: Any) -> None:
    # Several model files lie about; the layer's name alone does not say which one to fix.
    model, layer = _untileable()[0]
    path = tmp_path / "pooled.keras"
    model.save(path)
    said = f"{path}: layer '{layer}' (GlobalAveragePooling2D) is not local"
    tif = tmp_path / "scene.tif"
    write_geotiff(tif, np.ones((2, 20, 20), np.uint8), crs="EPSG:32633", transform=Affine(10, 0, 0, 0, -10, 0))
    proc = run_tilepipe("ingest", str(tif), str(tmp_path / "s.zarr"), "--model", str(path))  # footprint read here
    assert_one_clear_line(proc, said)
    scene = tilepipe.ingest(_coo(), tmp_path / "scene.zarr", tile_size=8, halo=2)
    with pytest.raises(UntileableModelError) as err:  # footprint read by a worker
        tilepipe.run(scene.path, str(path), tmp_path / "r.zarr", client=dask_client)
    assert str(err.value).startswith(said)
    with pytest.raises(UntileableModelError) as err:  # a model object has no file to name
        tilepipe.run(scene.path, model, tmp_path / "r.zarr", client=dask_client)
    assert str(err.value).startswith(f"layer '{layer}'")
    assert not (tmp_path / "s.zarr").exists() and not (tmp_path / "r.zarr").exists()


def test_resizing_model_is_refused() -> None:
    # Strided models tile now; a layer that resizes to a fixed size never can.
    resizing = keras.Sequential([keras.Input((None, None, 1)), kl.Resizing(16, 16, name="fixed")])
    with pytest.raises(UntileableModelError, match="fixed"):
        tilepipe.footprint_of(resizing)


@pytest.mark.cluster
def test_bands_mismatch(tmp_path: Path, dask_client: Any) -> None:
    scene = tilepipe.ingest(_coo((20, 20, 3)), tmp_path / "scene.zarr", tile_size=8, halo=2)
    path = tmp_path / "two_bands.keras"
    _conv_model(2).save(path)
    with pytest.raises(ModelError, match="3") as err:
        tilepipe.run(scene.path, str(path), tmp_path / "r.zarr", client=dask_client)
    assert "2" in str(err.value)
    assert not (tmp_path / "r.zarr").exists()
    st_ = empty_sparse_tensor((10, 10, 3))
    with pytest.raises(ModelError, match="channels"):
        tilepipe.conv_sparse(st_, _conv_model(2))


# -- stores -----------------------------------------------------------------------------------------


@pytest.mark.cluster
def test_missing_or_foreign_stores(tmp_path: Path, dask_client: Any) -> None:
    path = tmp_path / "m.keras"
    _conv_model(2).save(path)
    with pytest.raises(StoreError, match="no such scene store") as err:
        tilepipe.run(tmp_path / "absent.zarr", str(path), tmp_path / "r.zarr", client=dask_client)
    assert isinstance(err.value, OSError)
    with pytest.raises(StoreError):
        tilepipe.open_result(tmp_path / "absent.zarr")
    # A result store is not a scene store, and the reverse.
    scene = tilepipe.ingest(_coo(), tmp_path / "scene.zarr", tile_size=8, halo=2)
    tilepipe.run(scene.path, str(path), tmp_path / "r.zarr", client=dask_client)
    with pytest.raises(StoreError, match="scene"):
        tilepipe.open_scene(tmp_path / "r.zarr")
    with pytest.raises(StoreError, match="result"):
        tilepipe.open_result(tmp_path / "scene.zarr")


@pytest.mark.cluster
def test_scene_smaller_than_valid_footprint(tmp_path: Path, dask_client: Any) -> None:
    model = keras.Sequential([keras.Input((None, None, 2)), kl.Conv2D(1, 9, padding="valid")])
    path = tmp_path / "valid9.keras"
    model.save(path)
    coo = (np.array([[1, 2, 0], [5, 29, 1]]), np.array([1.0, 2.0], np.float32), (6, 30, 2))
    scene = tilepipe.ingest(coo, tmp_path / "scene.zarr", tile_size=8, halo=8)
    with pytest.raises(InputError, match="smaller"):
        tilepipe.run(scene.path, str(path), tmp_path / "r.zarr", client=dask_client)
