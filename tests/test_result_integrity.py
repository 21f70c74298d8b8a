"""A result store says exactly what it holds, and a run never says "right" when it is not.

Real faults on real files, no mocks: a scene chunk overwritten with garbage (a tile fails,
then the run resumes), result chunks deleted or bit-flipped, a chunk where the record says
"free", a store removed under a running run, outputs that are (or hold, or lie inside) an
input. Every value check is against Keras on the whole dense scene.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from distributed.diagnostics.plugin import SchedulerPlugin

import tilepipe
from tilepipe.errors import IncompleteRunError, InputError, StoreError
from tilepipe.export import export_geotiff, quicklook
from tilepipe.store import ResultStore
from tilepipe.store.result import STATUS_COMPUTED, STATUS_EMPTY, STATUS_FREE, STATUS_NOT_DONE

from helpers import (
    Checker,
    assert_one_clear_line,
    conv,
    coo,
    expected_status,
    patches,
    reference,
    run_tilepipe,
    sequential,
    write_geotiff,
)

pytestmark = pytest.mark.cluster


# -- scenes, runs -----------------------------------------------------------------------------------


class Case:
    """A scene store, a model file and a result path in ``folder``, with the dense scene and model."""

    def __init__(self, folder: Path, dense: np.ndarray, model: Any, tile: int) -> None:
        self.dense, self.model, self.tile = dense, model, tile
        folder.mkdir(parents=True, exist_ok=True)
        self.scene = str(folder / "scene.zarr")
        self.result = folder / "result.zarr"
        self.model_path = str(folder / "model.keras")
        model.save(self.model_path)
        tilepipe.ingest(coo(dense), self.scene, tile_size=tile, model=model, crs="EPSG:32633",
                        transform=(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0))
        self.halo = tilepipe.footprint_of(model).halo

    def run(self, client: Any, **kwargs: Any) -> Any:
        return tilepipe.run(self.scene, self.model_path, str(self.result), client=client, **kwargs)

    def reference(self) -> np.ndarray:
        return reference(self.model, self.dense)

    def chunk(self, band: int, row: int, col: int) -> Path:
        """Zero-based ``band``'s chunk file of tile ``(row, col)``: one array per band, ``band_1``, ..."""
        return self.result / f"band_{band + 1}" / "c" / str(row) / str(col)


def _two_band(folder: Path) -> Case:
    """Two output bands whose responses to zeros differ (each band its own fill value); busy, edge and
    interior tiles."""
    model = sequential(2, conv(3, 3, padding="same", activation="relu"),
                       conv(2, 3, padding="same", activation="sigmoid"), seed=31)
    dense = patches((50, 50, 2), [(0, 10, 0, 10), (22, 28, 22, 28)], seed=31)
    return Case(folder, dense, model, tile=10)


def _one_band(folder: Path) -> Case:
    """One output band: empty interior tiles are free (recorded, never written)."""
    model = sequential(1, conv(2, 3, padding="same", activation="tanh"),
                       conv(1, 3, padding="same", activation="sigmoid"), seed=32)
    dense = patches((60, 60, 1), [(22, 28, 22, 28)], seed=32)
    return Case(folder, dense, model, tile=10)


def _interior(tile: int, halo: int, shape: tuple[int, int], row: int, col: int) -> bool:
    """Whether the tile's haloed window stays off every scene edge (worked out here, not by tilepipe)."""
    rows, cols = shape
    return (row * tile - halo > 0 and col * tile - halo > 0
            and (row + 1) * tile + halo < rows and (col + 1) * tile + halo < cols)


# -- the record is exact ----------------------------------------------------------------------------


