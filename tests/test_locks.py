"""One writer per store: the lock beside a store, with real processes (no mocks).

The lock module alone first (who holds it, stale locks of killed processes, pid reuse,
other hosts, a race of recoverers), then two real runs on one output, checked against
the whole-scene dense model.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tilepipe
from tilepipe.errors import StoreError
from tilepipe.store import ResultStore
from tilepipe.store.lock import lock_path, store_lock

from helpers import Checker, conv, coo, reference, sequential

#: What the message of a refused writer looks like, up to the pid, host and time.
REFUSED = r"locked by pid (\d+) on host (\S+) since (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) \(another tilepipe run\?\)"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def _python(code: str, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    """Start ``python -c code args...`` with pipes for its output."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def _wait_for(predicate: Any, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


#: Takes the lock of argv[1], says so, then holds it until killed.
HOLDER = """
    import sys, time
    from tilepipe.store.lock import store_lock
    with store_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(600)
"""


def _holder(store: Path) -> subprocess.Popen[str]:
    proc = _python(HOLDER, str(store))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "held", (line, proc.stderr.read() if proc.stderr else "")
    return proc


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


# -- the lock alone ---------------------------------------------------------------------------------


def test_lock_lives_beside_the_store_and_outlives_its_removal(tmp_path: Path) -> None:
    store = tmp_path / "result.zarr"
    assert lock_path(store) == str(tmp_path / ".result.zarr.lock")
    assert lock_path(f"{store}/") == str(tmp_path / ".result.zarr.lock")
    with store_lock(store) as held:
        assert held == str(tmp_path / ".result.zarr.lock")
        record = json.loads(Path(held).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        store.mkdir()
        (store / "zarr.json").write_text("{}")
        import shutil

        shutil.rmtree(store)  # what --overwrite does to the store
        assert Path(held).is_file()
    assert not Path(held).exists()  # released
    with store_lock(store):  # and free again
        pass


def test_second_writer_is_refused_naming_who_and_since(tmp_path: Path) -> None:
    store = tmp_path / "result.zarr"
    holder = _holder(store)
    try:
        with pytest.raises(StoreError, match=REFUSED) as caught, store_lock(store):
            pass
        message = str(caught.value)
        assert message.startswith(f"{store}: locked by pid {holder.pid} on host {socket.gethostname()} since ")
        assert message.endswith(f"wait for it or remove {tmp_path / '.result.zarr.lock'} if that process is gone")
        assert Path(lock_path(store) or "").is_file()  # the refused writer removed nothing
    finally:
        _kill(holder)


def test_second_writer_of_an_existing_store_is_refused(tmp_path: Path) -> None:
    # The store is there before either writer starts (a resume, a rerun, an --overwrite): the lock
    # must be taken all the same, by the holder and by the second writer.
    store = tmp_path / "result.zarr"
    store.mkdir()
    (store / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    holder = _holder(store)
    try:
        assert json.loads(Path(lock_path(store) or "").read_text())["pid"] == holder.pid
        with pytest.raises(StoreError, match=REFUSED) as caught, store_lock(store):
            pass
        assert f"locked by pid {holder.pid} " in str(caught.value)
    finally:
        _kill(holder)


def test_lock_of_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    store = tmp_path / "result.zarr"
    holder = _holder(store)
    _kill(holder)  # SIGKILL: no clean-up ran, the lock file stays
    lock = Path(lock_path(store) or "")
    assert json.loads(lock.read_text())["pid"] == holder.pid
    with store_lock(store):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_a_zombie_holder_is_gone(tmp_path: Path) -> None:
    store = tmp_path / "result.zarr"
    holder = _holder(store)
    holder.send_signal(signal.SIGKILL)
    _wait_for(lambda: _is_zombie(holder.pid), what="the killed holder to become a zombie")
    try:
        with store_lock(store):  # killed but not reaped: dead all the same
            pass
    finally:
        holder.wait(timeout=30)


def _is_zombie(pid: int) -> bool:
    import psutil

    return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)


def _write_lock(store: Path, **fields: Any) -> Path:
    import psutil

    record = {
        "pid": os.getpid(), "host": socket.gethostname(), "since": "2026-01-01T00:00:00Z",
        "started": psutil.Process().create_time(), "pid_namespace": os.readlink("/proc/self/ns/pid"),
        "token": "t", **fields,
    }
    lock = Path(lock_path(store) or "")
    lock.write_text(json.dumps(record))
    return lock


def test_pid_reuse_makes_a_lock_stale_but_a_live_holder_or_another_host_does_not(tmp_path: Path) -> None:
    store = tmp_path / "result.zarr"
    # A live pid whose process started at another time than the lock records: the pid was reused.
    _write_lock(store, pid=os.getppid(), started=1.0)
    with store_lock(store):
        pass
    # The very process the lock records, alive: refused.
    _write_lock(store)
    with pytest.raises(StoreError, match=rf"locked by pid {os.getpid()} "), store_lock(store):
        pass
    # Another host: its pid means nothing here, so never taken over, even where no such pid runs here.
    _write_lock(store, host="elsewhere.example", pid=2**22 + 17)
    with pytest.raises(StoreError, match=r"on host elsewhere\.example since"), store_lock(store):
        pass


def test_unreadable_lock_file_is_held_while_fresh_and_stale_when_old(tmp_path: Path) -> None:
    store = tmp_path / "result.zarr"
    lock = Path(lock_path(store) or "")
    lock.write_text("")  # a writer between creating the file and filling it in
    with pytest.raises(StoreError, match="cannot be read"), store_lock(store):
        pass
    old = time.time() - 3600
    os.utime(lock, (old, old))  # ... or one that died there an hour ago
    with store_lock(store):
        pass
    assert not lock.exists()


def test_remote_store_is_not_locked() -> None:
    assert lock_path("memory://bucket/result.zarr") is None
    with store_lock("memory://bucket/result.zarr") as held:
        assert held is None


#: Waits for argv[2] to appear, then takes the lock of argv[1]; holds it until argv[3] appears.
RACER = """
    import os, sys, time
    from tilepipe.errors import StoreError
    from tilepipe.store.lock import store_lock
    store, go, release, ready = sys.argv[1:5]
    open(ready, "w").close()
    while not os.path.exists(go):
        pass  # spin: the racers must start within microseconds of each other
    try:
        with store_lock(store):
            print("won", flush=True)
            while not os.path.exists(release):
                time.sleep(0.01)
    except StoreError as exc:
        print("refused", exc, flush=True)
"""


@pytest.mark.parametrize("round_", range(5))
def test_racing_recoverers_of_one_stale_lock_have_one_winner(round_: int, tmp_path: Path) -> None:
    store = tmp_path / "result.zarr"
    _kill(_holder(store))  # a stale lock
    go, release = tmp_path / "go", tmp_path / "release"
    racers = [
        _python(RACER, str(store), str(go), str(release), str(tmp_path / f"ready{i}")) for i in range(4)
    ]
    try:
        _wait_for(lambda: all((tmp_path / f"ready{i}").exists() for i in range(4)), what="the racers")
        go.touch()
        # The losers end at once; the winner holds the lock until released. Two winners would
        # both hold it, so only two racers would end: wait a while, then release whoever holds it.
        deadline = time.monotonic() + 60
        while sum(p.poll() is not None for p in racers) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        release.touch()
        outputs = [p.communicate(timeout=60)[0] for p in racers]
    winners = [p.pid for p, out in zip(racers, outputs, strict=True) if out.startswith("won")]
    assert len(winners) == 1, outputs
    for out in outputs:
        if out.startswith("refused"):
            assert f"locked by pid {winners[0]} " in out, out
    assert not Path(lock_path(store) or "").exists()


def test_a_recoverer_between_judging_and_replacing_a_stale_lock_is_never_overtaken(tmp_path: Path) -> None:
    # Real recoverers race within microseconds, too fast to show a missing guard reliably; here
    # one recoverer (this process) is held, with the guard, between judging the lock stale and
    # replacing it. The others must wait for it, then find its lock live: none may take over.
    from tilepipe.location import Location
    from tilepipe.store import lock as lock_module

    store = tmp_path / "result.zarr"
    _kill(_holder(store))
    lock = Path(lock_path(store) or "")
    stale = lock.read_text()
    go, release = tmp_path / "go", tmp_path / "release"
    racers = [
        _python(RACER, str(store), str(go), str(release), str(tmp_path / f"ready{i}")) for i in range(3)
    ]
    try:
        _wait_for(lambda: all((tmp_path / f"ready{i}").exists() for i in range(3)), what="the racers")
        with lock_module._recovery_guard(Location.of(store), f"{lock}.recover"):
            go.touch()
            time.sleep(1.0)  # the racers judge the lock stale meanwhile, and wait for the guard
            assert lock.read_text() == stale, "a racer replaced the lock while another recovered it"
            assert all(p.poll() is None for p in racers)
            lock.unlink()
            assert lock_module._create(Location.of(store), str(lock), lock_module.LockHolder.me())
        # Refused racers end; one that took over our live lock would hold it until released.
        _wait_for(lambda: all(p.poll() is not None for p in racers), timeout=30, what="every racer to be refused")
        outputs = [p.communicate(timeout=60)[0] for p in racers]
    finally:
        release.touch()
        for p in racers:
            if p.poll() is None:
                _kill(p)
    assert all(out.startswith(f"refused {store}: locked by pid {os.getpid()} ") for out in outputs), outputs
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    lock.unlink()


# -- two runs on one output -------------------------------------------------------------------------

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


@pytest.fixture(scope="module")
def slow_scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, np.ndarray, Any]:
    """A dense 160 x 160 scene in 400 tiles of 8 px (one model call each with batch_size=1), its model."""
    folder = tmp_path_factory.mktemp("slow")
    model = sequential(1, conv(4, 3, padding="same", activation="relu"), conv(2, 3, padding="same"), seed=21)
    dense = np.random.default_rng(21).normal(size=(160, 160, 1)).astype(np.float32)
    model_path = str(folder / "model.keras")
    model.save(model_path)
    scene = str(folder / "scene.zarr")
    tilepipe.ingest(coo(dense), scene, tile_size=8, model=model)
    return scene, model_path, dense, model


