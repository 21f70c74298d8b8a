"""Rasters that say which pixels are valid with a mask instead of a nodata value.

JPEG-compressed scenes are the common case: the lossy codec cannot keep a nodata value exact, so
GDAL stores a mask beside the pixels (inside the TIFF, in a ``.msk`` sidecar, or as an alpha band),
and the pixels outside it hold compression noise. The reference is the mask written here by hand
and the pixels rasterio decodes, never tilepipe's reader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine

import tilepipe
from tilepipe.errors import StoreError, WorkflowError
from tilepipe.store import ResultStore
from tilepipe.workflow import load_workflow

from helpers import Checker, conv, dense_scene, reference, run_tilepipe, sequential, write_geotiff

SHAPE = (70, 90)  # (rows, cols): neither a multiple of the tile size nor of JPEG's 8 x 8 blocks
GRID: dict[str, Any] = {"crs": "EPSG:32633", "transform": Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_200_000.0)}


def write_masked_jpeg(path: Path, how: str) -> tuple[np.ndarray, np.ndarray]:
    """An RGB scene, JPEG-compressed, whose valid pixels are a diagonal swath, masked as ``how`` says.

    ``how``: "internal" (a mask inside the TIFF, YCbCr), "sidecar" (a ``.msk`` file, plain JPEG)
    or "alpha" (a fourth, alpha band; deflate, since JPEG would blur the alpha itself, with
    leftover colours under the transparent pixels). Returns the mask ``(y, x)`` (True: valid)
    and every band as rasterio decodes it ``(band, y, x)``, masked pixels and their noise included.
    """
    rows, cols = SHAPE
    y, x = np.mgrid[:rows, :cols]
    valid = (np.abs(y - x * rows / cols) < 18) & (x > 6)  # edges through JPEG blocks: noise spills past them
    rng = np.random.default_rng(4)
    rgb = np.stack([40 + 2 * y, 60 + x, 200 - x - y]).astype(np.float64) + rng.normal(0, 6, (3, rows, cols))
    # Zero outside, as a producer writes it (the codec's noise spills over); under an alpha band, leftovers.
    outside = rng.integers(1, 255, (3, rows, cols)) if how == "alpha" else 0
    rgb = np.where(valid, np.clip(rgb, 1, 255), outside).astype(np.uint8)
    profile = {"driver": "GTiff", "height": rows, "width": cols, "dtype": "uint8", "compress": "JPEG",
               "tiled": True, "blockxsize": 32, "blockysize": 32, **GRID}
    mask = np.where(valid, 255, 0).astype(np.uint8)
    if how == "alpha":
        profile["compress"] = "DEFLATE"
        with rasterio.open(path, "w", count=4, photometric="RGB", alpha="YES", **profile) as dst:
            dst.write(np.concatenate([rgb, mask[None]]))
    else:
        photometric = {"photometric": "YCBCR"} if how == "internal" else {}
        with (rasterio.Env(GDAL_TIFF_INTERNAL_MASK=how == "internal"),
              rasterio.open(path, "w", count=3, **photometric, **profile) as dst):
            dst.write(rgb)
            dst.write_mask(mask)
    assert path.with_name(path.name + ".msk").exists() == (how == "sidecar")
    with rasterio.open(path) as src:
        assert src.nodata is None
        decoded = src.read()
    assert decoded[:, ~valid].any(), "no noise outside the mask: the test would not bite"
    return valid, decoded


@pytest.mark.parametrize("how", ["internal", "sidecar", "alpha"])
def test_pixels_outside_the_mask_are_absent(how: str, tmp_path: Path) -> None:
    tif = tmp_path / "scene.tif"
    valid, decoded = write_masked_jpeg(tif, how)
    scene = tilepipe.ingest(tif, tmp_path / "s.zarr", tile_size=32, halo=3)
    expected = np.where(valid, decoded, 0)
    np.testing.assert_array_equal(dense_scene(tmp_path / "s.zarr"), np.moveaxis(expected, 0, -1))
    # The store records that the mask was honoured: per raster where a sidecar makes it several files.
    assert scene.info.source["mask"] == ([True] if how == "sidecar" else True)
    assert scene.info.nodata is None


def test_ignoring_the_mask_reads_its_pixels_as_data_and_is_another_scene(tmp_path: Path) -> None:
    tif = tmp_path / "scene.tif"
    valid, decoded = write_masked_jpeg(tif, "internal")
    store = tmp_path / "s.zarr"
    scene = tilepipe.ingest(tif, store, tile_size=32, halo=3, mask=False)
    np.testing.assert_array_equal(dense_scene(store), np.moveaxis(decoded, 0, -1))
    assert "mask" not in scene.info.source
    with pytest.raises(StoreError, match=r"the raster's mask ignored \(asked: honoured\)"):
        tilepipe.ingest(tif, store, tile_size=32, halo=3)
    # The CLI: the mask by default, --ignore-mask to read through it.
    for flags, want in (([], np.where(valid, decoded, 0)), (["--ignore-mask"], decoded)):
        out = tmp_path / f"cli{len(flags)}.zarr"
        proc = run_tilepipe("ingest", str(tif), str(out), "--tile-size", "32", "--halo", "3", *flags)
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_array_equal(dense_scene(out), np.moveaxis(want, 0, -1))


def test_each_raster_of_a_stack_keeps_its_own_mask(tmp_path: Path) -> None:
    tif, plain = tmp_path / "masked.tif", tmp_path / "plain.tif"
    valid, decoded = write_masked_jpeg(tif, "internal")
    band = np.arange(1, SHAPE[0] * SHAPE[1] + 1, dtype=np.uint16).reshape(1, *SHAPE) % 250 + 1  # no mask, no zeros
    write_geotiff(plain, band, **GRID)
    scene = tilepipe.ingest([str(plain), str(tif)], tmp_path / "s.zarr", tile_size=32, halo=3)
    expected = np.concatenate([band, np.where(valid, decoded, 0)])
    np.testing.assert_array_equal(dense_scene(tmp_path / "s.zarr"), np.moveaxis(expected, 0, -1))
    assert scene.info.source["mask"] == [False, True]


def test_the_workflow_input_takes_mask(tmp_path: Path) -> None:
    def load(section: str) -> Any:
        path = tmp_path / "wf.yaml"
        path.write_text(f"input: {section}\nmodel: {{builtin: demo}}\noutput: {{zarr: out/r.zarr}}\n")
        return load_workflow(path)

    assert load("{path: scene.tif}").input.mask is True
    assert load("{path: scene.tif, mask: false}").input.mask is False
    with pytest.raises(WorkflowError, match=r"input\.mask: expected true or false, got 'no'"):
        load("{path: scene.tif, mask: 'no'}")
    with pytest.raises(WorkflowError, match=r"input\.mask: only valid with 'input\.path'"):
        load("{synthetic: {shape: [8, 8]}, mask: false}")


@pytest.mark.cluster
def test_a_run_over_a_masked_jpeg_equals_the_model_on_the_masked_scene(
    tmp_path: Path, dask_client: Any, assert_exact: Checker
) -> None:
    tif = tmp_path / "scene.tif"
    valid, decoded = write_masked_jpeg(tif, "internal")
    import keras

    model = sequential(3, conv(4, 3, padding="same", activation="relu",
                               kernel_initializer=keras.initializers.RandomNormal(stddev=0.01)),
                       conv(2, 3, padding="same", activation="tanh"), seed=7)
    tilepipe.ingest(tif, tmp_path / "s.zarr", tile_size=32, model=model)
    tilepipe.run(tmp_path / "s.zarr", model, tmp_path / "r.zarr", client=dask_client)
    dense = np.moveaxis(np.where(valid, decoded, 0), 0, -1).astype(np.float32)
    assert_exact(ResultStore.open(tmp_path / "r.zarr", mode="r").read(), reference(model, dense), "masked JPEG")