def test_every_done_tile_writes_every_band_and_only_free_tiles_are_absent(
    tmp_path: Path, dask_client: Any, assert_exact: Checker
) -> None:
    one = _one_band(tmp_path / "one")
    one.run(dask_client)
    store = ResultStore.open(one.result, mode="r")
    assert_exact(store.read(), one.reference(), "one band, free interior tiles")
    expected = expected_status(one.dense, one.tile, one.halo)
    for r, c in np.ndindex(expected.shape):
        if expected[r, c] == STATUS_EMPTY and _interior(one.tile, one.halo, one.dense.shape[:2], r, c):
            expected[r, c] = STATUS_FREE
    assert (expected == STATUS_FREE).sum() >= 4
    np.testing.assert_array_equal(store.status(), expected)
    for r, c in np.ndindex(expected.shape):
        assert one.chunk(0, r, c).is_file() == (expected[r, c] != STATUS_FREE), (r, c, expected[r, c])

    two = _two_band(tmp_path / "two")
    two.run(dask_client)
    store = ResultStore.open(two.result, mode="r")
    assert_exact(store.read(), two.reference(), "two bands, free interior tiles")
    # The two bands' responses to zeros differ: each has its own fill value, and the empty interior
    # tiles are free in both (no chunk in either band).
    fills = np.float32(store.fill_values)
    assert fills.shape == (2,) and fills[0] != fills[1]
    expected = expected_status(two.dense, two.tile, two.halo)
    for r, c in np.ndindex(expected.shape):
        if expected[r, c] == STATUS_EMPTY and _interior(two.tile, two.halo, (50, 50), r, c):
            expected[r, c] = STATUS_FREE
    assert (expected == STATUS_FREE).sum() >= 4
    np.testing.assert_array_equal(store.status(), expected)
    for r, c in np.ndindex(expected.shape):
        for band in range(2):
            assert two.chunk(band, r, c).is_file() == (expected[r, c] != STATUS_FREE), (band, r, c)
    # A free tile reads as each band's own response to zeros (worked out by Keras on zeros, not by tilepipe).
    r, c = next(zip(*np.nonzero(expected == STATUS_FREE), strict=True))
    zeros = reference(two.model, np.zeros((50, 50, 2), np.float32))[:, 25, 25]
    tile = store.data[:, r * 10 : r * 10 + 10, c * 10 : c * 10 + 10]
    np.testing.assert_allclose(tile, np.broadcast_to(zeros[:, None, None], tile.shape), rtol=1e-5)


def test_missing_chunk_is_an_error_naming_the_tile_and_a_rerun_recomputes_it(
    tmp_path: Path, dask_client: Any, assert_exact: Checker
) -> None:
    case = _two_band(tmp_path)
    case.run(dask_client)
    status = ResultStore.open(case.result, mode="r").status()
    assert status[2, 2] == STATUS_COMPUTED and status[4, 1] == STATUS_EMPTY
    case.chunk(1, 2, 2).unlink()  # a computed tile's band 1
    case.chunk(0, 4, 1).unlink()  # an empty (border) tile's band 0
    named = r"tile \(row 2, col 2\) band 1: its data chunk is missing, though the store records the tile computed"
    with pytest.raises(StoreError, match=named):
        export_geotiff(case.result, tmp_path / "out.tif")
    assert not (tmp_path / "out.tif").exists()
    with pytest.raises(StoreError, match=named):
        quicklook(case.result, tmp_path / "look.png")
    with pytest.raises(StoreError, match=named + r" \(and 1 more\)"):
        ResultStore.open(case.result, mode="r").read()
    # The rerun does not call a damaged store up to date: it recomputes the two tiles.
    report = case.run(dask_client)
    assert not report.up_to_date and report.repaired == 2 and report.failed == 0
    assert report.computed + report.empty == 2
    assert_exact(ResultStore.open(case.result, mode="r").read(), case.reference(), "after repairing two chunks")
    export_geotiff(case.result, tmp_path / "out.tif")
    with rasterio.open(tmp_path / "out.tif") as src:
        assert_exact(src.read(), case.reference(), "GeoTIFF of the repaired store")
    assert case.run(dask_client).up_to_date


def test_tile_not_done_in_a_complete_store_is_recomputed(
    tmp_path: Path, dask_client: Any, assert_exact: Checker
) -> None:
    case = _two_band(tmp_path)
    case.run(dask_client)
    store = ResultStore.open(case.result)
    store.set_status(np.array([4]), np.array([0]), STATUS_NOT_DONE)
    store.reset([(1, 1)])  # not done, and its chunks gone
    assert ResultStore.open(case.result, mode="r").complete  # the record still says complete
    with pytest.raises(StoreError, match=r"tile \(row 1, col 1\): not done, though the store is marked complete"):
        export_geotiff(case.result, tmp_path / "out.tif")
    report = case.run(dask_client)
    assert not report.up_to_date and report.repaired == 2
    assert_exact(ResultStore.open(case.result, mode="r").read(), case.reference(), "after two tiles not done")