def _chunks_written(result: Path) -> bool:
    data = result / "band_1" / "c"
    return data.is_dir() and any(p.is_file() for p in data.rglob("*"))


@pytest.mark.cluster
def test_second_run_on_one_output_is_refused_even_with_overwrite(
    slow_scene: tuple[str, str, np.ndarray, Any], tmp_path: Path, dask_client: Any, assert_exact: Checker
) -> None:
    scene, model_path, dense, model = slow_scene
    result = tmp_path / "result.zarr"
    first = _python(RUN, scene, model_path, str(result), dask_client.scheduler.address)
    try:
        _wait_for(lambda: Path(lock_path(result) or "").exists() or first.poll() is not None,
                  what="the first run's lock")
        for overwrite in (False, True):
            with pytest.raises(StoreError, match=REFUSED) as caught:
                tilepipe.run(scene, model_path, str(result), client=dask_client, overwrite=overwrite)
            assert f"locked by pid {first.pid} " in str(caught.value)
            assert str(caught.value).startswith(f"{result}: ")
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            _kill(first)
    assert first.returncode == 0, err
    assert "failed 0" in out
    store = ResultStore.open(result, mode="r")
    assert store.complete
    assert_exact(store.read(), reference(model, dense), "the first of two runs on one output")
    assert not Path(lock_path(result) or "").exists()


