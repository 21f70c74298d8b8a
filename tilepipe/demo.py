"""The demo model tilepipe builds itself (nothing is downloaded)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

__all__ = [
    "DEMO_BIAS",
    "DEMO_CRS",
    "DEMO_GAIN",
    "DEMO_TRANSFORM",
    "build_demo_model",
    "build_unet_model",
    "builtin_model_path",
    "demo_model_path",
]

# A UTM zone 18N grid of 10 m pixels, so the demo output is georeferenced like a real scene.
DEMO_CRS = "EPSG:32618"
DEMO_TRANSFORM = (10.0, 0.0, 500_000.0, 0.0, -10.0, 4_600_000.0)


#: The demo model's score: sigmoid(DEMO_GAIN * density + DEMO_BIAS), density the smoothed band sum.
#: Empty ground scores sigmoid(-5) = 0.007; a density of 0.5 (a quarter of the pixels around
#: holding a detection of mean value 0.5 in each of 4 bands) scores 0.5; density 1 scores 0.993,
#: and the synthetic scene's cluster cores reach 1.5 to 2.4.
DEMO_GAIN, DEMO_BIAS = 10.0, -5.0


def build_demo_model(bands: int = 4, filters: int = 16) -> Any:
    """A detection-density map with fixed weights: three 3x3 ``same`` convolutions, sigmoid score out.

    ``conv1`` sums the bands and averages them over 3 x 3 pixels; ``conv2`` and ``score``
    average over 3 x 3 again (together a 7 x 7 smoothing, each layer zero-padded at the
    scene's border as Keras pads); ``score`` then maps the density ``d`` to
    ``sigmoid(DEMO_GAIN * d + DEMO_BIAS)``: about 0 on empty ground, near 1 where
    detections cluster. Tuned for values in (0, 1] (the synthetic scene's floats).

    The hidden layers are ``filters`` channels wide, each holding the same smoothed sum
    (scaled by ``1 / filters`` where they are summed again), so that the model costs what
    a small real detector does: the benchmarks time it. No activation on the hidden
    layers: the map is linear up to the sigmoid. Halo: 3 pixels. Its response to an
    all-zero window is sigmoid(DEMO_BIAS), not zero, which the empty-tile path must
    reproduce. Nothing random: the model is the same everywhere.
    """
    import numpy as np  # noqa: PLC0415 - with TensorFlow, on a worker

    from tilepipe.model import keras  # noqa: PLC0415 - built on a worker: TensorFlow stays out of the client

    box = np.full((3, 3, 1, 1), 1 / 9, dtype=np.float32)
    weights = {
        "conv1": [np.broadcast_to(box, (3, 3, bands, filters)).copy(), np.zeros(filters, np.float32)],
        "conv2": [np.broadcast_to(box / filters, (3, 3, filters, filters)).copy(), np.zeros(filters, np.float32)],
        "score": [np.broadcast_to(box * DEMO_GAIN / filters, (3, 3, filters, 1)).copy(),
                  np.full(1, DEMO_BIAS, np.float32)],
    }
    model = keras.Sequential(
        [
            keras.Input((None, None, bands)),
            keras.layers.Conv2D(filters, 3, padding="same", name="conv1"),
            keras.layers.Conv2D(filters, 3, padding="same", name="conv2"),
            keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid", name="score"),
        ],
        name="tilepipe_demo",
    )
    for name, values in weights.items():
        model.get_layer(name).set_weights(values)
    return model


def build_unet_model(bands: int = 4, filters: tuple[int, ...] = (16, 32, 32), seed: int = 11) -> Any:
    """A small segmentation U-Net: one level per entry of ``filters`` (three halvings by default).

    Down: two 3x3 ``same`` convolutions, then 2x2 max pooling; up: bilinear
    upsampling, concatenation with the skip of the same scale, two 3x3
    convolutions; a 1x1 sigmoid score out. Its total stride is ``2 ** levels``
    (8), so tilepipe aligns tiles to 8 px and pads the scene to a multiple of 8,
    as a user running it by hand would. Weights come from a fixed seed.
    """
    from tilepipe.model import keras  # noqa: PLC0415 - built on a worker: TensorFlow stays out of the client

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