def test_chunk_of_a_free_tile_is_an_error_and_a_rerun_removes_it(
    tmp_path: Path, dask_client: Any, assert_exact: Checker
) -> None:
    case = _one_band(tmp_path)
    case.run(dask_client)
    assert ResultStore.open(case.result, mode="r").status()[1, 4] == STATUS_FREE
    ResultStore.open(case.result).data[0, 10:20, 40:50] = 123.0  # say, a foreign writer's
    with pytest.raises(StoreError, match=r"tile \(row 1, col 4\) band 0: holds a data chunk, though the store "
                                         r"records the tile free"):
        export_geotiff(case.result, tmp_path / "out.tif")
    report = case.run(dask_client)
    assert report.repaired == 1
    assert not case.chunk(0, 1, 4).exists()
    assert_exact(ResultStore.open(case.result, mode="r").read(), case.reference(), "after a stray chunk")


def test_flipped_byte_in_a_result_chunk_is_an_error_naming_the_tile(
    tmp_path: Path, dask_client: Any, assert_exact: Checker
) -> None:
    case = _two_band(tmp_path)
    case.run(dask_client)
    assert ResultStore.open(case.result, mode="r").status()[2, 2] == STATUS_COMPUTED
    chunk = case.chunk(1, 2, 2)
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    chunk.write_bytes(bytes(raw))
    named = r"tile \(row 2, col 2\) band 1: its data chunk is corrupt \(checksum mismatch\)"
    with pytest.raises(StoreError, match=named):
        export_geotiff(case.result, tmp_path / "out.tif")
    assert not (tmp_path / "out.tif").exists()
    with pytest.raises(StoreError, match=named):
        quicklook(case.result, tmp_path / "look.png", band=1)
    with pytest.raises(StoreError, match=named):
        ResultStore.open(case.result, mode="r").read()
    case.run(dask_client, overwrite=True)
    assert_exact(ResultStore.open(case.result, mode="r").read(), case.reference(), "recomputed with overwrite")


#: ``tilepipe.run`` on the test's cluster (argv: scene, model, result, scheduler address).
RUN = """
    import sys
    from distributed import Client
    import tilepipe
    scene, model, result, address = sys.argv[1:5]
    with Client(address) as client:
        report = tilepipe.run(scene, model, result, client=client, batch_size=1)
    print(report.summary(), flush=True)
"""


def test_store_removed_under_a_running_run_is_never_marked_complete(
    tmp_path: Path, dask_client: Any, assert_exact: Checker
) -> None:
    model = sequential(1, conv(4, 3, padding="same", activation="relu"), conv(2, 3, padding="same"), seed=33)
    dense = np.random.default_rng(33).normal(size=(160, 160, 1)).astype(np.float32)
    case = Case(tmp_path, dense, model, tile=8)  # 400 tiles, one model call each: seconds
    env = {**{k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(RUN), case.scene, case.model_path,
                             str(case.result), dask_client.scheduler.address],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        data = case.result / "band_1" / "c"
        while not (data.is_dir() and any(p.is_file() for p in data.rglob("*"))):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.01)
        shutil.rmtree(case.result, ignore_errors=True)  # a user's rm -rf, or a process ignoring the lock
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0, out
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"tilepipe.errors.StoreError: {case.result}: "), err[-3000:]
    with contextlib.suppress(StoreError):  # not even a store any more: fine, it claims nothing
        assert not ResultStore.open(case.result, mode="r").complete
    case.run(dask_client, overwrite=True)
    assert_exact(ResultStore.open(case.result, mode="r").read(), case.reference(), "rerun after removal")


