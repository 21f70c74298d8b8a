"""The watcher's inbox and naming rules on their own: settle time, scene keys, output clashes, publishing moves."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tilepipe.watch.inbox import Inbox
from tilepipe.watch.outputs import _move_into_place, clashes, name_key


def _entry(inbox: Inbox, name: str):  # type: ignore[no-untyped-def]
    (found,) = [e for e in inbox.entries() if e.name == name]
    return found


def test_a_file_with_its_mtime_set_back_waits_for_its_ctime(tmp_path: Path) -> None:
    """``cp -p`` and ``rsync -t`` keep an old mtime; the copy's ctime is now, and it decides."""
    path = tmp_path / "copied.tif"
    path.write_bytes(b"scene")
    old = time.time() - 3600
    os.utime(path, (old, old))  # what cp -p does: the content is new, its mtime an hour old
    inbox = Inbox(str(tmp_path))
    entry = _entry(inbox, "copied.tif")
    now = time.time()
    assert not inbox.settled(entry, 30.0, now)
    assert inbox.settled(entry, 30.0, os.stat(path).st_ctime + 30.5)


def test_a_future_timestamp_counts_from_when_it_was_first_seen(tmp_path: Path) -> None:
    path = tmp_path / "skewed.tif"
    path.write_bytes(b"scene")
    ahead = time.time() + 7200  # written by a machine whose clock is two hours ahead
    os.utime(path, (ahead, ahead))
    inbox = Inbox(str(tmp_path))
    entry = _entry(inbox, "skewed.tif")
    now = time.time()
    assert entry.changed > now
    assert not inbox.settled(entry, 5.0, now, first_seen=now)
    assert not inbox.settled(entry, 5.0, now + 4.0, first_seen=now)
    assert inbox.settled(entry, 5.0, now + 5.0, first_seen=now)  # settle time after first seen, not the skew


def test_scene_keys_are_injective_where_replacing_characters_was_not() -> None:
    names = ["東京.tif", "大阪.tif", "a b.tif", "a_b.tif", "a?b.tif", "A.tif", "a.tif", "a.tiff", ".a.tif"]
    keys = [name_key(n) for n in names]
    assert len(set(keys)) == len(names)
    assert all("/" not in k and not k.startswith(".") and len(k) < 100 for k in keys)
    assert name_key("x" * 500) != name_key("x" * 501)
    assert name_key("a.tif") == name_key("a.tif")


def test_outputs_of_two_scenes_that_meet_are_found() -> None:
    outputs = {
        "a.tif": [("scene", "/o/a.scene.zarr"), ("zarr", "/o/a.zarr")],
        "a.tiff": [("scene", "/o/a.scene.zarr"), ("zarr", "/o/a.zarr")],
        "X.tif": [("scene", "/o/X.scene.zarr"), ("zarr", "/o/X.zarr")],
        "X.scene.tif": [("scene", "/o/X.scene.scene.zarr"), ("zarr", "/o/X.scene.zarr")],
        "q.tif": [("scene", "/o/q.scene.zarr"), ("zarr", "/o/q.zarr")],
        "n.tif": [("zarr", "/o/q.zarr/n.zarr")],  # inside another scene's result store
    }
    found = clashes(outputs)
    assert set(found) == {"a.tif", "a.tiff", "X.tif", "X.scene.tif", "q.tif", "n.tif"}
    assert "a.tif" in found["a.tiff"] and "a.tiff" in found["a.tif"]
    assert "X.tif" in found["X.scene.tif"] and "/o/X.scene.zarr" in found["X.scene.tif"]
    assert "q.tif" in found["n.tif"]
    assert clashes({k: v for k, v in outputs.items() if k in ("a.tif", "X.tif", "q.tif")}) == {}


def test_a_move_across_file_systems_never_leaves_a_part_at_the_final_path(tmp_path: Path) -> None:
    """On one file system a folder is renamed into place, replacing the old one whole."""
    src, dst = tmp_path / "staged.zarr", tmp_path / "out" / "a.zarr"
    (src / "c").mkdir(parents=True)
    (src / "zarr.json").write_text("new")
    (src / "c" / "0").write_text("chunk")
    dst.mkdir(parents=True)
    (dst / "zarr.json").write_text("old")
    (dst / "stale").write_text("old chunk")
    _move_into_place(str(src), str(dst))
    assert sorted(p.name for p in dst.rglob("*")) == ["0", "c", "zarr.json"]
    assert (dst / "zarr.json").read_text() == "new" and not src.exists()
    assert sorted(os.listdir(dst.parent)) == ["a.zarr"]  # nothing set aside is left
