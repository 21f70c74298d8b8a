"""``tilepipe verify``: a finished result checked against the model recomputed on the scene store.

Real scene and result stores, made by ``tilepipe.ingest`` and ``tilepipe.run`` on a 61 x 75 scene (sides
not multiples of the U-Net's stride 4) cut into 8 px tiles (an 8 x 10 grid, 32 tiles on its border), for a
small U-Net (strided conv and max pooling down, bilinear upsampling and a transposed conv up, skip
concatenations), a stride-1 conv stack and an encoder whose output is at 1/4 of the input's resolution.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tilepipe
from tilepipe.errors import InputError, ModelError, StoreError
from tilepipe.geometry import AxisFootprint, Footprint, Window
from tilepipe.store.result import STATUS_COMPUTED, ResultStore
from tilepipe.verify import TileCheck, check_window, pick_tiles, verify_result

from helpers import assert_one_clear_line, conv, coo, patches, reference, run_tilepipe, sequential

SCENE = (61, 75)
BANDS = 2
TILE = 8
GRID = (8, 10)
RING = {(r, c) for r in range(GRID[0]) for c in range(GRID[1]) if r in (0, GRID[0] - 1) or c in (0, GRID[1] - 1)}
#: The tile the damage tests write wrong numbers into: on the border, so every verify checks it.
DAMAGED = (0, 1)


def _unet() -> Any:
    import keras
    from keras import layers as kl

    keras.utils.set_random_seed(1)
    inp = keras.Input((None, None, BANDS))
    e1 = conv(6, 3, padding="same", activation="relu")(inp)
    d1 = conv(6, 3, strides=2, padding="same", activation="relu")(e1)
    e2 = conv(6, 3, padding="same", activation="relu")(d1)
    bottom = conv(6, 3, padding="same", activation="relu")(kl.MaxPooling2D(2)(e2))
    up2 = kl.UpSampling2D(2, interpolation="bilinear")(bottom)
    x = conv(6, 3, padding="same", activation="relu")(kl.Concatenate()([up2, e2]))
    up1 = kl.Conv2DTranspose(6, 3, strides=2, padding="same")(x)
    return keras.Model(inp, conv(3, 1)(kl.Concatenate()([up1, e1])))


def _stack(seed: int = 2) -> Any:
    return sequential(BANDS, conv(4, 3, padding="same", activation="relu"),
                      conv(4, 3, dilation_rate=2, padding="same", activation="relu"), conv(2, 3, padding="same"),
                      seed=seed)


def _encoder() -> Any:
    from keras import layers as kl

    return sequential(BANDS, conv(4, 3, padding="same", activation="relu"), conv(4, 3, strides=2, padding="same"),
                      kl.AveragePooling2D(2), conv(3, 3, padding="valid"), seed=3)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``{name: (scene store, model file, result store)}`` per model, and the dense scene under ``"dense"``.

    Made on an in-process cluster: its worker shares this process's TensorFlow, which verify loads anyway.
    """
    from distributed import Client

    root = tmp_path_factory.mktemp("verify")
    dense = patches((*SCENE, BANDS), [(0, 6, 0, 9), (20, 27, 30, 38), (33, 47, 9, 20), (55, 61, 68, 75)], seed=4)
    out: dict[str, Any] = {"dense": dense}
    with warnings.catch_warnings():
        # The scheduler's HTTP server falls back to a free port when 8787 is taken: harmless.
        warnings.filterwarnings("ignore", message="Port .* is already in use")
        client = Client(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None)
    with client:
        for name, model in {"unet": _unet(), "stack": _stack(), "encoder": _encoder()}.items():
            path = root / f"{name}.keras"
            model.save(path)
            scene, result = root / f"{name}.scene", root / f"{name}.result"
            tilepipe.ingest(coo(dense), scene, tile_size=TILE, model=str(path), client=client)
            tilepipe.run(scene, str(path), result, client=client)
            out[name] = (scene, path, result)
    yield out


