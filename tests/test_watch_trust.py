"""The watcher's promise under attack: outputs that collide, things in their way, full disks, two file
systems, SIGKILL while publishing, clock skew, a broken workflow, a file that comes back.

Real processes against a real ``dask`` CLI cluster, real tmpfs mounts for the disk faults; every
published result is compared with the whole-scene dense model.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# The module-wide cluster and model of test_watch, set up again for this module.
from test_watch import Model, Site, cluster, done_scenes, model, sched  # noqa: F401

from helpers import assert_one_clear_line, run_tilepipe, tmpfs


def listing(folder: Path) -> list[str]:
    """What a user sees in an output folder (the watcher's own dot-entries left out)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".tilepipe-watch")) \
        if folder.exists() else []


def marker_states(site: Site) -> dict[str, Any]:
    return {m["name"]: (m["state"], m["identity"]) for m in
            (json.loads(p.read_text()) for p in (site.out / ".tilepipe-watch" / "done").glob("*.json"))}


# --------------------------------------------------------------------------- names and collisions


def test_outputs_that_collide_are_refused_and_names_never_share_a_marker(tmp_path: Path, model: Model,
                                                                          cluster: str, assert_exact: Any) -> None:
    site = Site(tmp_path, model)
    site.drop("a.tif", seed=1)
    dense_a = site.dense["a"]
    site.drop("a.tiff", seed=2)  # the same {scene}: out/a.zarr
    site.drop("X.tif", seed=3)
    site.drop("X.scene.tif", seed=4)  # its result out/X.scene.zarr is X.tif's scene store
    same = [site.drop(name, seed=5) for name in ("東京.tif", "大阪.tif", "a b.tif", "a_b.tif")]
    assert len({p.read_bytes() for p in same}) == 1  # the same bytes under four names
    first = site.watch("--once", *sched(cluster), "--max-concurrent", "2")
    assert_one_clear_line(first, "4 refused")
    assert sorted(done_scenes(first.stdout)) == sorted(["東京", "大阪", "a b", "a_b"]), first.stdout
    for name, other in (("a.tif", "a.tiff"), ("a.tiff", "a.tif"), ("X.tif", "X.scene.tif"), ("X.scene.tif", "X.tif")):
        assert any(line.startswith(f"{name}: refused") and line.endswith(f"output of {other}")
                   for line in first.stdout.splitlines()), (name, other, first.stdout)
    assert listing(site.out) == sorted(f"{s}{ext}" for s in ("東京", "大阪", "a b", "a_b")
                                       for ext in (".scene.zarr", ".tif", ".zarr"))
    for stem in ("東京", "大阪", "a b", "a_b"):
        site.check(stem, assert_exact)
    # Not consumed: the refused files are queued without an attempt, and listed as waiting, with why.
    proc = site.watch("--status", "--json")
    status = json.loads(proc.stdout)
    rows = {r["name"]: (r["status"], r["attempts"]) for r in status["scenes"]}
    assert rows == {**{n: ("done", 1) for n in ("東京.tif", "大阪.tif", "a b.tif", "a_b.tif")},
                    **{n: ("queued", 0) for n in ("X.scene.tif", "X.tif", "a.tif", "a.tiff")}}
    assert sorted(w["name"] for w in status["waiting"]) == ["X.scene.tif", "X.tif", "a.tif", "a.tiff"]
    assert all(w["why"].startswith("refused") for w in status["waiting"])
    assert len(marker_states(site)) == 4  # one marker per name, the same bytes notwithstanding

    (site.inbox / "a.tiff").unlink()  # the user resolves one clash
    site.dense["a"] = dense_a
    (site.inbox / "X.scene.tif").rename(site.inbox / "Y.tif")
    site.dense["Y"] = site.dense.pop("X.scene")
    second = site.watch("--once", *sched(cluster))
    assert second.returncode == 0, second.stderr
    assert sorted(done_scenes(second.stdout)) == ["X", "Y", "a"]
    for stem in ("a", "X", "Y"):
        site.check(stem, assert_exact)


def test_outputs_are_never_inside_the_inbox(tmp_path: Path, model: Model) -> None:
    site = Site(tmp_path, model)
    site.workflow.write_text(
        f"model: {{path: {model.path}}}\n"
        "output: {zarr: out/{scene}.zarr, threshold: {path: inbox/{scene}_cls.tif, value: 0.5}}\n",
        encoding="utf-8")
    assert_one_clear_line(site.watch("--once"), "inbox", "inside the inbox")


# --------------------------------------------------------------------------- what is in the way


def test_a_users_file_or_folder_at_an_output_path_is_kept_byte_for_byte(tmp_path: Path, model: Model,
                                                                         cluster: str, assert_exact: Any) -> None:
    site = Site(tmp_path, model)
    (site.out / "q.zarr").mkdir(parents=True)
    (site.out / "q.zarr" / "notes.txt").write_text("my own work")
    (site.out / "r.tif").write_bytes(b"my own raster")
    site.drop("q.tif", seed=1)
    site.drop("r.tif", seed=2)
    site.drop("s.tif", seed=3)
    proc = site.watch("--once", *sched(cluster))
    assert_one_clear_line(proc, "2 refused", "q.tif", "r.tif")
    assert done_scenes(proc.stdout) == ["s"]
    assert (site.out / "q.zarr" / "notes.txt").read_text() == "my own work"
    assert sorted(os.listdir(site.out / "q.zarr")) == ["notes.txt"]
    assert (site.out / "r.tif").read_bytes() == b"my own raster"
    assert re.search(r"^q\.tif: refused.*q\.zarr: already holds a folder", proc.stdout, re.MULTILINE)
    site.check("s", assert_exact)
    # A rewritten scene is the same scene: its own earlier outputs are replaced.
    (site.inbox / "s.tif").unlink()
    site.drop("s.tif", seed=9)
    again = site.watch("--once", *sched(cluster))
    assert "s" in done_scenes(again.stdout)
    site.check("s", assert_exact)


def test_a_failed_run_publishes_nothing(tmp_path: Path, model: Model, cluster: str) -> None:
    """The export fails after the result store is complete: nothing reaches the outputs."""
    site = Site(tmp_path, model)
    site.workflow.write_text(
        f"model: {{path: {model.path}}}\ntiling: {{tile_size: 32}}\n"
        "output: {zarr: out/{scene}.zarr, threshold: {path: out/{scene}_mask.tif, value: 0.5, band: 3}}\n",
        encoding="utf-8")
    site.drop("f.tif", seed=1)
    proc = site.watch("--once", *sched(cluster))
    assert_one_clear_line(proc, "1 of 1 scenes failed", "f@")
    assert listing(site.out) == []
    assert marker_states(site) == {}


def test_a_publish_that_fails_part_way_is_finished_by_the_next_pass(tmp_path: Path, model: Model, cluster: str,
                                                                    assert_exact: Any) -> None:
    """Something appears at one output path while the scene runs: no result store, no done marker; once
    the way is clear, the next pass publishes exactly."""
    from tilepipe.store.result import ResultStore

    site = Site(tmp_path, model, tile=16)
    site.drop("p.tif", seed=2, shape=(384, 384))
    watcher = site.popen("--once", *sched(cluster), "--backoff", "0")
    try:
        deadline = time.monotonic() + 120
        started = False
        while not started and time.monotonic() < deadline and watcher.poll() is None:
            for store in site.out.glob(".tilepipe-watch/work/*/zarr/p.zarr"):
                with contextlib.suppress(Exception):
                    started = int(np.count_nonzero(ResultStore.open(store).status())) >= 0
            time.sleep(0.02)
        assert started and watcher.poll() is None, "the run ended before the obstacle could be placed"
        (site.out / "p.tif").write_bytes(b"arrived while the scene ran")
        out, err = watcher.communicate(timeout=180)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert watcher.returncode == 1, err[-2000:]
    assert re.search(r"^p@\w+: failed .*p\.tif: already holds a file", out, re.MULTILINE), out
    assert not (site.out / "p.zarr").exists()  # the result store goes last: not published
    assert marker_states(site).get("p.tif", ("none",))[0] != "done"
    assert (site.out / "p.tif").read_bytes() == b"arrived while the scene ran"

    (site.out / "p.tif").unlink()
    again = site.watch("--once", *sched(cluster), "--backoff", "0")
    assert again.returncode == 0, again.stderr
    assert done_scenes(again.stdout) == ["p"]
    site.check("p", assert_exact)
    assert marker_states(site)["p.tif"][0] == "done"


# --------------------------------------------------------------------------- disks and file systems


def fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` to its last byte; the filler file."""
    filler = folder / "filler.bin"
    with open(filler, "wb", buffering=0) as fh:
        for block in (1 << 16, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * block)
    return filler


def test_disk_full_on_the_outputs_is_never_a_silent_exit_0(tmp_path: Path, model: Model, cluster: str,
                                                           assert_exact: Any) -> None:
    """The disk fills while a scene runs, so recording its failure in the ledger beside fails too: one
    Error line and a non-zero exit; --status still reads; once there is room, the scene resumes."""
    from tilepipe.store.result import ResultStore

    site = Site(tmp_path, model, tile=16)
    site.drop("big.tif", seed=2, shape=(512, 512))
    with tmpfs(site.out, "16m"):
        watcher = site.popen("--once", *sched(cluster), "--claims", "ledger")
        try:
            deadline = time.monotonic() + 120
            recorded = 0
            while recorded < 1 and time.monotonic() < deadline and watcher.poll() is None:
                for store in site.out.glob(".tilepipe-watch/work/*/zarr/big.zarr"):
                    with contextlib.suppress(Exception):
                        recorded = int(np.count_nonzero(ResultStore.open(store).status()))
                time.sleep(0.02)
            assert watcher.poll() is None, "the scene finished before the disk could be filled"
            filler = fill(site.out)
            out, err = watcher.communicate(timeout=180)
        finally:
            if watcher.poll() is None:
                watcher.kill()
        assert watcher.returncode != 0, out
        proc = subprocess.CompletedProcess(watcher.args, watcher.returncode, out, err)
        assert_one_clear_line(proc, "big@", "No space left on device", "recording the failure failed too")
        assert "Traceback" not in err
        assert listing(site.out) == ["filler.bin"]  # nothing published
        status = site.watch("--status")  # reading the ledger needs no space
        assert status.returncode == 0, status.stderr
        assert "big.tif" in status.stdout
        filler.unlink()
        again = site.watch("--once", *sched(cluster), "--claims", "ledger")
        assert again.returncode == 0, again.stderr
        assert done_scenes(again.stdout) == ["big"]
        site.check("big", assert_exact)


def test_publishing_across_file_systems_is_atomic(tmp_path: Path, model: Model, cluster: str,
                                                  assert_exact: Any) -> None:
    """--work-dir on another file system: the copy goes to a hidden name and is renamed into place, so
    a full disk or a SIGKILL mid-copy never leaves a result at the final path."""
    site = Site(tmp_path, model, tile=16)
    work = tmp_path / "work"
    site.drop("w.tif", seed=3, shape=(640, 640))  # 1600 tiles: thousands of files to copy
    with tmpfs(site.out, "900k"):
        full = site.watch("--once", *sched(cluster), "--work-dir", str(work), "--backoff", "0")
        assert_one_clear_line(full, "w@")
        assert re.search(r"^w@\w+: failed .*publishing the scene's output failed: No space left on device",
                         full.stdout, re.MULTILINE), full.stdout
        assert "[(" not in full.stdout  # one line, not a list of tuples
        assert listing(site.out) == []  # no partial store, hidden or not, at any output path
    with tmpfs(site.out, "64m"):
        watcher = site.popen("--once", *sched(cluster), "--work-dir", str(work), "--backoff", "0")
        caught: list[Path] = []
        try:
            deadline = time.monotonic() + 180
            while not caught and time.monotonic() < deadline and watcher.poll() is None:
                caught = [site.out / n for n in os.listdir(site.out) if ".publishing-" in n]
                if caught:
                    watcher.kill()  # SIGKILL in the middle of a copy
            watcher.wait(timeout=30)
        finally:
            if watcher.poll() is None:
                watcher.kill()
        if not caught:
            pytest.fail(f"no copy was caught under way: the test proves nothing ({watcher.communicate()})")
        final = site.out / caught[0].name[1:].split(".publishing-")[0]
        assert not final.exists(), final  # the copy under way is not at its final path
        again = site.watch("--once", *sched(cluster), "--work-dir", str(work), "--backoff", "0",
                           "--claims", "ledger")
        assert again.returncode == 0, again.stderr
        assert done_scenes(again.stdout) == ["w"]
        site.check("w", assert_exact)
        assert listing(site.out) == ["w.scene.zarr", "w.tif", "w.zarr"]  # the killed copy's leftovers gone


# --------------------------------------------------------------------------- time, versions, workflow


def test_versions_follow_the_inbox_and_published_results_verify(tmp_path: Path, model: Model, cluster: str,
                                                                assert_exact: Any) -> None:
    import rasterio

    site = Site(tmp_path, model)
    v1 = site.drop("v.tif", seed=1)
    v1_bytes, v1_dense = v1.read_bytes(), site.dense["v"]
    assert site.watch("--once", *sched(cluster)).returncode == 0
    site.check("v", assert_exact)
    # Published results name where they were published: verify works on them.
    checked = run_tilepipe("verify", str(site.out / "v.zarr"), "--tiles", "2")
    assert checked.returncode == 0, checked.stderr
    with rasterio.open(site.out / "v.tif") as src:
        assert src.tags()["TILEPIPE_SCENE_STORE"] == str(site.out / "v.scene.zarr")
    v1.unlink()
    site.drop("v.tif", seed=2)  # v2
    assert done_scenes(site.watch("--once", *sched(cluster)).stdout) == ["v"]
    site.check("v", assert_exact)
    (site.inbox / "v.tif").unlink()
    partial = site.inbox / ".v.tif.part"
    partial.write_bytes(v1_bytes)
    partial.rename(site.inbox / "v.tif")  # back to v1: the outputs must follow
    site.dense["v"] = v1_dense
    back = site.watch("--once", *sched(cluster))
    assert back.returncode == 0, back.stderr
    assert done_scenes(back.stdout) == ["v"], back.stdout
    site.check("v", assert_exact)


def test_a_future_timestamp_waits_for_the_settle_time_not_the_skew(tmp_path: Path, model: Model, cluster: str,
                                                                   assert_exact: Any) -> None:
    site = Site(tmp_path, model)
    path = site.drop("late.tif", seed=1)
    ahead = time.time() + 7200
    os.utime(path, (ahead, ahead))
    first = site.watch("--once", *sched(cluster)[:2], "--settle", "2")
    assert first.returncode == 0 and done_scenes(first.stdout) == [], first.stdout
    status = json.loads(site.watch("--status", "--json").stdout)
    (waiting,) = status["waiting"]
    assert waiting["name"] == "late.tif" and "future" in waiting["why"]
    assert "late.tif" in site.watch("--status").stdout
    time.sleep(2.2)
    second = site.watch("--once", *sched(cluster)[:2], "--settle", "2")
    assert done_scenes(second.stdout) == ["late"], second.stdout
    site.check("late", assert_exact)


def test_a_broken_workflow_is_one_line_and_consumes_no_scene(tmp_path: Path, model: Model) -> None:
    site = Site(tmp_path, model)
    site.drop("a.tif", seed=1)
    site.drop("b.tif", seed=2)
    missing = tmp_path / "gone.keras"
    site.workflow.write_text(f"model: {{path: {missing}}}\noutput: {{zarr: out/{{scene}}.zarr}}\n", encoding="utf-8")
    proc = site.watch("--once", "--settle", "0")
    assert_one_clear_line(proc, "gone.keras", "no such model file")
    assert proc.stdout == ""
    assert not [r for r in site.status() if r["attempts"]]  # nothing consumed: no attempt, no quarantine
    site.workflow.write_text(f"model: {{path: {model.path}}}\noutput: {{zarr: out/{{scene}}.zarr}}\n",
                             encoding="utf-8")
    shutil.rmtree(site.out, ignore_errors=True)
    site.out.write_text("a file where the output folder should be")
    assert_one_clear_line(site.watch("--once", "--settle", "0"), str(site.out), "cannot write the outputs there")

