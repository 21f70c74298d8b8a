"""Calling models on tiles: per-shape tracing, densify through SparseTensor, batch sizing."""

from __future__ import annotations

import numpy as np

from tilepipe.model._tf import keras
from tilepipe.model.runner import CompiledModel, auto_batch_size, densify


def test_densify_matches_numpy_scatter() -> None:
    rng = np.random.default_rng(0)
    shape = (2, 5, 7, 3)
    flat = np.sort(rng.choice(np.prod(shape), size=20, replace=False))
    values = rng.random(20).astype(np.float32)
    expected = np.zeros(np.prod(shape), np.float32)
    expected[flat] = values
    indices = np.stack(np.unravel_index(flat, shape), axis=1).astype(np.int64)
    got = np.asarray(densify(shape, indices, values))
    np.testing.assert_array_equal(got, expected.reshape(shape))


def test_dilated_model_on_odd_edge_windows_after_even_ones() -> None:
    """A dilated conv traced for None shapes fails on odd edge windows (TF 2.21); one trace per shape does not."""
    model = keras.Sequential([keras.Input((None, None, 1)), keras.layers.Conv2D(2, 3, dilation_rate=2, padding="same")])
    compiled = CompiledModel(model)
    for shape in [(1, 64, 64, 1), (1, 55, 64, 1), (1, 55, 37, 1), (2, 64, 64, 1)]:
        x = np.random.default_rng(1).random(shape).astype(np.float32)
        np.testing.assert_allclose(compiled(x), np.asarray(model(x)), rtol=1e-5, atol=1e-6)


def test_widest_layer_and_batch_size_for_free_memory() -> None:
    model = keras.Sequential([keras.Input((None, None, 4)), keras.layers.Conv2D(16, 3), keras.layers.Conv2D(1, 3)])
    compiled = CompiledModel(model)
    assert compiled.in_channels == 4
    assert compiled.max_channels == 16
    per_tile = 1030 * 1030 * 16 * 4 * 4  # bytes for four activations of 16 channels
    assert auto_batch_size((1030, 1030), 16, 10 * per_tile) == 5  # half the free memory
    assert auto_batch_size((1030, 1030), 16, per_tile) == 1  # never below one
    assert auto_batch_size((64, 64), 16, 80 * 2**30) == 64  # capped
    assert auto_batch_size((1030, 1030), 16, None) == 1  # a CPU worker: 512 MiB of activations
    assert auto_batch_size((262, 262), 16, None) == 30
