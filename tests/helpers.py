"""Helpers shared by several test modules: tiny models (:func:`conv_model`) and scenes (:func:`sparse_scene`),
GeoTIFFs, the ``tilepipe`` command.

Test modules import them as ``from helpers import ...``: ``tests/`` has no ``__init__.py``, so pytest's
default ("prepend") import mode puts it on ``sys.path``. Keras, TensorFlow and rasterio are imported
inside the helpers that use them, so a module that only runs the command does not load them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

if TYPE_CHECKING:
    import keras
    import tensorflow as tf
    from keras import layers as kl

#: The type of conftest.py's ``assert_exact(got, ref, what="")`` fixture; it returns the relative error.
Checker = Callable[..., float]


# -- the command and its processes ----------------------------------------------------------------


def run_tilepipe(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python -m tilepipe ARGS`` as a user would, without ``DASK_SCHEDULER_ADDRESS``; capture text."""
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    return subprocess.run([sys.executable, "-m", "tilepipe", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout, check=False)


def assert_one_clear_line(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Assert that a command failed with a last stderr line ``Error: ...`` holding every needle, no traceback."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ")
    for needle in needles:
        assert needle in last, (needle, last)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on when asked."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- models ---------------------------------------------------------------------------------------


def conv(filters: int, kernel: int | tuple[int, int], **kwargs: Any) -> kl.Conv2D:
    """A ``Conv2D`` with random non-zero biases (a zero bias can hide border effects)."""
    import keras

    return keras.layers.Conv2D(filters, kernel, bias_initializer=keras.initializers.RandomNormal(stddev=0.5),
                               **kwargs)


def sequential(bands: int, *layers: kl.Layer, seed: int | None = None) -> keras.Sequential:
    """``layers`` on inputs of any size with ``bands`` channels; ``seed`` goes to set_random_seed first."""
    import keras

    if seed is not None:
        keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((None, None, bands)), *layers])


#: One Conv2D layer of :func:`conv_model`: ``(filters, kernel, padding, activation)``, and optionally its dilation.
ConvSpec = tuple[Any, ...]


def conv_model(bands: int, *specs: ConvSpec, seed: int = 0, input_scale: float | None = None) -> keras.Sequential:
    """A Sequential of Conv2D layers on inputs of any size with ``bands`` channels: the tests' one small model.

    Each spec is ``(filters, kernel, padding, activation[, dilation])``. Biases are drawn from N(0, 0.5),
    never zero (a zero bias can hide border effects), kernels Glorot-uniform; every initialiser is seeded
    from ``seed`` and the layer's place, so a call builds the same weights whatever ran before, and no
    global random state is touched (hypothesis examples share models). ``input_scale``: the first
    layer's kernel drawn from N(0, input_scale), so that inputs in the hundreds (uint8 rasters) do not
    saturate the output.
    """
    import keras

    built: list[Any] = [keras.Input((None, None, bands))]
    for i, (filters, kernel, padding, activation, *rest) in enumerate(specs):
        init = keras.initializers
        weights = (init.RandomNormal(stddev=input_scale, seed=seed * 100 + i) if i == 0 and input_scale
                   else init.GlorotUniform(seed=seed * 100 + i))
        built.append(keras.layers.Conv2D(
            filters, kernel, padding=padding, activation=activation, dilation_rate=rest[0] if rest else 1,
            kernel_initializer=weights, bias_initializer=init.RandomNormal(stddev=0.5, seed=seed * 100 + 50 + i),
        ))
    return keras.Sequential(built)


def predict(model: keras.Model, batch: np.ndarray) -> np.ndarray:
    """The model on ``batch`` ``(n, y, x, band)`` in inference mode, as a numpy ``(n, y, x, channel)`` array."""
    return np.asarray(model(batch, training=False))


def reference(model: keras.Model, dense: np.ndarray) -> np.ndarray:
    """Keras on one whole dense scene ``(y, x, band)``, as ``(channel, y, x)``: the layout of a result store."""
    return predict(model, dense[None])[0].transpose(2, 0, 1)


# -- scenes ---------------------------------------------------------------------------------------


