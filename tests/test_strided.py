"""Strided encoder-decoders (U-Nets) tiled exactly.

The reference is what a user would do by hand: the whole-scene model on the
scene padded with zeros at the bottom and right to a multiple of the model's
total stride, its output cropped back to the pixels that cover the scene.
It is built here with numpy and Keras alone; tilepipe's own geometry is only
ever what is under test.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import rasterio
import tensorflow as tf
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from keras import layers as kl

import tilepipe
from tilepipe.errors import UntileableModelError
from tilepipe.geometry import AxisFootprint, Footprint, Window
from tilepipe.model.receptive import footprint_of

from helpers import assert_one_clear_line, coo, predict, run_tilepipe

TOLERANCE = 1e-5  # max |err| / max |ref|: float32 round-off


def padded_reference(
    model: keras.Model, dense: np.ndarray, stride: int, out_scale: Fraction = Fraction(1)
) -> np.ndarray:
    """The model on ``dense`` ``(y, x, band)`` zero-padded to multiples of ``stride``, cropped: ``(y, x, channel)``.

    The crop keeps the output pixels that cover the scene: ``ceil(n * out_scale)`` per axis.
    """
    rows, cols = dense.shape[:2]
    pr, pc = -(-rows // stride) * stride, -(-cols // stride) * stride
    padded = np.zeros((pr, pc, dense.shape[2]), np.float32)
    padded[:rows, :cols] = dense
    out = predict(model, padded[None])[0]
    keep_r, keep_c = (
        -(-rows * out_scale.numerator // out_scale.denominator),
        -(-cols * out_scale.numerator // out_scale.denominator),
    )
    return out[:keep_r, :keep_c]


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert np.all(np.isfinite(got))
    return float(np.max(np.abs(got.astype(np.float64) - ref))) / max(float(np.max(np.abs(ref))), 1e-30)


def sparse_scene(
    rng: np.random.Generator, shape: tuple[int, int], bands: int, block: int, occupancy: float
) -> np.ndarray:
    """Values in random ``block``-sized cells (so whole tiles, edges and corners among them, stay empty)."""
    dense = np.zeros((*shape, bands), np.float32)
    for r0 in range(0, shape[0], block):
        for c0 in range(0, shape[1], block):
            if rng.random() < occupancy:
                cell = dense[r0 : r0 + block, c0 : c0 + block]
                values = rng.normal(size=cell.shape).astype(np.float32)
                values[rng.random(cell.shape[:2]) < 0.6] = 0
                cell[...] = values
    return dense


# --- U-Nets built from a spec -------------------------------------------------------------


def unet(spec: dict[str, Any], bands: int, seed: int) -> keras.Model:
    """A U-Net from ``spec``: depth, kernel, width, how to go down and up, how skips join, norm, dilation."""
    keras.utils.set_random_seed(seed)
    width, k = spec["width"], spec["kernel"]

    def conv(x: Any, **kw: Any) -> Any:
        y = kl.Conv2D(width, k, padding="same", dilation_rate=spec["dilation"], **kw)(x)
        if spec["norm"]:
            bn = kl.BatchNormalization()
            y = bn(y)
            rng = np.random.default_rng(seed)
            bn.set_weights(
                [
                    rng.uniform(0.5, 1.5, width).astype(np.float32),
                    rng.normal(0, 0.1, width).astype(np.float32),
                    rng.normal(0, 0.1, width).astype(np.float32),
                    rng.uniform(0.5, 2, width).astype(np.float32),
                ]
            )
        return kl.Activation("tanh")(y)

    x = keras.Input((None, None, bands))
    h = conv(x)
    skips = []
    for _ in range(spec["depth"]):
        skips.append(h)
        if spec["pre_valid"]:
            # 2n - 1 pixels: the strided 'same' layer below pads its odd input (1, 1), not (0, 1), and
            # still gives n, so the skips line up.
            h = kl.Conv2D(width, 2, padding="valid", activation="relu")(h)
        down = spec["down"]
        if down == "conv":
            h = kl.Conv2D(width, spec["down_kernel"], strides=2, padding=spec["down_padding"], activation="relu")(h)
        elif down == "max":
            h = kl.MaxPooling2D(spec["pool"], strides=2, padding=spec["down_padding"])(h)
        else:
            h = kl.AveragePooling2D(spec["pool"], strides=2, padding=spec["down_padding"])(h)
        h = conv(h)
    for level in reversed(range(spec["depth"])):
        if spec["up"] == "transpose":
            h = kl.Conv2DTranspose(width, spec["up_kernel"], strides=2, padding="same")(h)
        else:
            h = kl.UpSampling2D(2, interpolation=spec["up"])(h)
        h = kl.Concatenate()([h, skips[level]]) if spec["skip"] == "concat" else kl.Add()([h, skips[level]])
        h = conv(h)
    return keras.Model(x, kl.Conv2D(2, 1, bias_initializer="ones")(h))


@st.composite
def unet_specs(draw: st.DrawFn) -> dict[str, Any]:
    down = draw(st.sampled_from(["conv", "max", "avg"]))
    # 'valid' downsampling shrinks odd lengths unevenly: kept to sizes that halve even lengths exactly.
    down_padding = draw(st.sampled_from(["same", "valid"])) if down != "conv" else "same"
    return {
        "depth": draw(st.integers(1, 4)),
        "kernel": draw(st.integers(1, 5)),
        "width": draw(st.integers(2, 4)),
        "down": down,
        "down_padding": down_padding,
        # A 'valid' 2x2 before each 'same' downsampling: its input's length is odd, never a multiple of 2.
        "pre_valid": down_padding == "same" and draw(st.booleans()),
        "down_kernel": draw(st.integers(1, 4)),
        "pool": 2 if down == "conv" else draw(st.sampled_from([2, 3])),
        "up": draw(st.sampled_from(["nearest", "bilinear", "transpose"])),
        "up_kernel": draw(st.integers(2, 4)),
        "skip": draw(st.sampled_from(["concat", "add"])),
        "norm": draw(st.booleans()),
        "dilation": draw(st.sampled_from([1, 1, 2])),
    }


def _runs_on(model: keras.Model, length: int, bands: int) -> bool:
    try:
        predict(model, np.zeros((1, length, length, bands), np.float32))
    except (ValueError, tf.errors.InvalidArgumentError):
        return False
    return True


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=unet_specs(), seed=st.integers(0, 2**16), data=st.data())
def test_random_unets_tile_exactly_through_conv_sparse(spec: dict[str, Any], seed: int, data: st.DataObject) -> None:
    bands = 2
    model = unet(spec, bands, seed)
    stride = 2 ** spec["depth"]
    runs = _runs_on(model, 4 * stride, bands)
    try:
        fp = footprint_of(model)
    except UntileableModelError as exc:
        # A pool of 3 with 'valid' padding shrinks 2n to n - 1: that U-Net's skips cannot line up on
        # any scene, and the analysis must say so rather than tile it.
        assert not runs and "merges inputs of different sizes" in str(exc)
        event("skips cannot line up: refused")
        return
    assert runs and fp.step == (stride, stride)
    if spec["pre_valid"]:
        event("odd lengths before strided 'same' layers")
    shape = (data.draw(st.integers(1, 70)), data.draw(st.integers(1, 70)))
    if data.draw(st.booleans()):  # sides that are multiples of the stride: the reference is the plain whole scene
        shape = (max(1, shape[0] // stride) * stride, max(1, shape[1] // stride) * stride)
    tile = (data.draw(st.integers(1, 40)), data.draw(st.integers(1, 40)))
    occupancy = data.draw(st.sampled_from([0.0, 0.1, 0.4, 1.0]))
    dense = sparse_scene(
        np.random.default_rng(seed), shape, bands, block=data.draw(st.integers(3, 12)), occupancy=occupancy
    )
    ref = padded_reference(model, dense, stride)
    st_ = tf.sparse.from_dense(dense)
    got = tilepipe.conv_sparse(st_, model, tile_size=tile)
    assert relative_error(got, ref) <= TOLERANCE, (spec, shape, tile)


# --- footprints by hand ---------------------------------------------------------------------


def _square(axis: AxisFootprint) -> Footprint:
    return Footprint(axis, axis)


def _tiny_unet() -> keras.Model:
    x = keras.Input((None, None, 1))
    c1 = kl.Conv2D(2, 3, padding="same")(x)
    c2 = kl.Conv2D(2, 3, padding="same")(kl.MaxPooling2D(2)(c1))
    y = kl.Concatenate()([kl.UpSampling2D(2)(c2), c1])
    return keras.Model(x, kl.Conv2D(1, 1)(y))


HALF = Fraction(1, 2)
HAND: dict[str, tuple[Callable[[], keras.Model], Footprint]] = {
    # 3x3 stride 2 'same' on an even length: TF pads (0, 1), so output j reads 2j .. 2j + 2; the last
    # output pixel reads one padded pixel, which is a neighbour's real pixel inside a scene: 1 output
    # pixel from the high edge is unsure = 2 input px, already a multiple of the stride 2.
    "strided conv": (
        lambda: keras.Sequential([keras.Input((None, None, 1)), kl.Conv2D(1, 3, strides=2, padding="same")]),
        _square(AxisFootprint(0, 2, 0, 0, step=2, scale=HALF, min_length=2)),
    ),
    # 2x2 pooling reads its own 2 x 2 block only: nothing is needed around a stride-aligned window.
    "max pooling": (
        lambda: keras.Sequential([keras.Input((None, None, 1)), kl.MaxPooling2D(2)]),
        _square(AxisFootprint(0, 0, 0, 0, step=2, scale=HALF, min_length=2)),
    ),
    # Depth-1 U-Net: the first 3x3 reaches 1 px; after pooling, a 3x3 at half resolution reaches 1 px
    # there, on top of the pooled 1 (ceil(1 / 2)): 2 half-res px = 4 px after upsampling; the skip needs 1.
    "depth-1 U-Net": (
        _tiny_unet,
        _square(AxisFootprint(4, 4, 0, 0, step=2, scale=Fraction(1), min_length=2)),
    ),
    # A 'valid' 2x2 first: the strided layer's input is L - 1 long, odd for every window L (a multiple of
    # 2), so TF pads the 3x3 (1, 1), not (0, 1): output j reads its input 2j - 1 .. 2j + 1, i.e. input
    # pixels 2j - 1 .. 2j + 2, and L / 2 outputs. The first output reads one padded pixel (1 output px =
    # 2 input px before), and so does the last, at index L - 1 past the input's end (2 px after: the
    # parity of L - 1 is what puts it there). Centred on 2j + 1/2, less a half output pixel: corner 2j - 1.
    "valid then strided conv": (
        lambda: keras.Sequential(
            [keras.Input((None, None, 1)), kl.Conv2D(1, 2), kl.Conv2D(1, 3, strides=2, padding="same")]
        ),
        _square(AxisFootprint(2, 2, 0, -1, step=2, scale=HALF, min_length=2)),
    ),
    # A 2x2 stride 2 'same' on the odd L - 1 pads (0, 1): output j reads input 2j .. 2j + 2, the last one
    # the padded pixel after the end (2 px after), none before. On an even input it would pad nothing.
    "valid then strided 2x2 conv": (
        lambda: keras.Sequential(
            [keras.Input((None, None, 1)), kl.Conv2D(1, 2), kl.Conv2D(1, 2, strides=2, padding="same")]
        ),
        _square(AxisFootprint(0, 2, 0, 0, step=2, scale=HALF, min_length=2)),
    ),
    # A 'valid' 4x4 leaves L - 3 (odd): the 3x3 stride 2 pads (1, 1) and gives L / 2 - 1 outputs (shrink 1),
    # output j reading input 2j - 1 .. 2j + 4; the last one, j = L / 2 - 2, reads the padded pixel, so
    # the window must reach 4 px past a core (2 for the shrink, 2 for that pixel). It needs L >= 4.
    "valid 4x4 then strided conv": (
        lambda: keras.Sequential(
            [keras.Input((None, None, 1)), kl.Conv2D(1, 4), kl.Conv2D(1, 3, strides=2, padding="same")]
        ),
        _square(AxisFootprint(2, 4, 1, 0, step=2, scale=HALF, min_length=4)),
    ),
}


@pytest.mark.parametrize("case", list(HAND))
def test_strided_footprints_match_hand_computation(case: str) -> None:
    build, expected = HAND[case]
    assert footprint_of(build()) == expected


def _tiled(model: keras.Model, fp: Footprint, dense: np.ndarray, tile: int) -> np.ndarray:
    """Tiles cut by hand from the padded scene with ``fp``'s windows, stitched."""
    rows, cols = dense.shape[:2]
    pr, pc = fp.padded_shape((rows, cols))
    padded = np.zeros((pr, pc, dense.shape[2]), np.float32)
    padded[:rows, :cols] = dense
    out_rows, out_cols = fp.output_shape((rows, cols))
    got = np.full((out_rows, out_cols, model.output_shape[-1]), np.nan, np.float32)
    for r0 in range(0, out_rows, tile):
        for c0 in range(0, out_cols, tile):
            core = Window(r0, min(r0 + tile, out_rows), c0, min(c0 + tile, out_cols))
            win = fp.input_window(core, (rows, cols))
            y = predict(model, padded[None, win.row_start : win.row_stop, win.col_start : win.col_stop])[0]
            rel = core.relative_to(fp.output_window(win))
            got[core.slices] = y[rel.slices]
    return got