@pytest.mark.cluster
def test_writers_of_existing_stores_are_refused_while_a_live_process_holds_the_lock(
    tmp_path: Path, dask_client: Any, assert_exact: Checker
) -> None:
    # Both stores exist and are complete before the holder starts: a run finding its result up to
    # date, an ingest finding its scene, or either replacing it, must still take the lock first.
    model = sequential(1, conv(2, 3, padding="same", activation="tanh"), seed=8)
    model_path = tmp_path / "model.keras"
    model.save(model_path)
    dense = np.random.default_rng(8).normal(size=(24, 20, 1)).astype(np.float32)
    scene = tmp_path / "scene.zarr"
    result = tmp_path / "result.zarr"
    tilepipe.ingest(coo(dense), scene, tile_size=8, model=model)
    tilepipe.run(str(scene), str(model_path), str(result), client=dask_client)
    writers = {
        result: lambda overwrite: tilepipe.run(str(scene), str(model_path), str(result), client=dask_client,
                                               overwrite=overwrite),
        scene: lambda overwrite: tilepipe.ingest(coo(dense), scene, tile_size=8, model=model, overwrite=overwrite),
    }
    for store, write in writers.items():
        holder = _holder(store)
        try:
            for overwrite in (False, True):
                with pytest.raises(StoreError, match=rf"^{store}: locked by pid {holder.pid} on host "):
                    write(overwrite)
        finally:
            _kill(holder)
    # Nothing was replaced or rewritten under the holder: both stores are still whole and exact.
    assert_exact(ResultStore.open(result, mode="r").read(), reference(model, dense), "a refused writer's result")
    assert tilepipe.open_result(result).info.complete
    assert tilepipe.info(scene)["complete"] and tilepipe.info(scene)["nonzero_entries"] == dense.size
    # The holders are dead now: their stale locks are taken over and the complete result is found up to date.
    assert tilepipe.run(str(scene), str(model_path), str(result), client=dask_client).up_to_date
    assert not Path(lock_path(result) or "").exists()


@pytest.mark.cluster
def test_lock_of_a_killed_run_is_recovered_and_the_rerun_is_exact(
    slow_scene: tuple[str, str, np.ndarray, Any], tmp_path: Path, dask_client: Any, assert_exact: Checker
) -> None:
    scene, model_path, dense, model = slow_scene
    result = tmp_path / "result.zarr"
    first = _python(RUN, scene, model_path, str(result), dask_client.scheduler.address)
    try:
        _wait_for(lambda: _chunks_written(result) or first.poll() is not None, what="the first run's tiles")
    finally:
        _kill(first)
    assert first.returncode == -signal.SIGKILL, "the first run ended before it could be killed: make it slower"
    assert json.loads(Path(lock_path(result) or "").read_text())["pid"] == first.pid  # left behind
    report = tilepipe.run(scene, model_path, str(result), client=dask_client)
    assert not report.up_to_date and report.failed == 0
    store = ResultStore.open(result, mode="r")
    assert store.complete
    assert_exact(store.read(), reference(model, dense), "rerun after a killed run's stale lock")
    assert not Path(lock_path(result) or "").exists()