def coo(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """``(indices, values, shape)`` of the non-zero entries of ``dense``, as ingest or a SparseTensor takes them."""
    indices = np.argwhere(dense != 0)
    return indices, dense[tuple(indices.T)], dense.shape


def sparse_scene(rng: np.random.Generator, shape: tuple[int, ...], density: float, *, high: int | None = None,
                 dtype: str = "float32", pixels: bool = False) -> np.ndarray:
    """A scene of ``shape`` that is zero but at a random ``density`` of its entries: the tests' one sparse scene.

    The kept entries hold normal floats, or with ``high`` integers from 1 to ``high - 1`` (a raster's
    ``(band, y, x)`` counts, say); ``pixels``: whole pixels are kept or not, every value along the last
    (band) axis together. The mask is drawn first, then the values, from ``rng``.
    """
    keep = rng.random(shape[:-1] if pixels else shape) < density
    if pixels:
        keep = np.broadcast_to(keep[..., None], shape)
    values = rng.normal(size=shape) if high is None else rng.integers(1, high, shape)
    return np.where(keep, values, 0).astype(dtype)


def patches(shape: tuple[int, int, int], boxes: list[tuple[int, int, int, int]], seed: int = 0) -> np.ndarray:
    """A scene of zeros with random values (half of the pixels) in the given ``(r0, r1, c0, c1)`` boxes."""
    rng = np.random.default_rng(seed)
    dense = np.zeros(shape, np.float32)
    for r0, r1, c0, c1 in boxes:
        block = rng.normal(size=(r1 - r0, c1 - c0, shape[2])).astype(np.float32)
        block[rng.random(block.shape) < 0.5] = 0
        dense[r0:r1, c0:c1] = block
    return dense


def empty_sparse_tensor(shape: Sequence[int]) -> tf.SparseTensor:
    """A float32 ``tf.SparseTensor`` of ``shape`` with no entries."""
    import tensorflow as tf

    return tf.SparseTensor(np.zeros((0, len(shape)), np.int64), np.zeros(0, np.float32), tuple(shape))


def expected_status(dense: np.ndarray, tile: int, halo: int, *, free_interior: bool = False) -> np.ndarray:
    """Tile status ``(row, col)``, worked out here: 1 where the haloed, clipped window holds a value, else 2;
    with ``free_interior`` (the model's response to zeros deep inside a scene is one value per band, which
    each band's array takes as its fill value), 3 for empty tiles whose haloed window touches no scene edge
    (recorded, never written)."""
    rows, cols = dense.shape[:2]
    ny, nx = -(-rows // tile), -(-cols // tile)
    status = np.empty((ny, nx), np.uint8)
    for r in range(ny):
        for c in range(nx):
            r0, r1 = r * tile - halo, min((r + 1) * tile, rows) + halo
            c0, c1 = c * tile - halo, min((c + 1) * tile, cols) + halo
            win = dense[max(r0, 0) : min(r1, rows), max(c0, 0) : min(c1, cols)]
            inside = r0 > 0 and c0 > 0 and r1 < rows and c1 < cols
            status[r, c] = 1 if np.any(win != 0) else 3 if free_interior and inside else 2
    return status


def write_geotiff(path: Path, data: np.ndarray, *, crs: str | None = None, transform: Any = None,
                  nodata: float | None = None) -> None:
    """Write ``data`` ``(band, y, x)`` to a GeoTIFF at ``path``; size, band count and dtype come from the array."""
    import rasterio

    bands, rows, cols = data.shape
    with rasterio.open(path, "w", driver="GTiff", width=cols, height=rows, count=bands, dtype=data.dtype.name,
                       nodata=nodata, crs=crs, transform=transform) as dst:
        dst.write(data)


def dense_scene(path: Path | str) -> np.ndarray:
    """A complete scene store's content as a dense ``(y, x, band)`` array, from its tiles' cores and halos."""
    from tilepipe.store import SceneStore

    store = SceneStore.open(path)
    rows, cols = store.info.shape
    dense = np.zeros((rows, cols, store.info.bands), dtype=store.info.dtype)
    grid = store.info.grid
    ny, nx = grid.grid_shape
    for r in range(ny):
        for c in range(nx):
            tile = store.read_tile(r, c)
            if tile is None:
                continue
            w = grid.tile(r, c).window
            rr, cc, bb, vv = tile.coords()
            dense[rr + w.row_start, cc + w.col_start, bb] = vv
    return dense


# -- a real cluster -------------------------------------------------------------------------------

DASK = str(Path(sys.executable).with_name("dask"))


@contextlib.contextmanager
def dask_cli_cluster(logs: Path, workers: Sequence[tuple[str, Sequence[str]]]) -> Iterator[str]:
    """A scheduler and one single-threaded worker per ``(name, extra dask-worker args)``, started with the
    real ``dask`` CLI on 127.0.0.1; yields the scheduler's address once every worker has joined."""
    if not os.path.exists(DASK):
        pytest.skip(f"the dask CLI is not installed beside {sys.executable}")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    procs = [
        subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", "127.0.0.1:0"],
            stdout=open(logs / "scheduler.log", "w"), stderr=subprocess.STDOUT, env=env,  # noqa: SIM115
        )
    ]
    for name, extra in workers:
        procs.append(
            subprocess.Popen(
                [DASK, "worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--nworkers", "1",
                 "--name", name, "--no-dashboard", *extra],
                stdout=open(logs / f"{name}.log", "w"), stderr=subprocess.STDOUT, env=env,  # noqa: SIM115
            )
        )
    from distributed import Client

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with Client(address, timeout=5) as client:
                    client.wait_for_workers(len(workers), timeout=max(1, deadline - time.monotonic()))
                break
            except (OSError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


@contextlib.contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` (``"300k"``) mounted at ``folder`` (made if absent) for the test's
    life; skips where this process may not mount one."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@contextlib.contextmanager
def moto_s3(logs: Path, *, recording: Path | None = None) -> Iterator[str]:
    """moto's S3 server in its own process at 127.0.0.1, the environment pointing botocore, s3fs
    and (through tilepipe) GDAL at it; yields its endpoint. ``recording``: where moto records requests."""
    import urllib.request

    port = free_port()
    env = {**os.environ, **({"MOTO_RECORDER_FILEPATH": str(recording)} if recording else {})}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=open(logs / "moto.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
    endpoint = f"http://127.0.0.1:{port}"
    keys = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, (logs / "moto.log").read_text()
                assert time.monotonic() < deadline, "moto's server did not start"
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