def test_verify_notices_a_store_removed_or_replaced_under_its_writer(tmp_path: Path) -> None:
    from tilepipe.geometry import Window
    from tilepipe.store.result import ResultInfo

    info = ResultInfo(shape=(1, 20, 20), transform=(1.0, 0.0, 0.0, 0.0, -1.0, 0.0), crs_wkt=None,
                      tile_size=(10, 10), provenance={"run_id": "first"})
    path = tmp_path / "result.zarr"
    writer = ResultStore.create(path, info, fill_values=(0.0,))
    for r in range(2):
        for c in range(2):
            writer.write_core(Window(r * 10, r * 10 + 10, c * 10, c * 10 + 10), np.ones((10, 10, 1), np.float32))
    writer.write_status(np.full((2, 2), STATUS_COMPUTED, np.uint8))
    writer.verify(all_done=True)
    # Another process that ignored the lock replaces the store with its own, of the same run.
    shutil.rmtree(path)
    ResultStore.create(path, dataclasses.replace(info, provenance={"run_id": "second"}), fill_values=(0.0,))
    with pytest.raises(StoreError, match=r"replaced by another run's \(run id second, expected first\)"):
        writer.verify(all_done=True)
    shutil.rmtree(path)
    with pytest.raises(StoreError, match="the result store was removed or damaged while in use"):
        writer.verify(all_done=True)


# -- a failed tile, then resume ---------------------------------------------------------------------


def _fail_one_tile(case: Case, client: Any) -> bytes:
    """Overwrite one busy scene tile's chunk with garbage and run: the run must fail incomplete."""
    chunk = Path(case.scene) / "tiles" / "c" / "2" / "2"
    good = chunk.read_bytes()
    chunk.write_bytes(b"\x00garbage, not a zarr chunk" * 4)
    with pytest.raises(IncompleteRunError) as caught:
        case.run(client)
    report = caught.value.report
    assert report.failed >= 1 and report.computed + report.empty + report.failed == report.tiles_total
    store = ResultStore.open(case.result, mode="r")
    assert not store.complete
    assert store.status()[2, 2] == STATUS_NOT_DONE  # recorded done only once written
    with pytest.raises(StoreError, match="incomplete"):
        store.read()
    chunk.write_bytes(good)
    return good


class _Remember(SchedulerPlugin):
    """Keeps every finished or failed run task in the scheduler, under a client of its own.

    A long-lived scheduler may still know a finished run's tasks when the next run comes
    (another client, a dashboard, a release not yet processed): a rerun that reused the
    first run's task keys would then be handed that run's answers.
    """

    name = "tilepipe-test-remember"

    def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish in ("memory", "erred") and str(key).startswith("tilepipe-run-"):
            self.scheduler.client_desires_keys(keys=[key], client=self.name)


def _forget(dask_scheduler: Any) -> None:
    state = dask_scheduler.clients.get(_Remember.name)
    if state is not None:
        dask_scheduler.client_releases_keys([ts.key for ts in state.wants_what], _Remember.name)


@pytest.fixture
def remembering_client(dask_client: Any) -> Any:
    """The shared client, its scheduler keeping every run task while the test runs."""
    dask_client.register_plugin(_Remember())
    try:
        yield dask_client
    finally:
        dask_client.unregister_scheduler_plugin(_Remember.name)
        dask_client.run_on_scheduler(_forget)


def test_failed_tile_then_resume_on_the_same_client_is_exact(
    tmp_path: Path, remembering_client: Any, assert_exact: Checker
) -> None:
    dask_client = remembering_client
    case = _two_band(tmp_path)
    _fail_one_tile(case, dask_client)
    report = case.run(dask_client)
    assert not report.up_to_date and report.failed == 0 and report.computed >= 1
    store = ResultStore.open(case.result, mode="r")
    assert store.complete and store.status()[2, 2] == STATUS_COMPUTED
    assert_exact(store.read(), case.reference(), "resumed on the same client after a failed tile")


def test_failed_tile_then_resume_on_a_fresh_cluster_is_exact(
    tmp_path: Path, dask_client: Any, assert_exact: Checker
) -> None:
    from distributed import Client, LocalCluster

    case = _two_band(tmp_path)
    _fail_one_tile(case, dask_client)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0", silence_logs=logging.ERROR) as cluster, Client(cluster) as fresh:
        report = case.run(fresh)
    assert not report.up_to_date and report.failed == 0 and report.computed >= 1
    assert_exact(ResultStore.open(case.result, mode="r").read(), case.reference(), "resumed on a fresh cluster")


# -- outputs never overlap inputs -------------------------------------------------------------------


