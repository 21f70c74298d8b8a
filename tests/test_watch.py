"""``tilepipe watch``: a real inbox in a temporary folder, a real SQLite ledger, real processes.

Most tests run the watcher (``python -m tilepipe watch``) against one module-wide Dask
cluster started with the real ``dask`` CLI on 127.0.0.1, so a pass costs a process start,
not a cluster start. Every result is compared with the whole-scene dense model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from helpers import (
    assert_one_clear_line,
    conv,
    dask_cli_cluster,
    patches,
    reference,
    run_tilepipe,
    sequential,
    write_geotiff,
)

CRS, TRANSFORM = "EPSG:32618", (10.0, 0.0, 500000.0, 0.0, -10.0, 4600000.0)
DONE_LINE = re.compile(r"^(.+?)@([0-9a-f]{12}): done in .* \(tiles (\d+): computed (\d+), empty (\d+), "
                       r"already done (\d+)\)$", re.MULTILINE)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A scheduler and two single-threaded workers on 127.0.0.1, started with the ``dask`` CLI."""
    with dask_cli_cluster(tmp_path_factory.mktemp("watch-cluster-logs"), (("w0", []), ("w1", []))) as address:
        yield address


class Model(NamedTuple):
    keras: Any
    path: str


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    """A tiny two-layer model (halo 2) and its file."""
    m = sequential(1, conv(4, 3, padding="same", activation="relu"), conv(1, 3, padding="same"), seed=3)
    path = tmp_path_factory.mktemp("watch-model") / "model.keras"
    m.save(path)
    return Model(m, str(path))