def _odd_before_strides() -> keras.Model:
    """Two halvings, each a 3x3 stride 2 'same' on an odd length: a 'valid' 2x2 (then 4x4) before it."""
    keras.utils.set_random_seed(3)
    return keras.Sequential(
        [
            keras.Input((None, None, 2)),
            kl.Conv2D(3, 2, activation="tanh"),
            kl.Conv2D(3, 3, strides=2, padding="same", activation="tanh"),
            kl.Conv2D(3, 4, activation="tanh"),
            kl.Conv2D(2, 3, strides=2, padding="same", bias_initializer="ones"),
        ]
    )


@pytest.mark.parametrize("shape", [(24, 28), (23, 30), (21, 17)])  # sides multiples of S = 4, and not
@pytest.mark.parametrize("tile", [(1, 1), (2, 3)])  # output pixels; x 4 input pixels
def test_strided_same_layer_on_an_odd_length_tiles_exactly(shape: tuple[int, int], tile: tuple[int, int]) -> None:
    model = _odd_before_strides()
    fp = footprint_of(model)
    assert fp.step == (4, 4) and fp.scale == (Fraction(1, 4), Fraction(1, 4))
    dense = np.random.default_rng(sum(shape)).normal(size=(*shape, 2)).astype(np.float32)
    ref = padded_reference(model, dense, 4, Fraction(1, 4))
    # L -> L - 1 -> L / 2 -> L / 2 - 3 -> L / 4 - 1 on the padded scene: one output pixel fewer than S-blocks.
    assert ref.shape[:2] == (-(-shape[0] // 4) - 1, -(-shape[1] // 4) - 1)
    tiled = _tiled(model, fp, dense, tile[0])
    assert relative_error(tiled, ref) <= TOLERANCE
    got = tilepipe.conv_sparse(tf.sparse.from_dense(dense), model, tile_size=(4 * tile[0], 4 * tile[1]))
    assert relative_error(got, ref) <= TOLERANCE


ODD_UNETS = {
    "strided conv, transposed up": {"down": "conv", "down_kernel": 3, "pool": 2, "up": "transpose"},
    "max pool of 3, bilinear up": {"down": "max", "down_kernel": 3, "pool": 3, "up": "bilinear"},
}


@pytest.mark.parametrize("shape", [(32, 36), (29, 35)])  # sides multiples of S = 4, and not
@pytest.mark.parametrize("case", list(ODD_UNETS))
def test_unet_with_odd_lengths_before_its_strides_tiles_exactly(case: str, shape: tuple[int, int]) -> None:
    # What the random U-Nets draw now and then, pinned: a 'valid' 2x2 before each 'same' downsampling,
    # on a dense scene in tiles of one stride, so that every core edge reads its neighbours' pixels.
    spec = {"depth": 2, "kernel": 3, "width": 3, "down_padding": "same", "pre_valid": True, "up_kernel": 3,
            "skip": "concat", "norm": False, "dilation": 1, **ODD_UNETS[case]}  # fmt: skip
    model = unet(spec, 2, 7)
    dense = np.random.default_rng(7).normal(size=(*shape, 2)).astype(np.float32)
    got = tilepipe.conv_sparse(tf.sparse.from_dense(dense), model, tile_size=4)
    assert relative_error(got, padded_reference(model, dense, 4)) <= TOLERANCE


def test_reference_catches_a_halo_one_stride_short() -> None:
    # Guards the reference: a U-Net tiled with one stride less margin before must show.
    model = unet(
        {
            "depth": 3,
            "kernel": 3,
            "width": 3,
            "down": "max",
            "down_padding": "same",
            "pre_valid": False,
            "down_kernel": 3,
            "pool": 2,
            "up": "bilinear",
            "up_kernel": 2,
            "skip": "concat",
            "norm": False,
            "dilation": 1,
        },
        2,
        0,
    )
    fp = footprint_of(model)
    dense = sparse_scene(np.random.default_rng(0), (61, 75), 2, block=5, occupancy=0.5)
    ref = padded_reference(model, dense, 8)
    assert relative_error(_tiled(model, fp, dense, 16), ref) <= TOLERANCE
    r = fp.rows
    short = Footprint(
        AxisFootprint(r.before - r.step, r.after, r.shrink, r.offset, r.step, r.scale, r.min_length), fp.cols
    )
    assert relative_error(_tiled(model, short, dense, 16), ref) > 1e-3


# --- through the stores, the cluster and the CLI ------------------------------------------------


def _encoder(bands: int) -> keras.Model:
    """Three stride-2 convolutions: an output at 1/8 of the input's resolution."""
    keras.utils.set_random_seed(5)
    return keras.Sequential(
        [
            keras.Input((None, None, bands)),
            *[kl.Conv2D(3, 3, strides=2, padding="same", activation="tanh") for _ in range(3)],
        ]
    )


@pytest.mark.cluster
def test_output_at_an_eighth_of_the_resolution_is_georeferenced(tmp_path: Path, dask_client: Any) -> None:
    model = _encoder(2)
    path = tmp_path / "encoder.keras"
    model.save(path)
    dense = sparse_scene(np.random.default_rng(2), (83, 70), 2, block=6, occupancy=0.3)
    transform = (10.0, 0.0, 500_000.0, 0.0, -10.0, 4_600_000.0)
    scene = tilepipe.ingest(
        coo(dense),
        tmp_path / "s.zarr",
        tile_size=20,
        model=str(path),
        crs="EPSG:32618",
        transform=transform,
        client=dask_client,
    )
    assert scene.info.tile_size == (24, 24)  # rounded up to a multiple of the stride 8
    tilepipe.run(scene.path, str(path), tmp_path / "r.zarr", client=dask_client)
    result = tilepipe.open_result(tmp_path / "r.zarr")
    got = result.read().transpose(1, 2, 0)
    ref = padded_reference(model, dense, 8, Fraction(1, 8))
    assert got.shape == (11, 9, 3)  # ceil(83 / 8), ceil(70 / 8)
    assert relative_error(got, ref) <= TOLERANCE
    # Output pixel (0, 0) covers input pixels 0 .. 7: 80 m pixels from the same corner.
    assert result.info.transform == (80.0, 0.0, 500_000.0, 0.0, -80.0, 4_600_000.0)


@pytest.mark.cluster
def test_transposed_decoder_repeats_with_its_stride_and_frees_no_tile(tmp_path: Path, dask_client: Any) -> None:
    # Zeros through a stride-2 transposed 3x3 give one value on even pixels and another on odd ones:
    # no single fill value stands for an empty tile, so every tile is written, and still exact.
    keras.utils.set_random_seed(9)
    x = keras.Input((None, None, 1))
    down = kl.Conv2D(2, 3, strides=2, padding="same", bias_initializer="ones")(x)
    y = kl.Conv2DTranspose(2, 3, strides=2, padding="same")(down)
    model = keras.Model(x, y)
    path = tmp_path / "tconv.keras"
    model.save(path)
    dense = np.zeros((96, 96, 1), np.float32)
    dense[5:9, 70:75] = 1.5
    scene = tilepipe.ingest(coo(dense), tmp_path / "s.zarr", tile_size=16, model=str(path), client=dask_client)
    report = tilepipe.run(scene.path, str(path), tmp_path / "r.zarr", client=dask_client)
    status = tilepipe.open_result(tmp_path / "r.zarr").status()
    assert report.failed == 0 and not np.any(status == 3)  # STATUS_FREE nowhere
    got = tilepipe.open_result(tmp_path / "r.zarr").read().transpose(1, 2, 0)
    ref = padded_reference(model, dense, 2)
    assert np.unique(ref[40:48, 40:48, 0]).size == 4  # one value per (row, col) parity
    assert relative_error(got, ref) <= TOLERANCE


def _write_geotiff(path: Path, dense: np.ndarray) -> None:
    profile = {
        "driver": "GTiff",
        "height": dense.shape[0],
        "width": dense.shape[1],
        "count": dense.shape[2],
        "dtype": "float32",
        "crs": "EPSG:32618",
        "nodata": 0.0,
        "transform": rasterio.transform.from_origin(500_000, 4_600_000, 10, 10),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(dense.transpose(2, 0, 1))


def _workflow(tmp_path: Path, source: Path, model: Path, tile: int) -> Path:
    path = tmp_path / "wf.yaml"
    path.write_text(
        f"input: {{path: {source}}}\nmodel: {{path: {model}}}\ntiling: {{tile_size: {tile}, halo: auto}}\n"
        f"output: {{zarr: {tmp_path / 'r.zarr'}, geotiff: {tmp_path / 'r.tif'}}}\n"
    )
    return path


def test_cli_rounds_the_tile_size_once_and_the_export_equals_the_reference(tmp_path: Path) -> None:
    model = unet(
        {"depth": 2, "kernel": 3, "width": 3, "down": "conv", "down_padding": "same", "pre_valid": False,
         "down_kernel": 3, "pool": 2, "up": "bilinear", "up_kernel": 2, "skip": "add", "norm": True, "dilation": 1},
        2, 4,
    )  # fmt: skip
    model.save(tmp_path / "unet.keras")
    dense = sparse_scene(np.random.default_rng(4), (150, 131), 2, block=9, occupancy=0.2)
    _write_geotiff(tmp_path / "scene.tif", dense)
    run = run_tilepipe("run", str(_workflow(tmp_path, tmp_path / "scene.tif", tmp_path / "unet.keras", 50)))
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("tile size 50 rounded up to 52") == 1, run.stderr
    with rasterio.open(tmp_path / "r.tif") as src:
        got = src.read().transpose(1, 2, 0)
        assert src.transform == rasterio.transform.from_origin(500_000, 4_600_000, 10, 10)
    assert relative_error(got, padded_reference(model, dense, 4)) <= TOLERANCE


def test_cli_refuses_tiles_that_are_not_multiples_of_the_stride(tmp_path: Path) -> None:
    model = _encoder(1)
    model.save(tmp_path / "enc.keras")
    dense = sparse_scene(np.random.default_rng(1), (100, 100), 1, block=10, occupancy=0.5)
    _write_geotiff(tmp_path / "scene.tif", dense)
    ingest = run_tilepipe(
        "ingest", str(tmp_path / "scene.tif"), str(tmp_path / "s.zarr"), "--halo", "40", "--tile-size", "30"
    )
    assert ingest.returncode == 0, ingest.stderr
    run = run_tilepipe("run", str(_workflow(tmp_path, tmp_path / "s.zarr", tmp_path / "enc.keras", 30)))
    assert_one_clear_line(run, "stride is 8 px but the scene's tiles are 30 px", "--tile-size 32")
    assert not (tmp_path / "r.zarr").exists()
