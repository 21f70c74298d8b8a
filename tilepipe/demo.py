"""The demo model tilepipe builds itself (nothing is downloaded)."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["DEMO_CRS", "DEMO_TRANSFORM", "build_demo_model", "demo_model_path"]

# A UTM zone 18N grid of 10 m pixels, so the demo output is georeferenced like a real scene.
DEMO_CRS = "EPSG:32618"
DEMO_TRANSFORM = (10.0, 0.0, 500_000.0, 0.0, -10.0, 4_600_000.0)


def build_demo_model(bands: int = 4, filters: int = 16, seed: int = 7) -> Any:
    """A small detector: three 3x3 ``same`` convolutions (``filters`` wide), sigmoid score out.

    Weights are drawn from a fixed seed, so the model is the same everywhere.
    Its halo is 3 pixels; its response to an all-zero window is sigmoid(bias),
    not zero, which the empty-tile path must reproduce.
    """
    from tilepipe.model._tf import keras  # noqa: PLC0415 - built on a worker: TensorFlow stays out of the client

    init = keras.initializers.GlorotUniform(seed=seed)
    bias = keras.initializers.RandomNormal(stddev=0.1, seed=seed + 1)
    return keras.Sequential(
        [
            keras.Input((None, None, bands)),
            keras.layers.Conv2D(filters, 3, padding="same", activation="relu",
                                kernel_initializer=init, bias_initializer=bias, name="conv1"),
            keras.layers.Conv2D(filters, 3, padding="same", activation="relu",
                                kernel_initializer=init, bias_initializer=bias, name="conv2"),
            keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid",
                                kernel_initializer=init, bias_initializer=bias, name="score"),
        ],
        name="tilepipe_demo",
    )


def demo_model_path(folder: str, bands: int = 4) -> str:
    """Save the demo model as ``folder/demo_model.keras`` (once) and return its path.

    An existing file is kept, so its sha256, and with it the run identity,
    stays the same from one run to the next.
    """
    path = os.path.join(folder, f"demo_model_{bands}band.keras")
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        tmp = path + ".partial.keras"
        build_demo_model(bands).save(tmp)
        os.replace(tmp, path)
    return path