class Site:
    """A temporary inbox, a workflow and its outputs: what one test watches."""

    def __init__(self, root: Path, model: Any, tile: int = 32) -> None:
        self.root, self.model = root, model
        self.inbox = root / "inbox"
        self.inbox.mkdir()
        self.out = root / "out"
        self.workflow = root / "watch.yaml"
        # The contract's own spelling: {scene} inside a YAML flow mapping.
        self.workflow.write_text(
            f"model: {{path: {model.path}}}\ntiling: {{tile_size: {tile}}}\n"
            "output: {zarr: out/{scene}.zarr, geotiff: out/{scene}.tif}\n", encoding="utf-8")
        self.dense: dict[str, np.ndarray] = {}

    def drop(self, name: str, seed: int, shape: tuple[int, int] = (96, 80)) -> Path:
        """Write a scene (values in two patches, nodata 0 elsewhere) under an ignored name, then rename it in."""
        rows, cols = shape
        dense = patches((rows, cols, 1), [(5, rows // 2, 5, cols // 2), (rows // 2, rows - 3, cols // 2, cols - 1)],
                        seed=seed)
        path = self.inbox / name
        partial = self.inbox / f".{name}.part"  # written under an ignored name, then renamed in
        write_geotiff(partial, dense.transpose(2, 0, 1), crs=CRS, transform=TRANSFORM, nodata=0)
        partial.rename(path)
        self.dense[Path(name).stem] = dense
        return path

    def watch(self, *args: str, timeout: int = 240) -> subprocess.CompletedProcess[str]:
        return run_tilepipe("watch", str(self.inbox), "--workflow", str(self.workflow), *args, timeout=timeout)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
        return subprocess.Popen([sys.executable, "-m", "tilepipe", "watch", str(self.inbox), "--workflow",
                                 str(self.workflow), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)

    def status(self, *args: str) -> list[dict[str, Any]]:
        proc = self.watch("--status", "--json", *args)
        assert proc.returncode == 0, proc.stderr
        return list(json.loads(proc.stdout)["scenes"])

    def check(self, stem: str, assert_exact: Any) -> str:
        """Assert the published result and GeoTIFF equal the whole-scene model; the result's run id."""
        import rasterio

        from tilepipe.store.result import ResultStore

        ref = reference(self.model.keras, self.dense[stem])
        store = ResultStore.open(self.out / f"{stem}.zarr")
        assert store.complete
        assert_exact(store.read(), ref, f"{stem}.zarr")
        with rasterio.open(self.out / f"{stem}.tif") as src:
            assert_exact(src.read(), ref, f"{stem}.tif")
            assert src.crs.to_string() == CRS
        return str(store.info.provenance["run_id"])


def done_scenes(*outputs: str) -> list[str]:
    """The stems of the ``done`` lines in the outputs, one entry per line."""
    return [m.group(1) for text in outputs for m in DONE_LINE.finditer(text)]


def sched(cluster: str) -> tuple[str, ...]:
    # Settle 0: scenes are renamed in whole (see Site.drop); a pass may start within a fraction of a
    # second of a drop, so any settle time would make "taken on this pass" a race. The settle tests
    # give their own.
    return ("--scheduler", cluster, "--settle", "0")


# --------------------------------------------------------------------------- exactly once


def test_each_scene_processed_once_across_passes(tmp_path: Path, model: Any, cluster: str, assert_exact: Any) -> None:
    site = Site(tmp_path, model)
    for n, name in enumerate(("a.tif", "b.tif", "c.tiff")):
        site.drop(name, seed=n)
    (site.inbox / "notes.txt").write_text("not a raster")
    (site.inbox / "d.tif.part").write_bytes(b"half a file")
    (site.inbox / ".hidden.tif").write_bytes(b"a dot-file")

    first = site.watch("--once", *sched(cluster))
    assert first.returncode == 0, first.stderr
    assert sorted(done_scenes(first.stdout)) == ["a", "b", "c"]
    run_ids = {stem: site.check(stem, assert_exact) for stem in "abc"}

    again = site.watch("--once", *sched(cluster))  # a restart finds everything done: nothing runs
    assert again.returncode == 0, again.stderr
    assert done_scenes(again.stdout) == []
    site.drop("e.tif", seed=7)
    third = site.watch("--once", *sched(cluster))
    assert done_scenes(third.stdout) == ["e"], (third.stdout, third.stderr[-3000:])
    assert {stem: site.check(stem, assert_exact) for stem in "abc"} == run_ids  # never rewritten
    site.check("e", assert_exact)

    rows = site.status()
    assert sorted(r["name"] for r in rows) == ["a.tif", "b.tif", "c.tiff", "e.tif"]
    assert all(r["status"] == "done" and r["attempts"] == 1 and r["error"] is None for r in rows)
    assert all(r["result"].endswith(f"{Path(r['name']).stem}.zarr") and r["wall"] > 0 for r in rows)
    assert all(len(r["identity"]) == 64 and r["report"]["tiles_total"] == 9 for r in rows)  # sha256 of content

    # The same name, new content: a new scene, whose result replaces the old one once complete.
    (site.inbox / "a.tif").unlink()
    site.drop("a.tif", seed=11)
    fourth = site.watch("--once", *sched(cluster))
    assert done_scenes(fourth.stdout) == ["a"], fourth.stdout
    assert site.check("a", assert_exact) != run_ids["a"]
    versions = [r for r in site.status() if r["name"] == "a.tif"]
    assert len(versions) == 2 and {r["status"] for r in versions} == {"done"}
    assert len({r["identity"] for r in versions}) == 2
    table = site.watch("--status")
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split()[:4] == ["SCENE", "IDENTITY", "STATUS", "ATTEMPTS"]
    assert len(table.stdout.splitlines()) == 6


def test_growing_file_is_left_alone_until_it_settles(tmp_path: Path, model: Any, cluster: str,
                                                     assert_exact: Any) -> None:
    site = Site(tmp_path, model)
    site.drop("steady.tif", seed=1)
    time.sleep(2.1)  # settled before the pass
    whole = tmp_path / "grown.tif"
    dense = patches((96, 80, 1), [(4, 60, 4, 60)], seed=5)
    write_geotiff(whole, dense.transpose(2, 0, 1), crs=CRS, transform=TRANSFORM, nodata=0)
    target = site.inbox / "grown.tif"
    # A slow writer: the file grows every 0.3 s for about 12 s, under its final name.
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "data = open(sys.argv[1], 'rb').read(); n = 40\n"
        "with open(sys.argv[2], 'wb') as fh:\n"
        "    for i in range(n):\n"
        "        fh.write(data[i * len(data) // n:(i + 1) * len(data) // n]); fh.flush(); time.sleep(0.3)\n"
    ), str(whole), str(target)])
    try:
        while not target.exists():
            time.sleep(0.05)
        during = site.watch("--once", "--scheduler", cluster, "--settle", "2")
        still_writing = writer.poll() is None
    finally:
        writer.wait(timeout=60)
    assert during.returncode == 0, during.stderr
    assert done_scenes(during.stdout) == ["steady"]
    assert [r["name"] for r in site.status()] == ["steady.tif"]  # not even queued while it grew
    assert still_writing, "the writer finished before the pass: the test proves nothing"

    time.sleep(2.2)
    after = site.watch("--once", "--scheduler", cluster, "--settle", "2")
    assert after.returncode == 0, after.stderr
    assert done_scenes(after.stdout) == ["grown"]
    site.dense["grown"] = dense
    site.check("grown", assert_exact)
    assert {r["name"]: r["attempts"] for r in site.status()} == {"steady.tif": 1, "grown.tif": 1}


