"""The one executor, on local threads and on a real local cluster."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tilepipe.errors import InputError
from tilepipe.execute.executor import Task, execute


def square(x: int) -> int:
    return x * x


def flaky(x: int) -> int:
    if x % 3 == 0:
        raise RuntimeError(f"tile {x} broke")
    return x


def user_mistake(x: int) -> int:
    raise InputError(f"bad input {x}")


def slow_write(folder: str, x: int) -> int:
    """Fails at once for x == 0; the others write a file after a while (a task still running at the failure)."""
    if x == 0:
        raise RuntimeError("first task fails")
    time.sleep(1.0)  # far longer than the failing task and its retry take
    Path(folder, f"{x}.done").write_text("x")
    return x


@pytest.mark.parametrize("on_cluster", [False, True])
def test_results_arrive_once_each_with_progress_weights(on_cluster: bool, dask_client: Any) -> None:
    seen: list[tuple[int, int]] = []
    tasks = [Task(square, (i,), weight=i + 1) for i in range(10)]
    outcome = execute(tasks, lambda t, v: seen.append((t.args[0], v)), client=dask_client if on_cluster else None,
                      name="test")
    assert sorted(seen) == [(i, i * i) for i in range(10)]
    assert (outcome.done, outcome.failed, outcome.first_error) == (10, 0, None)


@pytest.mark.parametrize("on_cluster", [False, True])
def test_tolerated_failures_are_counted_and_the_rest_go_on(on_cluster: bool, dask_client: Any) -> None:
    got: list[int] = []
    tasks = [Task(flaky, (i,), weight=2) for i in range(9)]
    outcome = execute(tasks, lambda t, v: got.append(v), client=dask_client if on_cluster else None, name="test",
                      tolerate_failures=True)
    assert sorted(got) == [1, 2, 4, 5, 7, 8]
    assert (outcome.failed, outcome.failed_weight) == (3, 6)
    assert outcome.first_error is not None and "broke" in outcome.first_error


@pytest.mark.parametrize("on_cluster", [False, True])
def test_a_users_mistake_stops_everything(on_cluster: bool, dask_client: Any) -> None:
    with pytest.raises(InputError, match="bad input"):
        execute([Task(user_mistake, (i,)) for i in range(4)], lambda t, v: None,
                client=dask_client if on_cluster else None, name="test", tolerate_failures=True)


@pytest.mark.parametrize("on_cluster", [False, True])
def test_untolerated_failure_waits_for_running_tasks_before_raising(
    on_cluster: bool, dask_client: Any, tmp_path: Path
) -> None:
    # Six tasks on two single-threaded workers: some wait on a worker when the failure comes (a queued
    # task is one that may still run, and must be waited for or dropped too).
    tasks = [Task(slow_write, (str(tmp_path), i), priority=10 if i == 0 else 0) for i in range(6)]
    with pytest.raises(RuntimeError, match="first task fails"):
        execute(tasks, lambda t, v: None, client=dask_client if on_cluster else None, name="test")
    # Whatever was running when the failure came has finished by now: nothing writes after the raise.
    before = sorted(p.name for p in tmp_path.iterdir())
    time.sleep(1.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_keys_are_new_for_every_execution(dask_client: Any) -> None:
    # The same tasks twice on one client: a scheduler that remembered the first answers must not hand them back.
    counter = {"calls": 0}
    lock = threading.Lock()

    def count(_task: Task[int], _value: int) -> None:
        with lock:
            counter["calls"] += 1

    tasks = [Task(square, (i,)) for i in range(3)]
    execute(tasks, count, client=dask_client, name="same")
    keys_before = set(dask_client.who_has())
    execute(tasks, count, client=dask_client, name="same")
    assert counter["calls"] == 6
    assert not {k for k in dask_client.who_has() if str(k).startswith("tilepipe-same")} & keys_before


def test_tile_records_are_flushed_by_time_not_only_every_256_tiles(tmp_path: Path, monkeypatch: Any) -> None:
    """A run killed a few seconds after its last flush loses seconds of work, not up to 256 tiles' records."""
    import numpy as np

    from tilepipe.execute import run as run_module
    from tilepipe.execute.tasks import BatchDone
    from tilepipe.store.result import STATUS_COMPUTED, ResultInfo, ResultStore

    info = ResultInfo(shape=(1, 64, 64), transform=(10.0, 0.0, 0.0, 0.0, -10.0, 0.0), crs_wkt="",
                      tile_size=(16, 16), provenance={"run_id": "flush"})
    store = ResultStore.create(tmp_path / "r.zarr", info, fill_values=[0.0])
    monkeypatch.setattr(run_module._Tally, "FLUSH_SECONDS", 0.2)
    tally = run_module._Tally(store, None)
    tally.add(None, BatchDone(((0, 0),), (), "w", 0.0))  # type: ignore[arg-type]
    time.sleep(0.3)
    tally.add(None, BatchDone(((0, 1),), (), "w", 0.0))  # type: ignore[arg-type]
    on_disk = ResultStore.open(tmp_path / "r.zarr").status()  # what a killed run leaves: no final flush
    expected = np.full((4, 4), store.status_fill, np.uint8)  # tiles never recorded read as the fill (free)
    expected[0, :2] = STATUS_COMPUTED
    np.testing.assert_array_equal(on_disk, expected)
