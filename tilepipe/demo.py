"""The demo model tilepipe builds itself (nothing is downloaded)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

__all__ = [
    "DEMO_CRS",
    "DEMO_TRANSFORM",
    "build_demo_model",
    "build_unet_model",
    "builtin_model_path",
    "demo_model_path",
]

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


def build_unet_model(bands: int = 4, filters: tuple[int, ...] = (16, 32, 32), seed: int = 11) -> Any:
    """A small segmentation U-Net: one level per entry of ``filters`` (three halvings by default).

    Down: two 3x3 ``same`` convolutions, then 2x2 max pooling; up: bilinear
    upsampling, concatenation with the skip of the same scale, two 3x3
    convolutions; a 1x1 sigmoid score out. Its total stride is ``2 ** levels``
    (8), so tilepipe aligns tiles to 8 px and pads the scene to a multiple of 8,
    as a user running it by hand would. Weights come from a fixed seed.
    """
    from tilepipe.model._tf import keras  # noqa: PLC0415 - built on a worker: TensorFlow stays out of the client

    layers = keras.layers
    init = keras.initializers.HeNormal(seed=seed)
    count = iter(range(10_000))

    def conv(x: Any, width: int) -> Any:
        n = next(count)
        return layers.Conv2D(width, 3, padding="same", activation="relu", kernel_initializer=init,
                             bias_initializer=keras.initializers.RandomNormal(stddev=0.05, seed=seed + n),
                             name=f"conv{n}")(x)

    inputs = keras.Input((None, None, bands))
    x, skips = inputs, []
    for width in filters:
        x = conv(conv(x, width), width)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"down{len(skips)}")(x)
    x = conv(x, filters[-1])
    for level in reversed(range(len(filters))):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"up{level + 1}")(x)
        x = layers.Concatenate(name=f"skip{level + 1}")([x, skips[level]])
        x = conv(conv(x, filters[level]), filters[level])
    score = layers.Conv2D(1, 1, activation="sigmoid", kernel_initializer=init, name="score")(x)
    return keras.Model(inputs, score, name="tilepipe_unet")


#: Built-in model name -> its builder (``bands`` is its one argument).
BUILDERS: dict[str, Callable[[int], Any]] = {"demo": build_demo_model, "unet": build_unet_model}


def builtin_model_path(name: str, folder: str, bands: int = 4) -> str:
    """Save the built-in model ``name`` as ``folder/<name>_model_<bands>band.keras`` (once) and return its path.

    An existing file is kept, so its sha256, and with it the run identity,
    stays the same from one run to the next.
    """
    path = os.path.join(folder, f"{name}_model_{bands}band.keras")
    if not os.path.exists(path):
        os.makedirs(folder, exist_ok=True)
        tmp = path + ".partial.keras"
        BUILDERS[name](bands).save(tmp)
        os.replace(tmp, path)
    return path


def demo_model_path(folder: str, bands: int = 4) -> str:
    """Save the demo model as ``folder/demo_model_<bands>band.keras`` (once) and return its path."""
    return builtin_model_path("demo", folder, bands)