def test_killed_watcher_resumes_the_scene(tmp_path: Path, model: Any, cluster: str, assert_exact: Any) -> None:
    from tilepipe.store.result import ResultStore

    site = Site(tmp_path, model, tile=16)
    site.drop("big.tif", seed=2, shape=(512, 512))  # 1024 tiles: the run records them 256 at a time
    # Ledger claims: a dead watcher's claim is free at once (a scheduler lock would wait for its lease timeout).
    watcher = site.popen("--once", *sched(cluster), "--claims", "ledger")
    recorded = 0
    try:
        deadline = time.monotonic() + 180
        while recorded < 256 and time.monotonic() < deadline and watcher.poll() is None:
            for store in site.out.glob(".tilepipe-watch/work/*/zarr/big.zarr"):
                try:
                    recorded = int(np.count_nonzero(ResultStore.open(store).status()))
                except Exception:  # noqa: BLE001 - being created right now
                    recorded = 0
            time.sleep(0.05)
        assert watcher.poll() is None, "the scene finished before it could be killed"
        watcher.kill()  # SIGKILL: no clean-up, no ledger update, locks left behind
    finally:
        watcher.wait(timeout=30)
    assert recorded >= 256
    assert [r["status"] for r in site.status()] == ["running"]
    assert not (site.out / "big.zarr").exists()  # nothing published half-done

    proc = site.watch("--once", *sched(cluster), "--claims", "ledger")
    assert proc.returncode == 0, proc.stderr
    (done,) = DONE_LINE.finditer(proc.stdout)
    assert int(done.group(6)) >= 256, proc.stdout  # resumed, not started over
    site.check("big", assert_exact)
    (row,) = site.status()
    assert row["status"] == "done" and row["attempts"] == 2
    assert row["report"]["already_done"] >= 256


# --------------------------------------------------------------------------- two watchers


def test_two_watchers_on_one_ledger_never_duplicate(tmp_path: Path, model: Any, cluster: str,
                                                    assert_exact: Any) -> None:
    site = Site(tmp_path, model)
    stems = [f"s{n}" for n in range(6)]
    for n, stem in enumerate(stems):
        site.drop(f"{stem}.tif", seed=n)
    # --claims ledger: only the SQLite transactions keep them apart (no scheduler lock).
    watchers = [site.popen("--once", *sched(cluster), "--claims", "ledger") for _ in range(2)]
    outs = [w.communicate(timeout=240) for w in watchers]
    assert [w.returncode for w in watchers] == [0, 0], [err[-2000:] for _, err in outs]
    done = done_scenes(*(out for out, _ in outs))
    assert sorted(done) == stems, done  # every scene once, none twice
    assert all(done_scenes(out) for out, _ in outs), "one watcher took everything: no contention tested"
    for stem in stems:
        site.check(stem, assert_exact)
    assert {(r["status"], r["attempts"]) for r in site.status()} == {("done", 1)}