def _damaged_copy(result: Path, to: Path, tile: tuple[int, int] = DAMAGED, size: int = TILE) -> Path:
    """A copy of ``result`` with +1.0 written into band 1 of ``tile`` (``size`` px a side; through zarr:
    checksums hold)."""
    import zarr

    shutil.copytree(result, to)
    data = zarr.open_array(str(to / "band_2"), mode="r+")  # one array per band: band 1 (0-based) is band_2
    r, c = tile
    block = (slice(r * size, (r + 1) * size), slice(c * size, (c + 1) * size))
    data[block] = np.asarray(data[block]) + np.float32(1.0)
    return to


# -- passes ---------------------------------------------------------------------------------------


def test_unet_verifies_on_the_whole_scene(made: dict[str, Any]) -> None:
    _, _, result = made["unet"]
    seen: list[TileCheck] = []
    report = verify_result(result, tiles=4, on_tile=seen.append)
    assert report.passed, report.summary()
    assert report.margin is None  # the whole padded scene fits: every tile against the exact reference
    assert all(c.whole and c.window == Window(0, 64, 0, 76) for c in report.checks)
    assert seen == list(report.checks)
    assert {(c.row, c.col) for c in report.checks if c.where != "interior"} == RING
    assert sum(c.where == "corner" for c in report.checks) == 4
    assert sum(c.where == "interior" for c in report.checks) == 4
    assert report.tiles_total == GRID[0] * GRID[1]
    assert all(c.max_ref > 0.1 for c in report.checks)  # the model's values, not zeros compared with zeros
    assert report.worst is not None and report.worst.relative <= 1e-5
    assert "verified: 36 of 80 tiles" in report.summary()