def _digest(path: Path) -> str:
    """sha256 over every file's name and bytes under ``path`` (or of the file itself)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        h.update(str(p.relative_to(path.parent)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("overwrite", [False, True])
def test_run_refuses_a_result_that_is_holds_or_lies_in_an_input(
    overwrite: bool, tmp_path: Path, dask_client: Any
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    case = _two_band(project)
    scene, model = Path(case.scene), Path(case.model_path)
    before = (_digest(scene), _digest(model))
    cases = [
        (scene, f"{scene}: the output is the input {scene}; choose another path"),
        (scene / "result.zarr", f"{scene / 'result.zarr'}: the output is inside the input {scene}"),
        (project, f"{project}: the output contains the input {scene}"),
        (model, f"{model}: the output is the input {model}"),
    ]
    for result, message in cases:
        with pytest.raises(InputError) as caught:
            tilepipe.run(str(scene), str(model), str(result), client=dask_client, overwrite=overwrite)
        assert str(caught.value).startswith(message), str(caught.value)
    assert (_digest(scene), _digest(model)) == before


def _workflow(folder: Path, text: str) -> Path:
    path = folder / "wf.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_workflow_refuses_outputs_that_are_hold_or_lie_in_inputs_even_with_overwrite(tmp_path: Path) -> None:
    raster = tmp_path / "in.tif"
    write_geotiff(raster, np.arange(2 * 20 * 20, dtype=np.float32).reshape(2, 20, 20), crs="EPSG:32633",
                  transform=Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0))
    model = sequential(2, conv(1, 3, padding="same"), seed=34)
    model.save(tmp_path / "m.keras")
    scene = tmp_path / "scene.zarr"
    tilepipe.ingest(str(raster), str(scene), tile_size=8, halo=1)
    before = (_digest(raster), _digest(tmp_path / "m.keras"), _digest(scene))
    cases = {
        "output.geotiff is input.path": (
            "input: {path: in.tif}\nmodel: {path: m.keras}\ntiling: {tile_size: 8}\n"
            "output: {zarr: out.zarr, geotiff: in.tif}\n",
            f"{raster}: the output is the input {raster}; choose another path"),
        "output.zarr is the input scene store": (
            "input: {path: scene.zarr}\nmodel: {path: m.keras}\ntiling: {tile_size: 8}\n"
            "output: {zarr: scene.zarr, scene: other.scene.zarr}\n",
            f"{scene}: the output is the input {scene}"),
        "output.zarr contains input.path": (
            "input: {path: sub/in.tif}\nmodel: {path: m.keras}\ntiling: {tile_size: 8}\n"
            "output: {zarr: sub}\n",
            f"{tmp_path / 'sub'}: the output contains the input {tmp_path / 'sub' / 'in.tif'}"),
        "output.scene inside the model file": (
            "input: {path: in.tif}\nmodel: {path: m.keras}\ntiling: {tile_size: 8}\n"
            "output: {zarr: out.zarr, scene: m.keras/scene.zarr}\n",
            f"{tmp_path / 'm.keras' / 'scene.zarr'}: the output is inside the input {tmp_path / 'm.keras'}"),
        "output.quicklook inside output.zarr": (
            "input: {path: in.tif}\nmodel: {path: m.keras}\ntiling: {tile_size: 8}\n"
            "output: {zarr: out.zarr, quicklook: out.zarr/look.png}\n",
            f"{tmp_path / 'out.zarr'}: the output contains the other output {tmp_path / 'out.zarr' / 'look.png'}"),
    }
    (tmp_path / "sub").mkdir()
    shutil.copy(raster, tmp_path / "sub" / "in.tif")
    sub_before = _digest(tmp_path / "sub")
    for what, (text, message) in cases.items():
        proc = run_tilepipe("run", str(_workflow(tmp_path, text)), "--overwrite", cwd=tmp_path)
        assert_one_clear_line(proc, message)
        assert "cluster:" not in proc.stderr, what  # refused before a cluster started
    assert (_digest(raster), _digest(tmp_path / "m.keras"), _digest(scene)) == before
    assert _digest(tmp_path / "sub") == sub_before
    assert not (tmp_path / "out.zarr").exists()