def test_two_watchers_sharing_a_scheduler_never_duplicate(tmp_path: Path, model: Any, cluster: str,
                                                          assert_exact: Any) -> None:
    site = Site(tmp_path, model)
    stems = [f"m{n}" for n in range(6)]
    for n, stem in enumerate(stems):
        site.drop(f"{stem}.tif", seed=n + 20)
    # Two "machines": one ledger each (SQLite is not shared across machines), one scheduler.
    ledgers = [str(tmp_path / f"host{n}" / "ledger.sqlite") for n in range(2)]
    watchers = [site.popen("--once", *sched(cluster), "--ledger", ledger) for ledger in ledgers]
    outs = [w.communicate(timeout=240) for w in watchers]
    assert [w.returncode for w in watchers] == [0, 0], [err[-2000:] for _, err in outs]
    done = done_scenes(*(out for out, _ in outs))
    assert sorted(done) == stems, done
    for stem in stems:
        site.check(stem, assert_exact)
    # Each ledger, on its next pass, learns from the done markers what the other one did.
    for ledger in ledgers:
        proc = site.watch("--once", *sched(cluster), "--ledger", ledger)
        assert proc.returncode == 0 and done_scenes(proc.stdout) == [], proc.stdout
        assert {r["status"] for r in site.status("--ledger", ledger)} == {"done"}


# --------------------------------------------------------------------------- failures


def test_corrupt_scene_retried_then_quarantined(tmp_path: Path, model: Any, cluster: str, assert_exact: Any,
                                                shared_data: Path) -> None:
    site = Site(tmp_path, model)
    shutil.copyfile(shared_data / "corrupt.tif", site.inbox / "corrupt.tif")
    site.drop("good1.tif", seed=1)
    site.drop("good2.tif", seed=2)
    retry = ("--max-attempts", "2", "--backoff", "0")

    first = site.watch("--once", *sched(cluster), *retry)
    assert_one_clear_line(first, "1 of 3 scenes failed", "corrupt@")
    assert sorted(done_scenes(first.stdout)) == ["good1", "good2"]  # the others went on
    assert re.search(r"^corrupt@\w+: failed \(attempt 1 of 2; .*corrupt\.tif", first.stdout, re.MULTILINE)
    site.check("good1", assert_exact)
    site.check("good2", assert_exact)

    second = site.watch("--once", *sched(cluster), *retry)
    assert_one_clear_line(second, "corrupt@")
    assert re.search(r"^corrupt@\w+: quarantined after 2 attempts: .*corrupt\.tif", second.stdout, re.MULTILINE)
    third = site.watch("--once", *sched(cluster), *retry)
    assert third.returncode == 0 and third.stdout == "", third.stdout  # quarantined: left alone

    rows = {r["name"]: r for r in site.status()}
    bad = rows["corrupt.tif"]
    assert (bad["status"], bad["attempts"]) == ("quarantined", 2)
    assert "corrupt.tif" in bad["error"]
    assert not (site.out / "corrupt.zarr").exists()

    dry = site.watch("--retry", "corrupt", "--dry-run")
    assert dry.returncode == 0 and "would put back in the queue" in dry.stdout
    assert {r["name"]: r["status"] for r in site.status()}["corrupt.tif"] == "quarantined"
    put = site.watch("--retry", "corrupt.tif")
    assert put.returncode == 0, put.stderr
    assert {r["name"]: (r["status"], r["attempts"]) for r in site.status()}["corrupt.tif"] == ("queued", 0)
    assert_one_clear_line(site.watch("--retry", "good1"), "has not failed", ".tilepipe-watch.sqlite")
    assert_one_clear_line(site.watch("--retry", "nothing-like-it"), "nothing-like-it", ".tilepipe-watch.sqlite")


