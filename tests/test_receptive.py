"""Footprints derived from Keras models, checked against tiling emulated in numpy.

The reference is independent of the footprint's arithmetic: run the model on
the whole scene, then cut the output into cores, run the model on each core's
window (grown by the footprint and clipped to the scene, never zero-padded)
and compare the trimmed tiles with the whole-scene output.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import layers as kl

from tilepipe.errors import ModelError, UntileableModelError
from tilepipe.geometry.footprint import AxisFootprint, Footprint
from tilepipe.geometry.window import Window
from tilepipe.model.receptive import footprint_of

from helpers import conv, predict, sequential, sparse_scene

BANDS = 3
SCENE = (37, 41)  # odd sizes on purpose: TF's odd-size edge cases live there
TOLERANCE = 1e-5  # max |err| / max |ref|: the exactness bound, float32 round-off


def _input(bands: int = BANDS) -> keras.KerasTensor:
    return keras.Input((None, None, bands))


def _relative_error(model: keras.Model, fp: Footprint, x: np.ndarray, tile: tuple[int, int]) -> float:
    """Tile the scene as the executor will (window, run, trim) and compare with the whole."""
    shape = (x.shape[1], x.shape[2])
    ref = predict(model, x)
    assert ref.shape[1:3] == fp.output_shape(shape)
    out_rows, out_cols = ref.shape[1:3]
    got = np.full_like(ref, np.nan)
    for r0 in range(0, out_rows, tile[0]):
        for c0 in range(0, out_cols, tile[1]):
            core = Window(r0, min(r0 + tile[0], out_rows), c0, min(c0 + tile[1], out_cols))
            win = fp.input_window(core, shape)
            y = predict(model, x[:, win.row_start : win.row_stop, win.col_start : win.col_stop])
            assert y.shape[1:3] == fp.output_shape(win.shape)
            r, c = core.row_start - win.row_start, core.col_start - win.col_start
            got[:, core.row_start : core.row_stop, core.col_start : core.col_stop] = y[
                :, r : r + core.height, c : c + core.width
            ]
    return float(np.max(np.abs(got - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


def _axis(before: int, after: int, shrink: int = 0, offset: int = 0, shortest: int = 1) -> AxisFootprint:
    return AxisFootprint(before, after, shrink, offset, min_length=shortest)


def _square(before: int, after: int, shrink: int = 0, offset: int = 0, shortest: int = 1) -> Footprint:
    return Footprint(_axis(before, after, shrink, offset, shortest), _axis(before, after, shrink, offset, shortest))


# --- footprints worked out by hand ------------------------------------------------------


HAND: dict[str, tuple[Callable[[], keras.Model], Footprint]] = {
    "three same 3x3": (lambda: sequential(BANDS, *[conv(4, 3, padding="same") for _ in range(3)]), _square(3, 3)),
    "5x5 dilation 2 same": (lambda: sequential(BANDS, conv(4, 5, dilation_rate=2, padding="same")), _square(4, 4)),
    # TF puts the odd pixel of an even kernel's padding after.
    "two even 4x4 same": (
        lambda: sequential(BANDS, conv(4, 4, padding="same"), conv(2, 4, padding="same")),
        _square(2, 4),
    ),
    "two 3x3 valid": (lambda: sequential(BANDS, conv(4, 3), conv(2, 3)), _square(0, 4, 4, 2, shortest=5)),
    "3x7 valid": (
        lambda: sequential(BANDS, conv(2, (3, 7))),
        Footprint(_axis(0, 2, 2, 1, shortest=3), _axis(0, 6, 6, 3, shortest=7)),
    ),
    # The same layer's padding still reaches 1 px in after the valid layer.
    "same then valid": (
        lambda: sequential(BANDS, conv(4, 3, padding="same"), conv(2, 3)),
        _square(1, 3, 2, 1, shortest=3),
    ),
    "zero padding then valid is same": (lambda: sequential(BANDS, kl.ZeroPadding2D(1), conv(2, 3)), _square(1, 1)),
    "same then crop is valid": (
        lambda: sequential(BANDS, conv(2, 3, padding="same"), kl.Cropping2D(1)),
        _square(0, 2, 2, 1, shortest=3),
    ),
    "max pool 3 stride 1 same": (
        lambda: sequential(BANDS, kl.MaxPooling2D(3, strides=1, padding="same")),
        _square(1, 1),
    ),
    "pointwise only": (lambda: sequential(BANDS, kl.BatchNormalization(), kl.ReLU(), kl.Dense(2)), _square(0, 0)),
}


@pytest.mark.parametrize("case", list(HAND))
def test_footprint_matches_hand_computation(case: str) -> None:
    build, expected = HAND[case]
    assert footprint_of(build()) == expected


def test_halo_is_the_largest_margin() -> None:
    fp = footprint_of(
        sequential(BANDS, conv(2, 3, padding="same"), conv(2, (5, 9), dilation_rate=(1, 2), padding="same"))
    )
    assert (fp.rows.before, fp.rows.after, fp.cols.before, fp.cols.after) == (3, 3, 9, 9)
    assert fp.halo == 9


def test_describe_footprint() -> None:
    assert _square(7, 7).describe() == "halo 7 px (rows 7/7, cols 7/7)"
    fp = Footprint(_axis(0, 4, 4, 2), _axis(1, 2))
    assert fp.describe() == "halo 4 px (rows 0/4, cols 1/2); output -4 rows, +0 cols"


# --- tiled == whole scene ---------------------------------------------------------------


def _branches() -> keras.Model:
    x = _input()
    c1 = conv(4, 3, padding="same", activation="relu")(x)
    b1 = conv(4, 5, dilation_rate=2, padding="same")(c1)
    b2 = conv(4, 1)(c1)
    y = kl.Concatenate()([kl.Add()([b1, b2]), c1, x])
    return keras.Model(x, conv(2, 3, padding="same")(y))


def _valid_branches() -> keras.Model:
    # Equal shrink, different offsets: (5x5 valid) vs (1x1 then crop 2 before / 2 after).
    x = _input()
    b1 = conv(4, 5)(x)
    b2 = kl.Cropping2D(((1, 3), (3, 1)))(conv(4, 1)(x))
    y = kl.Multiply()([kl.Subtract()([b1, b2]), kl.Maximum()([b1, b2])])
    return keras.Model(x, conv(2, 3, padding="same")(y))


def _nested() -> keras.Model:
    inner_seq = keras.Sequential(
        [_input(4), conv(4, 3, padding="same"), kl.BatchNormalization(), kl.ReLU()], name="inner_seq"
    )
    i = _input(4)
    inner_fn = keras.Model(i, kl.Average()([conv(4, 2, padding="same")(i), conv(4, 3)(kl.ZeroPadding2D(1)(i))]))
    x = _input()
    h = conv(4, 3, padding="same")(x)
    y = kl.Add()([inner_seq(h), inner_fn(h)])
    outer = keras.Model(x, y)
    return keras.Sequential([_input(), outer, conv(2, 3, dilation_rate=2, padding="same")])


def _batchnorm() -> keras.Model:
    bn = kl.BatchNormalization()
    model = sequential(BANDS, conv(4, 3, padding="same"), bn, kl.ReLU(), conv(2, 3, padding="same"))
    rng = np.random.default_rng(3)
    gamma, beta, mean = (rng.normal(size=4).astype(np.float32) for _ in range(3))
    bn.set_weights([gamma, beta, mean, rng.uniform(0.2, 3.0, size=4).astype(np.float32)])
    return model


def _normalization() -> keras.Model:
    norm = kl.Normalization(mean=[0.5, -1.0, 2.0], variance=[1.0, 4.0, 0.25])
    return sequential(
        BANDS,
        norm,
        conv(4, 3, padding="same"),
        kl.LayerNormalization(),
        kl.PReLU(shared_axes=[1, 2]),
        kl.Dense(4),
        kl.Softmax(),
        kl.UnitNormalization(),
        kl.Dropout(0.5),
        kl.GaussianNoise(1.0),
        kl.SpatialDropout2D(0.5),
        kl.Rescaling(2.0, offset=-0.5),
        kl.Activation("tanh"),
        kl.LeakyReLU(),
        kl.ELU(),
        conv(2, 3, padding="same"),
    )


EXACT: dict[str, Callable[[], keras.Model]] = {
    "same stack": lambda: sequential(BANDS, *[conv(4, 3, padding="same", activation="relu") for _ in range(3)]),
    "even kernels": lambda: sequential(
        BANDS, *[conv(3, 2, padding="same", activation="tanh") for _ in range(3)], conv(2, 4, padding="same")
    ),
    "valid mix": lambda: sequential(
        BANDS, conv(4, 5), conv(4, 4, padding="same"), conv(2, (3, 2), dilation_rate=(2, 1))
    ),
    "branches": _branches,
    "valid branches": _valid_branches,
    "nested": _nested,
    "batchnorm": _batchnorm,
    "pointwise zoo": _normalization,
    "depthwise separable": lambda: sequential(
        BANDS,
        kl.DepthwiseConv2D(3, padding="same", depth_multiplier=2, dilation_rate=2, bias_initializer="ones"),
        kl.SeparableConv2D(4, 5, bias_initializer="ones"),
        kl.SeparableConv2D(2, 2, padding="same", bias_initializer="ones"),
    ),
    # TF's pooling ignores padding (max of fewer values, average over fewer values):
    # still exact, because windows are clipped to the scene, never padded.
    "pooling": lambda: sequential(
        BANDS,
        conv(4, 3, padding="same"),
        kl.MaxPooling2D(3, strides=1, padding="same"),
        kl.AveragePooling2D(3, strides=1, padding="same"),
        kl.AveragePooling2D((2, 3), strides=1),
        kl.MaxPooling2D(4, strides=1, padding="same"),
        conv(2, 3, padding="same"),
    ),
    "pad and crop": lambda: sequential(
        BANDS,
        kl.ZeroPadding2D(((1, 2), (0, 3))),
        conv(4, 3),
        kl.Cropping2D(((1, 0), (2, 1))),
        conv(2, 3, padding="same"),
    ),
    "output grows": lambda: sequential(BANDS, kl.ZeroPadding2D(2), conv(2, 3, padding="same")),
}


@pytest.mark.parametrize("case", list(EXACT))
def test_tiled_equals_whole_scene(case: str) -> None:
    keras.utils.set_random_seed(0)
    model = EXACT[case]()
    fp = footprint_of(model)
    x = sparse_scene(np.random.default_rng(1), (1, *SCENE, BANDS), 0.4, pixels=True)  # mostly empty, as scenes are
    for tile in ((7, 9), (16, 5)):
        assert _relative_error(model, fp, x, tile) <= TOLERANCE, (case, tile, fp)


EDGES: dict[str, Callable[[], keras.Model]] = {
    # Output longer than the scene: the last cores lie wholly in padding, and a
    # window clipped to nothing would not run at all.
    "output grows": lambda: sequential(BANDS, kl.ZeroPadding2D(((0, 4), (3, 1))), conv(2, 3, padding="same")),
    # A valid layer, then padding: a 1-px core at a scene edge needs little
    # input, but TF needs a window at least as long as the valid layer's kernel.
    "valid then padding": lambda: sequential(BANDS, conv(2, 3), kl.ZeroPadding2D(2)),
    "pooling then padding": lambda: sequential(
        BANDS, kl.AveragePooling2D((5, 2), strides=1), kl.ZeroPadding2D(((0, 2), (1, 1)))
    ),
    "crop then padding": lambda: sequential(BANDS, kl.Cropping2D(((1, 0), (0, 2))), kl.ZeroPadding2D(((2, 0), (1, 1)))),
}


@pytest.mark.parametrize("case", list(EDGES))
def test_every_one_pixel_core_runs_and_is_exact(case: str) -> None:
    keras.utils.set_random_seed(0)
    model = EDGES[case]()
    x = sparse_scene(np.random.default_rng(1), (1, 9, 8, BANDS), 0.4, pixels=True)
    assert _relative_error(model, footprint_of(model), x, (1, 1)) <= TOLERANCE


def test_output_grows_footprint() -> None:
    # Rows: padding (0, 4) adds no reach before; the 3x3 reaches 1 px each way; the
    # output is 4 px longer. Cores past the scene get a window lengthened to run.
    fp = footprint_of(EDGES["output grows"]())
    assert fp.rows == _axis(1, 1, -4, 0)
    # Cols: padding (3, 1) puts 3 zeros before, so the 3x3 reaches 1 + 3 px before, 1 - 1 - 4 < 0 after.
    assert fp.cols == _axis(4, 0, -4, -3)


def test_reference_catches_a_short_halo() -> None:
    # Guards the test itself: one pixel less than the footprint must show.
    keras.utils.set_random_seed(0)
    model = EXACT["same stack"]()
    fp = footprint_of(model)
    short = Footprint(_axis(fp.rows.before - 1, fp.rows.after), fp.cols)
    x = sparse_scene(np.random.default_rng(1), (1, *SCENE, BANDS), 0.4, pixels=True)
    assert _relative_error(model, short, x, (7, 9)) > 1e-3


@st.composite
def _random_stack(draw: st.DrawFn) -> tuple[list[dict[str, object]], tuple[int, int], tuple[int, int]]:
    specs: list[dict[str, object]] = []
    for _ in range(draw(st.integers(1, 4))):
        specs.append(
            {
                "kernel": (draw(st.integers(1, 7)), draw(st.integers(1, 7))),
                "dilation_rate": (draw(st.integers(1, 3)), draw(st.integers(1, 3))),
                "padding": draw(st.sampled_from(["same", "valid"])),
                "activation": draw(st.sampled_from([None, "relu", "tanh", "sigmoid"])),
            }
        )
    scene, tile = [], []
    for axis in (0, 1):
        shrink = sum(_effective(s, axis) - 1 for s in specs if s["padding"] == "valid")
        out = draw(st.integers(1, 24))
        scene.append(shrink + out)
        tile.append(draw(st.integers(-(-out // 5), out)))  # at most 5 tiles per axis
    return specs, (scene[0], scene[1]), (tile[0], tile[1])


def _effective(spec: dict[str, object], axis: int) -> int:
    kernel, dilation = spec["kernel"], spec["dilation_rate"]
    assert isinstance(kernel, tuple) and isinstance(dilation, tuple)
    return int(dilation[axis] * (kernel[axis] - 1) + 1)


@settings(max_examples=25, deadline=None)
@given(case=_random_stack(), seed=st.integers(0, 2**16))
def test_random_conv_stacks_tile_exactly(
    case: tuple[list[dict[str, object]], tuple[int, int], tuple[int, int]], seed: int
) -> None:
    specs, scene, tile = case
    keras.utils.set_random_seed(seed)
    model = sequential(2, *[conv(3, **spec) for spec in specs])  # type: ignore[arg-type]
    fp = footprint_of(model)
    for axis, got in ((0, fp.rows), (1, fp.cols)):
        ks = [(_effective(s, axis), s["padding"]) for s in specs]
        same_lo = sum((k - 1) // 2 for k, p in ks if p == "same")
        same_hi = sum(k - 1 - (k - 1) // 2 for k, p in ks if p == "same")
        shrink = sum(k - 1 for k, p in ks if p == "valid")
        assert (got.before, got.after, got.shrink) == (same_lo, same_hi + shrink, shrink)
    x = sparse_scene(np.random.default_rng(seed), (1, *scene, 2), 0.4, pixels=True)
    assert _relative_error(model, fp, x, tile) <= TOLERANCE


# --- refusals ---------------------------------------------------------------------------


class _Subclassed(keras.Model):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(name="hidden")
        self.conv = kl.Conv2D(2, 3)

    def call(self, x: keras.KerasTensor) -> keras.KerasTensor:
        return self.conv(x)


class _MyReLU(kl.ReLU):  # type: ignore[misc]
    """A subclass may override call(): only exact, known classes are trusted."""


def _on(*layers: kl.Layer, shape: tuple[int | None, ...] = (None, None, BANDS)) -> Callable[[], keras.Model]:
    return lambda: keras.Sequential([keras.Input(shape), *layers])


def _functional(fn: Callable[..., object], n_inputs: int = 1) -> Callable[[], keras.Model]:
    def build() -> keras.Model:
        xs = [_input() for _ in range(n_inputs)]
        return keras.Model(xs if n_inputs > 1 else xs[0], fn(*xs))

    return build


REFUSED: dict[str, tuple[Callable[[], keras.Model], str]] = {
    "global pooling": (_on(kl.GlobalAveragePooling2D(name="gap")), "'gap' (GlobalAveragePooling2D) is not local"),
    "global pooling keepdims": (_on(kl.GlobalMaxPooling2D(keepdims=True, name="gmp")), "'gmp'"),
    "flatten": (_on(kl.Flatten(name="flat"), kl.Dense(1), shape=(8, 8, BANDS)), "'flat' (Flatten)"),
    "reshape": (_on(kl.Reshape((-1, BANDS), name="rs"), shape=(8, 8, BANDS)), "'rs' (Reshape)"),
    "permute": (_on(kl.Permute((2, 1, 3), name="perm")), "'perm' (Permute)"),
    "resizing": (_on(kl.Resizing(16, 16, name="resize")), "'resize' (Resizing) is not local"),
    "bicubic upsampling": (
        _on(kl.UpSampling2D(2, interpolation="bicubic", name="ups")),
        "'ups' (UpSampling2D) interpolates 'bicubic'",
    ),
    "transposed output padding": (
        _on(kl.Conv2DTranspose(2, 3, strides=2, output_padding=1, name="tconv")),
        "'tconv' (Conv2DTranspose) sets output_padding",
    ),
    "skip across different scales": (
        _functional(lambda x: kl.Concatenate(name="cat")([kl.MaxPooling2D(2)(x), x])),
        "'cat' (Concatenate) merges inputs of different sizes",
    ),
    "group norm": (_on(kl.GroupNormalization(groups=1, name="gn")), "'gn' (GroupNormalization)"),
    "spatial layer norm": (
        _on(kl.LayerNormalization(axis=[1, 2, 3], name="ln"), shape=(8, 8, BANDS)),
        "'ln' (LayerNormalization)",
    ),
    "lambda": (_on(kl.Lambda(lambda t: t * 2.0, name="lam")), "'lam' (Lambda)"),
    "attention": (_functional(lambda x: kl.MultiHeadAttention(1, 2, name="mha")(x, x)), "'mha' (MultiHeadAttention)"),
    "masking": (_on(kl.Masking(name="mask")), "'mask' (Masking)"),
    "per-pixel prelu": (_on(kl.PReLU(name="prelu"), shape=(8, 8, BANDS)), "'prelu' (PReLU)"),
    "softmax over rows": (_on(kl.Softmax(axis=1, name="sm")), "'sm' (Softmax)"),
    "batchnorm over rows": (
        _on(kl.BatchNormalization(axis=1, name="bn1"), shape=(8, 8, BANDS)),
        "'bn1' (BatchNormalization)",
    ),
    "concat over rows": (_functional(lambda x: kl.Concatenate(axis=1, name="cat")([x, x])), "'cat' (Concatenate)"),
    "merge of sizes": (
        _functional(lambda x: kl.Add(name="mix")([kl.Conv2D(2, 3)(x), kl.Conv2D(2, 3, padding="same")(x)])),
        "'mix' (Add) merges inputs of different sizes",
    ),
    "channels first": (
        _on(kl.Conv2D(2, 3, data_format="channels_first", name="cf"), shape=(BANDS, 8, 8)),
        "'cf' (Conv2D) is channels_first",
    ),
    "custom activation": (_on(kl.Conv2D(2, 3, activation=lambda t: t, name="act")), "'act' (Conv2D) has a custom"),
    "rescaling per pixel": (
        _on(kl.Rescaling(np.ones((8, 8, 1)), name="rsc"), shape=(8, 8, BANDS)),
        "'rsc' (Rescaling)",
    ),
    "unknown layer": (_on(kl.RandomFlip(name="flip")), "'flip' (RandomFlip) is not one tilepipe knows"),
    "subclassed layer": (_on(_MyReLU(name="mine")), "'mine' (_MyReLU) is not one tilepipe knows"),
    "raw keras op": (_functional(lambda x: x + x), "keras operation 'add"),
    "two inputs": (_functional(lambda a, b: kl.Add()([a, b]), n_inputs=2), "2 inputs and 1 outputs"),
    "two outputs": (_functional(lambda x: [kl.ReLU()(x), kl.ELU()(x)]), "1 inputs and 2 outputs"),
    "1-D model": (_on(kl.Conv1D(2, 3), shape=(None, BANDS)), "input of shape (None, None, 3)"),
    "subclassed model": (_Subclassed, "'hidden' (_Subclassed) is a subclassed model"),
    "nested subclassed model": (_functional(lambda x: _Subclassed()(x)), "'hidden' (_Subclassed)"),  # noqa: PLW0108
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_untileable_models_are_refused_by_name(case: str) -> None:
    build, message = REFUSED[case]
    with pytest.raises(UntileableModelError) as info:
        footprint_of(build())
    assert message in str(info.value)


def test_not_a_model_or_not_built() -> None:
    with pytest.raises(ModelError, match=r"model: expected a keras\.Model"):
        footprint_of(kl.Conv2D(2, 3))
    with pytest.raises(ModelError, match="no defined input"):
        footprint_of(keras.Sequential([kl.Conv2D(2, 3)]))
