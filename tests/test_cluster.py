"""Integration on a real cluster: `dask scheduler` and `dask worker` processes on 127.0.0.1.

One worker carries the GPU resource (``--resources GPU=1``), one does not. No GPU
is needed: the resource is a label the scheduler honours, and TensorFlow runs on
the CPU here just as it would on a card.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from helpers import conv_model, dask_cli_cluster, free_port, run_tilepipe, write_geotiff

pytestmark = pytest.mark.cluster



@pytest.fixture(scope="module")
def cluster_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A scheduler and two single-threaded workers, started with the real `dask` CLI."""
    workers = (("gpu-worker", ["--resources", "GPU=1"]), ("cpu-worker", []))
    with dask_cli_cluster(tmp_path_factory.mktemp("cluster-logs"), workers) as address:
        yield address


def _geotiff(path: Path, rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """A sparse uint16 GeoTIFF with nodata 0; returns its dense (y, x, band) float32 values."""
    from rasterio.transform import from_origin

    bands, rows, cols = shape
    data = np.zeros(shape, dtype=np.uint16)
    mask = rng.random((rows, cols)) < 0.01
    data[:, mask] = rng.integers(1, 1000, size=(bands, int(mask.sum())))
    data[:, 100:140, 200:260] = rng.integers(1, 1000, size=(bands, 40, 60))  # one dense cluster
    write_geotiff(path, data, crs="EPSG:32618", transform=from_origin(500000, 4600000, 10, 10), nodata=0)
    return np.moveaxis(data, 0, -1).astype(np.float32)


def test_gpu_tasks_go_to_the_gpu_worker_and_ingest_spreads(cluster_address: str, tmp_path: Path) -> None:
    from distributed import Client, get_task_stream

    import tilepipe
    from tilepipe.store import ResultStore

    rng = np.random.default_rng(3)
    dense = _geotiff(tmp_path / "scene.tif", rng, (3, 517, 611))
    model = conv_model(3, (6, 3, "same", "relu"), (2, 5, "same", "sigmoid", 2))
    model.save(tmp_path / "m.keras")
    reference = np.asarray(model(dense[None]))[0]
    with Client(cluster_address) as client:
        workers = {w["name"]: addr for addr, w in client.scheduler_info()["workers"].items()}
        with get_task_stream(client) as ingest_stream:
            tilepipe.ingest(str(tmp_path / "scene.tif"), str(tmp_path / "scene.zarr"), tile_size=64,
                            model=str(tmp_path / "m.keras"), client=client)
        with get_task_stream(client) as run_stream:
            report = tilepipe.run(str(tmp_path / "scene.zarr"), str(tmp_path / "m.keras"),
                                  str(tmp_path / "result.zarr"), client=client, gpu=True, batch_size=4)
    ingest_workers = {t["worker"] for t in ingest_stream.data if str(t["key"]).startswith("tilepipe-ingest")}
    run_workers = {t["worker"] for t in run_stream.data if "tilepipe-run" in str(t["key"])}
    assert ingest_workers == {workers["gpu-worker"], workers["cpu-worker"]}
    assert run_workers == {workers["gpu-worker"]}
    assert set(report.tiles_per_worker) == {workers["gpu-worker"]}
    assert report.computed > 0 and report.computed + report.empty == report.tiles_total
    got = np.moveaxis(ResultStore.open(tmp_path / "result.zarr").read(), 0, -1)
    scale = np.abs(reference).max()
    assert np.abs(got - reference).max() / scale <= 1e-5


def test_cli_run_by_address_equals_embedded_run(cluster_address: str, tmp_path: Path) -> None:
    from tilepipe.store import ResultStore

    rng = np.random.default_rng(5)
    dense = _geotiff(tmp_path / "scene.tif", rng, (2, 300, 350))
    model = conv_model(2, (6, 3, "same", "relu"), (2, 5, "same", "sigmoid", 2))
    model.save(tmp_path / "m.keras")
    reference = np.asarray(model(dense[None]))[0]
    for name, address in (("remote", cluster_address), ("embedded", None)):
        (tmp_path / f"{name}.yaml").write_text(
            "input: {path: scene.tif}\n"
            "model: {path: m.keras}\n"
            "tiling: {tile_size: 128}\n"
            f"output: {{zarr: {name}/result.zarr, geotiff: {name}/result.tif}}\n"
            + (f"cluster: {{address: '{address}'}}\n" if address else "cluster: {n_workers: 2}\n")
        )
    remote = run_tilepipe("run", str(tmp_path / "remote.yaml"), "--no-progress")
    assert remote.returncode == 0, remote.stderr
    assert "tiles total" in remote.stdout
    # The same workflow without an address, sent by the environment variable.
    by_env = run_tilepipe("run", str(tmp_path / "embedded.yaml"), "--no-progress")
    assert by_env.returncode == 0, by_env.stderr
    remote_result = np.moveaxis(ResultStore.open(tmp_path / "remote/result.zarr").read(), 0, -1)
    embedded_result = np.moveaxis(ResultStore.open(tmp_path / "embedded/result.zarr").read(), 0, -1)
    scale = np.abs(reference).max()
    assert np.abs(remote_result - reference).max() / scale <= 1e-5
    assert np.abs(embedded_result - reference).max() / scale <= 1e-5


def test_preflight_names_the_worker_and_the_path(cluster_address: str, tmp_path: Path) -> None:
    from distributed import Client

    from tilepipe.errors import ClusterError
    from tilepipe.execute.preflight import check_workers

    (tmp_path / "there.keras").write_bytes(b"x")
    missing = str(tmp_path / "nowhere" / "scene.zarr")
    with Client(cluster_address) as client:
        check_workers(client, inputs=[str(tmp_path / "there.keras")], outputs=[str(tmp_path / "out.zarr")])
        with pytest.raises(ClusterError) as info:
            check_workers(client, inputs=[missing], outputs=[])
        addresses = list(client.scheduler_info()["workers"])
    message = str(info.value)
    assert missing in message
    assert all(f"worker {a}" in message for a in addresses)


def test_cli_bad_scheduler_address_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(
        "input: {synthetic: {shape: [64, 64]}}\nmodel: {builtin: demo}\noutput: {zarr: out/result.zarr}\n"
    )
    port = free_port()  # nothing listens there
    proc = run_tilepipe("run", str(tmp_path / "wf.yaml"), "--scheduler", f"tcp://127.0.0.1:{port}")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert f"127.0.0.1:{port}" in proc.stderr.strip().splitlines()[-1]


def test_builtin_unet_workflow_on_the_cluster_equals_the_padded_scene(cluster_address: str, tmp_path: Path) -> None:
    """The U-Net workflow of workflows/unet.yaml, smaller, on a real cluster: stride-aligned tiles, exact."""
    from tilepipe.model._tf import keras
    from tilepipe.store import ResultStore

    rng = np.random.default_rng(8)
    dense = _geotiff(tmp_path / "scene.tif", rng, (4, 301, 275))  # sides not multiples of 8
    (tmp_path / "unet.yaml").write_text(
        "input: {path: scene.tif}\n"
        "model: {builtin: unet}\n"
        "tiling: {tile_size: 100, halo: auto}\n"
        "output: {zarr: out/result.zarr}\n"
        f"cluster: {{address: '{cluster_address}'}}\n"
    )
    proc = run_tilepipe("run", str(tmp_path / "unet.yaml"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "tile size 100 rounded up to 104" in proc.stderr
    # The reference: the saved built-in model, by hand, on the scene padded with zeros to 304 x 280.
    model = keras.saving.load_model(tmp_path / "out" / "unet_model_4band.keras")
    padded = np.zeros((1, 304, 280, 4), np.float32)
    padded[0, :301, :275] = dense
    reference = np.asarray(model(padded))[0, :301, :275]
    got = np.moveaxis(ResultStore.open(tmp_path / "out/result.zarr").read(), 0, -1)
    assert got.shape == reference.shape
    assert np.abs(got - reference).max() / np.abs(reference).max() <= 1e-5