def test_bad_arguments_are_one_clear_line(tmp_path: Path, model: Any) -> None:
    site = Site(tmp_path, model)
    assert_one_clear_line(run_tilepipe("watch", str(tmp_path / "absent"), "--workflow", str(site.workflow),
                                       "--once"), "absent", "the inbox does not exist")
    with_input = tmp_path / "with-input.yaml"
    with_input.write_text(site.workflow.read_text() + "input: {path: x.tif}\n")
    assert_one_clear_line(site.watch("--once", "--workflow", str(with_input)), "with-input.yaml", "input")
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(f"model: {{path: {model.path}}}\noutput: {{zarr: out/result.zarr}}\n")
    assert_one_clear_line(site.watch("--once", "--workflow", str(fixed)), "fixed.yaml", "output.zarr", "{scene}")
    inside = tmp_path / "inside.yaml"
    inside.write_text(f"model: {{path: {model.path}}}\noutput: {{zarr: inbox/{{scene}}.zarr}}\n")
    assert_one_clear_line(site.watch("--once", "--workflow", str(inside)), "inside the inbox")


# --------------------------------------------------------------------------- the service


def test_service_runs_new_scenes_warm_and_stops_on_sigterm(tmp_path: Path, model: Any, cluster: str,
                                                           assert_exact: Any) -> None:
    site = Site(tmp_path, model)
    site.drop("first.tif", seed=1)
    log = tmp_path / "notified.txt"
    notify = f"{sys.executable} -c \"import sys; open(sys.argv[1], 'a').write(' '.join(sys.argv[2:]) + '\\n')\" {log}"
    service = site.popen(*sched(cluster), "--interval", "0.5", "--on-done", notify, "--max-concurrent", "2")
    ledger = site.out / ".tilepipe-watch.sqlite"

    def statuses() -> dict[str, str]:
        if not ledger.exists():
            return {}
        with sqlite3.connect(ledger) as conn:
            return dict(conn.execute("SELECT name, status FROM scenes").fetchall())

    def wait_for(names: set[str]) -> None:
        deadline = time.monotonic() + 120
        while {n for n, s in statuses().items() if s == "done"} != names:
            assert service.poll() is None, service.communicate()
            assert time.monotonic() < deadline, statuses()
            time.sleep(0.2)

    try:
        wait_for({"first.tif"})
        site.drop("second.tif", seed=2)  # arrives while the service runs
        site.drop("third.tif", seed=3)
        wait_for({"first.tif", "second.tif", "third.tif"})
        service.send_signal(signal.SIGTERM)
        out, err = service.communicate(timeout=60)
    finally:
        if service.poll() is None:
            service.kill()
    assert service.returncode == 0, err[-2000:]
    assert "SIGTERM: stopping" in out
    assert sorted(done_scenes(out)) == ["first", "second", "third"]
    for stem in ("first", "second", "third"):
        site.check(stem, assert_exact)
    notified = sorted(log.read_text().splitlines())
    stems = ("first", "second", "third")
    assert notified == sorted(f"{site.inbox / f'{s}.tif'} {site.out / f'{s}.zarr'}" for s in stems)


def test_derived_products_are_published_beside_the_result(tmp_path: Path, model: Any, cluster: str,
                                                          assert_exact: Any) -> None:
    """A watched workflow's threshold mask lands at its final path, equal to numpy's on the whole-scene model."""
    import rasterio

    site = Site(tmp_path, model)
    site.workflow.write_text(
        f"model: {{path: {model.path}}}\ntiling: {{tile_size: 32}}\n"
        "output: {zarr: out/{scene}.zarr, threshold: {path: out/{scene}_mask.tif, value: 0.0}}\n", encoding="utf-8")
    site.drop("m.tif", seed=4)
    proc = site.watch("--once", *sched(cluster))
    assert proc.returncode == 0, proc.stderr
    ref = reference(model.keras, site.dense["m"])
    with rasterio.open(site.out / "m_mask.tif") as src:
        np.testing.assert_array_equal(src.read(1), (ref[0] > 0.0).astype(np.uint8))
    assert not list((site.out).glob("**/.tilepipe-watch/work/*/threshold/*"))  # moved, not copied
