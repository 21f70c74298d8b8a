"""On a machine with a GPU: TensorFlow grows its memory, and a GPU run equals the dense model.

Skipped (with the reason) where TensorFlow sees no GPU, as on CI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tilepipe.model._tf import keras, tf

from helpers import coo

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not tf.config.list_physical_devices("GPU"), reason="TensorFlow sees no GPU here"),
]


def test_memory_growth_is_on() -> None:
    for gpu in tf.config.list_physical_devices("GPU"):
        assert tf.config.experimental.get_memory_growth(gpu)


def test_gpu_run_equals_dense_model(tmp_path: Path) -> None:
    import tilepipe
    from tilepipe.store import ResultStore

    rng = np.random.default_rng(0)
    dense = np.zeros((600, 700, 3), np.float32)
    mask = rng.random((600, 700)) < 0.02
    dense[mask] = rng.random((int(mask.sum()), 3))
    model: Any = keras.Sequential([keras.Input((None, None, 3)),
                                   keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
                                   keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")])
    model.save(tmp_path / "m.keras")
    tilepipe.ingest(coo(dense), tmp_path / "s.zarr", tile_size=256, model=model)
    report = tilepipe.run(tmp_path / "s.zarr", tmp_path / "m.keras", tmp_path / "r.zarr", gpu=True)
    assert report.computed > 0
    got = np.moveaxis(ResultStore.open(tmp_path / "r.zarr").read(), 0, -1)
    ref = np.asarray(model(dense[None]))[0]
    assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-5