@pytest.mark.parametrize("name, margin", [("unet", 14), ("stack", 6), ("encoder", 12)])
def test_verifies_on_windows_around_each_tile(made: dict[str, Any], name: str, margin: int) -> None:
    """No room for the whole scene: each tile on its own window, grown by a margin as big as the footprint."""
    _, _, result = made[name]
    report = verify_result(result, tiles=3, seed=1, memory=0, margin=margin)
    assert report.passed, report.summary()
    step = 1 if name == "stack" else 4
    assert report.margin == (-(-margin // step) * step,) * 2
    padded = (-(-SCENE[0] // step) * step, -(-SCENE[1] // step) * step)
    inner = [c for c in report.checks if c.where == "interior"]
    assert inner and not any(c.whole for c in inner)
    for c in report.checks:
        w = c.window
        assert w.row_start % step == 0 and w.col_start % step == 0
        assert w.row_stop <= padded[0] and w.col_stop <= padded[1]
        assert c.relative <= 1e-5


def test_a_window_smaller_than_the_footprint_is_caught(made: dict[str, Any]) -> None:
    """A margin below the U-Net's footprint (16 px before a core) gives wrong borders: verify sees them."""
    _, _, result = made["unet"]
    report = verify_result(result, tiles=2, memory=0, margin=4)
    assert not report.passed
    assert max(c.relative for c in report.checks) > 1e-3


def test_cli_verifies_with_moved_scene_and_model(made: dict[str, Any], tmp_path: Path) -> None:
    scene, model, result = made["unet"]
    moved_scene, moved_model = tmp_path / "moved.scene", tmp_path / "moved.keras"
    shutil.copytree(scene, moved_scene)
    shutil.copy(model, moved_model)
    proc = run_tilepipe("verify", str(result), "--scene", str(moved_scene), "--model", str(moved_model),
                        "--tiles", "2", "--seed", "5")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len([line for line in lines if line.startswith("tile (")]) == len(RING) + 2
    assert all(line.endswith(": ok") for line in lines if line.startswith("tile ("))
    assert "verified: 34 of 80 tiles" in lines[-1]


# -- mismatches -----------------------------------------------------------------------------------


def test_a_damaged_tile_fails_with_its_real_difference(made: dict[str, Any], tmp_path: Path) -> None:
    _, model_path, result = made["unet"]
    damaged = _damaged_copy(result, tmp_path / "damaged.result")
    report = verify_result(damaged, tiles=2)
    assert not report.passed
    [bad] = report.failures
    assert (bad.row, bad.col, bad.where) == (*DAMAGED, "edge")
    # The reference, worked out here: the whole-scene model on the scene zero-padded to a multiple of 4.
    import keras

    padded = np.zeros((64, 76, BANDS), np.float32)
    padded[: SCENE[0], : SCENE[1]] = made["dense"]
    ref = reference(keras.saving.load_model(model_path), padded)[:, : SCENE[0], : SCENE[1]]
    r, c = DAMAGED
    max_ref = float(np.abs(ref[:, r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE]).max())
    assert bad.max_ref == pytest.approx(max_ref, rel=1e-5)
    assert bad.max_diff == pytest.approx(1.0, abs=1e-5)
    assert bad.relative == pytest.approx(1.0 / max_ref, rel=1e-5)
    assert all(check.relative <= 1e-5 for check in report.checks if check is not bad)

    proc = run_tilepipe("verify", str(damaged), "--tiles", "0")
    assert_one_clear_line(proc, str(damaged), "verify failed", "1 of 32", f"tile (row {r}, col {c})")
    [line] = [line for line in proc.stdout.splitlines() if line.startswith(f"tile (row {r}, col {c})")]
    assert line.endswith("MISMATCH")
    assert f"relative difference {1.0 / max_ref:.3g}" in line
    assert sum(line.endswith(": ok") for line in proc.stdout.splitlines()) == len(RING) - 1


def test_every_tile_finds_a_damaged_interior_tile(made: dict[str, Any], tmp_path: Path) -> None:
    damaged = _damaged_copy(made["encoder"][2], tmp_path / "damaged.result", tile=(3, 4), size=2)
    report = verify_result(damaged, tiles=None)
    assert len(report.checks) == 7 * 9  # the encoder's output: 14 x 17 px in 2 px tiles
    assert [(c.row, c.col, c.where) for c in report.failures] == [(3, 4, "interior")]


def test_tolerance_decides(made: dict[str, Any], tmp_path: Path) -> None:
    damaged = _damaged_copy(made["unet"][2], tmp_path / "damaged.result")
    assert verify_result(damaged, tiles=0, tolerance=10.0).passed
    with pytest.raises(InputError, match="tolerance"):
        verify_result(damaged, tolerance=-1.0)


# -- refusals -------------------------------------------------------------------------------------


def test_another_model_is_refused(made: dict[str, Any], tmp_path: Path) -> None:
    _, _, result = made["stack"]
    other = tmp_path / "other.keras"
    _stack(seed=9).save(other)  # same layers, other weights
    with pytest.raises(ModelError, match="not the model the result was made with"):
        verify_result(result, model=other)
    proc = run_tilepipe("verify", str(result), "--model", str(other))
    assert_one_clear_line(proc, str(other), "not the model the result was made with", "--model")


def test_a_missing_model_is_refused(made: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such model file"):
        verify_result(made["stack"][2], model=tmp_path / "gone.keras")


def test_inputs_moved_since_the_run_are_asked_for(made: dict[str, Any], tmp_path: Path) -> None:
    """A result whose recorded model file and scene store are gone: each refusal names the path and the option."""
    import zarr

    copy = tmp_path / "moved.result"
    shutil.copytree(made["stack"][2], copy)
    group = zarr.open_group(str(copy), mode="r+")
    attrs = dict(group.attrs["tilepipe"])  # type: ignore[arg-type]
    gone_model, gone_scene = str(tmp_path / "gone.keras"), str(tmp_path / "gone.scene")
    attrs["provenance"] = {**attrs["provenance"], "model_path": gone_model, "scene_store": gone_scene}
    group.attrs["tilepipe"] = attrs
    with pytest.raises(ModelError, match="--model") as info:
        verify_result(copy)
    assert gone_model in str(info.value)
    with pytest.raises(StoreError, match="--scene") as info_scene:
        verify_result(copy, model=made["stack"][1])
    assert gone_scene in str(info_scene.value)
    assert verify_result(copy, model=made["stack"][1], scene=made["stack"][0], tiles=1).passed


def test_another_scene_store_is_refused(made: dict[str, Any]) -> None:
    """The stride-1 stack's scene store holds the same scene with a smaller halo: another tiling."""
    with pytest.raises(StoreError, match="not the scene store the result was made from") as info:
        verify_result(made["unet"][2], scene=made["stack"][0])
    assert str(made["stack"][0]) in str(info.value)


def test_an_incomplete_result_is_refused(made: dict[str, Any], tmp_path: Path) -> None:
    copy = tmp_path / "incomplete.result"
    shutil.copytree(made["stack"][2], copy)
    ResultStore.open(copy).mark_incomplete()
    with pytest.raises(StoreError, match="the result is incomplete") as info:
        verify_result(copy)
    assert str(copy) in str(info.value)


# -- which tiles, which windows ---------------------------------------------------------------------


def test_tiles_are_drawn_reproducibly() -> None:
    status = np.full((12, 15), STATUS_COMPUTED, np.uint8)
    picks = {seed: pick_tiles((12, 15), status, tiles=6, seed=seed, border=100) for seed in range(4)}
    assert picks[0] == pick_tiles((12, 15), status, tiles=6, seed=0, border=100)
    assert len({tuple(p) for p in picks.values()}) > 1
    for p in picks.values():
        assert sum(where == "interior" for _, _, where in p) == 6
        assert len({(r, c) for r, c, _ in p}) == len(p)
    every = pick_tiles((12, 15), status, tiles=None, seed=0, border=4)
    assert sorted((r, c) for r, c, _ in every) == [(r, c) for r in range(12) for c in range(15)]


def test_big_grids_sample_their_border() -> None:
    status = np.zeros((100, 200), np.uint8)
    status[40:45, 60:70] = STATUS_COMPUTED
    picked = pick_tiles((100, 200), status, tiles=8, seed=0, border=32)
    ring = [(r, c) for r, c, where in picked if where != "interior"]
    assert len(ring) == 32
    assert all(r in (0, 99) or c in (0, 199) for r, c in ring)
    assert {(0, 0), (0, 1), (1, 0), (99, 199), (98, 199), (99, 198), (0, 199), (99, 0)} <= set(ring)
    inner = [(r, c) for r, c, where in picked if where == "interior"]
    assert len(inner) == 8
    assert sum(status[t] == STATUS_COMPUTED for t in inner) >= 4  # half of them where the scene has values


def test_check_window_is_aligned_and_clipped() -> None:
    axis = AxisFootprint(before=8, after=8, step=4, min_length=8)
    fp = Footprint(axis, axis)
    assert check_window(Window(8, 16, 0, 8), fp, (61, 75), (16, 16)) == Window(0, 32, 0, 24)
    assert check_window(Window(56, 61, 72, 75), fp, (61, 75), (5, 5)) == Window(48, 64, 64, 76)
    quarter = AxisFootprint(before=4, after=12, shrink=2, step=4, scale=Fraction(1, 4), min_length=4)
    fp = Footprint(quarter, quarter)  # output pixel j reads input 4 j ..: core (2, 4) is input (8, 16)
    assert check_window(Window(2, 4, 0, 2), fp, (61, 75), (12, 12)) == Window(0, 28, 0, 20)
    assert check_window(Window(14, 15, 16, 17), fp, (61, 75), (12, 12)) == Window(44, 64, 52, 76)
