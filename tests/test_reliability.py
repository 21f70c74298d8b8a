"""What a user meets in ordinary use, checked against the whole-scene dense model.

A changed input is noticed, also when it is rewritten while ingest reads it; every
empty-tile border class is exact; a 'valid' model with a non-square kernel places its
output right (all six transform coefficients); nodata other than zero; a user's script
that builds its model at module level runs on the embedded cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine

import tilepipe
from tilepipe.errors import InputError, StoreError
from tilepipe.store import ResultStore

from helpers import Checker, conv_model, dense_scene, reference, sparse_scene, write_geotiff


def _save(model: Any, folder: Path, name: str = "model") -> str:
    path = str(folder / f"{name}.keras")
    model.save(path)
    return path


def test_a_block_rewritten_in_place_is_a_new_scene(tmp_path: Path, dask_client: Any, assert_exact: Checker) -> None:
    # Larger than 2 MiB, so that a checksum of the first and last MiB would not see the middle.
    rng = np.random.default_rng(1)
    data = sparse_scene(rng, (2, 1300, 1300), 0.02, high=255, dtype="uint8")
    tif = tmp_path / "scene.tif"
    write_geotiff(tif, data, crs="EPSG:32633", transform=Affine(10, 0, 500000, 0, -10, 4000000))
    assert tif.stat().st_size > 3 * 2**20
    model = conv_model(2, (2, 3, "same", "relu"), seed=3)
    path = _save(model, tmp_path)
    store, result = tmp_path / "scene.zarr", tmp_path / "result.zarr"
    tilepipe.ingest(tif, store, tile_size=512, model=path, client=dask_client)
    tilepipe.run(store, path, result, client=dask_client)

    # Rewrite a 200 x 200 block in the middle, in place, and put the modification time back.
    before = tif.stat()
    new_block = np.full((2, 200, 200), 77, np.uint8)
    with rasterio.open(tif, "r+") as dst:
        dst.write(new_block, window=rasterio.windows.Window(550, 550, 200, 200))
    os.utime(tif, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert tif.stat().st_size == before.st_size and tif.stat().st_mtime_ns == before.st_mtime_ns

    with pytest.raises(StoreError, match="as it was before it changed"):
        tilepipe.ingest(tif, store, tile_size=512, model=path, client=dask_client)
    tilepipe.ingest(tif, store, tile_size=512, model=path, client=dask_client, overwrite=True)
    tilepipe.run(store, path, result, client=dask_client, overwrite=True)
    data[:, 550:750, 550:750] = 77
    assert_exact(ResultStore.open(result, mode="r").read(), reference(model, np.moveaxis(data, 0, -1)),
                 "after an in-place rewrite")


def test_a_touched_file_with_the_same_bytes_is_the_same_scene(tmp_path: Path) -> None:
    data = np.zeros((1, 64, 64), np.uint8)
    data[0, 10:20, 30:40] = 9
    tif = tmp_path / "scene.tif"
    write_geotiff(tif, data, crs="EPSG:4326", transform=Affine(0.1, 0, 10, 0, -0.1, 50))
    first = tilepipe.ingest(tif, tmp_path / "s.zarr", tile_size=32, halo=2)
    os.utime(tif, ns=(1, 1))
    again = tilepipe.ingest(tif, tmp_path / "s.zarr", tile_size=32, halo=2)  # reused: no --overwrite needed
    assert again.info.source["sha256"] == first.info.source["sha256"]


def _rewrite_after_the_first_block(monkeypatch: pytest.MonkeyPatch, target: Path, content: Path) -> threading.Event:
    """Copy ``content`` over ``target`` (as ``cp`` does: same inode, new bytes) once ingest's first block is read.

    The hook wraps the real block task, which reads the real file: only the moment of the rewrite is chosen.
    Returns an event set once the file was rewritten.
    """
    from tilepipe.execute import ingest as ingest_module

    real = ingest_module.ingest_raster_blocks
    done, lock = threading.Event(), threading.Lock()

    def block_then_rewrite(*args: Any) -> Any:
        result = real(*args)
        with lock:
            if not done.is_set():
                shutil.copyfile(content, target)
                done.set()
        return result

    monkeypatch.setattr(ingest_module, "ingest_raster_blocks", block_then_rewrite)
    return done


@pytest.mark.parametrize("stacked", [False, True], ids=["one raster", "band stack"])
def test_an_input_rewritten_while_ingest_reads_it_fails_and_leaves_no_store(
    stacked: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(6)
    profile = {"crs": "EPSG:32633", "transform": Affine(10, 0, 500000, 0, -10, 4000000)}
    old, new = (sparse_scene(rng, (1, 96, 96), 0.3, high=200, dtype="uint8") for _ in range(2))
    first, tif, other = tmp_path / "first.tif", tmp_path / "scene.tif", tmp_path / "other.tif"
    write_geotiff(first, np.full((1, 96, 96), 3, np.uint8), **profile)
    write_geotiff(tif, old, **profile)
    write_geotiff(other, new, **profile)  # the same grid and type: only the pixels differ
    source: Any = [str(first), str(tif)] if stacked else str(tif)
    store = tmp_path / "scene.zarr"
    rewritten = _rewrite_after_the_first_block(monkeypatch, tif, other)

    with pytest.raises(InputError) as err:
        tilepipe.ingest(source, store, tile_size=16, halo=2)  # 6 x 6 tiles, 16 blocks of one tile
    assert rewritten.is_set()
    assert str(err.value) == f"{tif}: changed while it was read; run again"
    assert not store.exists()  # nothing half old, half new is left to be taken for the scene

    # Run again: the file as it is now, read whole.
    monkeypatch.undo()
    tilepipe.ingest(source, store, tile_size=16, halo=2)
    expected = np.concatenate([np.full((1, 96, 96), 3, np.uint8), new]) if stacked else new
    np.testing.assert_array_equal(dense_scene(store), np.moveaxis(expected, 0, -1))


def test_an_input_touched_while_ingest_reads_it_is_still_the_same_scene(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The file's status moves (a copy of the same bytes over it) but its content does not: the hash decides.
    rng = np.random.default_rng(8)
    data = sparse_scene(rng, (1, 64, 64), 0.3, high=200, dtype="uint8")
    tif, same = tmp_path / "scene.tif", tmp_path / "same.tif"
    write_geotiff(tif, data, crs="EPSG:32633", transform=Affine(10, 0, 0, 0, -10, 0))
    shutil.copyfile(tif, same)
    before = tif.stat()
    rewritten = _rewrite_after_the_first_block(monkeypatch, tif, same)
    scene = tilepipe.ingest(tif, tmp_path / "s.zarr", tile_size=16, halo=2)
    assert rewritten.is_set() and tif.stat().st_ctime_ns != before.st_ctime_ns
    np.testing.assert_array_equal(dense_scene(tmp_path / "s.zarr"), np.moveaxis(data, 0, -1))
    assert scene.attrs["complete"]


@pytest.mark.parametrize("busy", [False, True])
def test_every_empty_tile_border_class_on_a_scene_the_tile_divides(
    busy: bool, tmp_path: Path, dask_client: Any, assert_exact: Checker
) -> None:
    # 4 x 4 tiles of 16: four corners, four kinds of edge, the interior. Two 'same' layers with biases:
    # the response to zeros differs in each class, and is not constant inside a tile near a border.
    model = conv_model(1, (3, 3, "same", "relu"), (2, 5, "same", None), seed=11)
    dense = np.zeros((64, 64, 1), np.float32)
    if busy:
        dense[30:34, 30:34, 0] = np.arange(16).reshape(4, 4) + 1.0
    ref = reference(model, dense)
    per_row = np.ptp(ref[:, :16, 20], axis=1)
    assert np.all(per_row > 0), "the zero response must vary near the border for this test to bite"
    path = _save(model, tmp_path)
    tilepipe.ingest((np.argwhere(dense != 0), dense[dense != 0], dense.shape), tmp_path / "s.zarr", tile_size=16,
                    model=path)
    tilepipe.run(tmp_path / "s.zarr", path, tmp_path / "r.zarr", client=dask_client)
    assert_exact(ResultStore.open(tmp_path / "r.zarr", mode="r").read(), ref, f"empty-tile classes, busy={busy}")


def test_valid_non_square_kernel_places_the_output_by_all_six_coefficients(
    tmp_path: Path, dask_client: Any, assert_exact: Checker
) -> None:
    model = conv_model(1, (2, (3, 5), "valid", "tanh"), seed=5)
    rng = np.random.default_rng(5)
    dense = np.where(rng.random((50, 41, 1)) < 0.1, rng.random((50, 41, 1)), 0).astype(np.float32)
    transform = (2.0, 0.5, 1000.0, -0.25, -3.0, 9000.0)  # rotated and sheared: every coefficient counts
    path = _save(model, tmp_path)
    tilepipe.ingest((np.argwhere(dense != 0), dense[dense != 0], dense.shape), tmp_path / "s.zarr", tile_size=16,
                    model=path, crs="EPSG:32633", transform=transform)
    tilepipe.run(tmp_path / "s.zarr", path, tmp_path / "r.zarr", client=dask_client)
    store = ResultStore.open(tmp_path / "r.zarr", mode="r")
    assert_exact(store.read(), reference(model, dense), "valid (3, 5) kernel")
    # Output pixel (0, 0) is input pixel (row 1, col 2): x = 1000 + 2*2 + 0.5*1, y = 9000 - 0.25*2 - 3*1.
    expected = (2.0, 0.5, 1004.5, -0.25, -3.0, 8996.5)
    np.testing.assert_allclose(store.info.transform, expected)
    tif = tilepipe.export_geotiff(tmp_path / "r.zarr", tmp_path / "r.tif")
    with rasterio.open(tif) as src:
        np.testing.assert_allclose(tuple(src.transform)[:6], expected)
        assert src.shape == (48, 37)


def test_nodata_other_than_zero_on_a_raster_made_here(tmp_path: Path, dask_client: Any, assert_exact: Checker) -> None:
    rng = np.random.default_rng(9)
    data = rng.integers(0, 50, (2, 40, 37)).astype(np.uint16)
    data[:, :, :12] = 7  # a nodata collar ...
    data[0, 20, 20] = 7  # ... and a nodata pixel inside; real zeros stay zeros
    tif = tmp_path / "nd.tif"
    write_geotiff(tif, data, crs="EPSG:32633", transform=Affine(10, 0, 0, 0, -10, 0), nodata=7)
    model = conv_model(2, (2, 3, "same", "relu"), (1, 3, "same", None), seed=2)
    path = _save(model, tmp_path)
    tilepipe.ingest(tif, tmp_path / "s.zarr", tile_size=16, model=path)
    tilepipe.run(tmp_path / "s.zarr", path, tmp_path / "r.zarr", client=dask_client)
    dense = np.where(data == 7, 0, data).astype(np.float32)
    assert_exact(ResultStore.open(tmp_path / "r.zarr", mode="r").read(), reference(model, np.moveaxis(dense, 0, -1)),
                 "nodata 7")


def test_a_script_that_builds_its_model_at_module_level_runs(tmp_path: Path, assert_exact: Checker) -> None:
    # The everyday script: the spawned workers re-import it, and its top-level code starts TensorFlow first.
    script = tmp_path / "my_script.py"
    script.write_text(textwrap.dedent(f"""
        import numpy as np
        import keras
        import tilepipe

        keras.utils.set_random_seed(4)
        model = keras.Sequential([keras.Input((None, None, 1)),
                                  keras.layers.Conv2D(2, 3, padding="same", activation="relu",
                                                      bias_initializer="random_normal")])
        model.save({str(tmp_path / "m.keras")!r})
        dense = np.zeros((48, 40, 1), np.float32)
        dense[5:9, 30:33, 0] = 3.0

        if __name__ == "__main__":
            idx = np.argwhere(dense != 0)
            scene = tilepipe.ingest((idx, dense[dense != 0], dense.shape), {str(tmp_path / "s.zarr")!r},
                                    tile_size=16, model=model)
            report = tilepipe.run(scene, {str(tmp_path / "m.keras")!r}, {str(tmp_path / "r.zarr")!r})
            np.save({str(tmp_path / "ref.npy")!r}, np.asarray(model(dense[None]))[0].transpose(2, 0, 1))
            print("tiles", report.tiles_total)
    """))
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "RuntimeError" not in proc.stderr, proc.stderr[-3000:]
    assert "tiles 9" in proc.stdout
    assert_exact(ResultStore.open(tmp_path / "r.zarr", mode="r").read(), np.load(tmp_path / "ref.npy"),
                 "module-level model script")


@pytest.mark.parametrize("what", ["folder", "file"])
def test_overwrite_never_deletes_what_is_not_a_tilepipe_store(what: str, tmp_path: Path) -> None:
    target = tmp_path / "precious"
    if what == "folder":
        target.mkdir()
        (target / "thesis.txt").write_text("years of work")
    else:
        target.write_text("years of work")
    dense = np.zeros((20, 20, 1), np.float32)
    dense[3, 4, 0] = 1.0
    with pytest.raises(StoreError, match="replaces only tilepipe stores"):
        tilepipe.ingest((np.argwhere(dense != 0), dense[dense != 0], dense.shape), target, tile_size=16, halo=1,
                        overwrite=True)
    kept = target / "thesis.txt" if what == "folder" else target
    assert kept.read_text() == "years of work"
