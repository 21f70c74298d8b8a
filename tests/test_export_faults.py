"""Exports under faults: a full disk, a killed export, outputs that cannot be files.

The disk-full tests fill a real file system: a small tmpfs mounted for the test (root only;
skipped with the reason elsewhere). References are independent of the code under test: the
numpy array written into the store, read back from the GeoTIFF with rasterio.
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import pytest
import rasterio
import zarr
from PIL import Image
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.windows import Window

from tilepipe.errors import InputError, StoreError
from tilepipe.export import export_geotiff, quicklook
from tilepipe.store.lock import LockHolder

from helpers import run_tilepipe

geotiff_module = importlib.import_module("tilepipe.export.geotiff")

TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0)

#: Small enough that no export of the stores below fits, large enough for the staging
#: folder, its pid record and the first tiles: the export starts, then runs out of room.
SMALL_DISK = 300 * 1024


def make_store(path: Path, shape: tuple[int, int, int], chunk: int = 256) -> np.ndarray:
    """Write a complete result store of uniform random float32 (next to incompressible); return it."""
    values = np.random.default_rng(11).random(shape, dtype=np.float32)
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    data = group.create_array(
        "data", shape=shape, chunks=(1, chunk, chunk), dtype="float32", fill_value=0.0, compressors=None,
        config={"write_empty_chunks": True},
    )
    data[...] = values
    tiles = (-(-shape[1] // chunk), -(-shape[2] // chunk))
    # Every tile computed (status 1), every chunk written: what a finished run leaves.
    group.create_array("status", shape=tiles, chunks=tiles, dtype="uint8", fill_value=1)
    group.attrs["tilepipe"] = {
        "format_version": 2,
        "kind": "result",
        "shape": list(shape),
        "crs_wkt": CRS.from_epsg(32633).to_wkt(),
        "transform": list(TRANSFORM)[:6],
        "complete": True,
        "provenance": {"run_id": "faults"},
        "report": {},
    }
    return values


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A 4.7 MB store: 2 bands of 768 x 768 random float32."""
    path = tmp_path / "result.zarr"
    return path, make_store(path, (2, 768, 768))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """``mount(size_bytes)``: a fresh tmpfs of that size; unmounted at teardown, pass or fail."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("a small file system is made by mounting a tmpfs, which needs root and mount(8)")
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
        mounted.append(folder)
        return folder

    try:
        yield mount
    finally:
        for folder in mounted:
            if subprocess.run(["umount", str(folder)], check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(folder)], check=False)


def listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def stored(path: Path) -> np.ndarray:
    """The store's ``data`` array, read with zarr alone: ``(band, y, x)``."""
    return np.asarray(zarr.open_array(str(path / "data"), mode="r")[...])


def read_back(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        assert src.crs == CRS.from_epsg(32633)
        assert src.transform == TRANSFORM
        return np.asarray(src.read())


def assert_one_error_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """A failed command whose whole stderr is one ``Error: ...`` line holding every needle."""
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("Error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ---------------------------------------------------------------- disk full


@pytest.mark.parametrize("cog", [False, True], ids=["geotiff", "cog"])
def test_disk_full_export_raises_and_leaves_nothing(
    store: tuple[Path, np.ndarray], tmp_path: Path, small_disk: Callable[[int], Path], cog: bool
) -> None:
    path, values = store
    np.testing.assert_array_equal(stored(path), values)
    roomy = tmp_path / "roomy"
    roomy.mkdir()
    reference = export_geotiff(path, roomy / "reference.tif", cog=cog)
    # GeoTIFF: the tiles do not fit. COG: 1.5 times the COG leaves room for the tiled
    # intermediate (the COG adds overviews to it) but not for both, so the COG copy fails.
    disk = small_disk(reference.stat().st_size * 3 // 2 if cog else SMALL_DISK)
    out = disk / "out.tif"
    with pytest.raises(StoreError) as raised:
        export_geotiff(path, out, cog=cog)
    assert str(raised.value) == f"{out}: cannot write the GeoTIFF: No space left on device"
    assert listing(disk) == set()  # nothing at the name, no staging folder, no sidecar
    # Replacing an existing file: the old one stays as it was.
    out.write_bytes(b"precious")
    with pytest.raises(StoreError, match="No space left on device"):
        export_geotiff(path, out, cog=cog, overwrite=True)
    assert listing(disk) == {"out.tif"}
    assert out.read_bytes() == b"precious"
    # The same export, where there is room, is whole and equals the store.
    again = export_geotiff(path, roomy / "out.tif", cog=cog)
    np.testing.assert_array_equal(read_back(again), stored(path))


def test_disk_full_cli_exits_non_zero_with_one_error_line(
    store: tuple[Path, np.ndarray], small_disk: Callable[[int], Path]
) -> None:
    path, _ = store
    disk = small_disk(SMALL_DISK)
    out = disk / "out.tif"
    proc = run_tilepipe("export", "--no-progress", str(path), str(out))
    assert_one_error_line(proc, str(out), "cannot write the GeoTIFF", "No space left on device")
    assert proc.stdout == ""  # no "wrote ..."
    assert listing(disk) == set()


def test_disk_full_quicklook_raises_and_leaves_nothing(
    store: tuple[Path, np.ndarray], tmp_path: Path, small_disk: Callable[[int], Path]
) -> None:
    path, _ = store
    disk = small_disk(SMALL_DISK)
    out = disk / "q.png"
    with pytest.raises(StoreError) as raised:
        quicklook(path, out, max_size=1024)  # random values: a PNG of about 2 MB
    assert str(raised.value) == f"{out}: cannot write the PNG: No space left on device"
    assert listing(disk) == set()
    png = quicklook(path, tmp_path / "q.png", max_size=1024)
    with Image.open(png) as image:
        assert image.format == "PNG" and image.mode == "RGBA"
        image.load()


def test_check_whole_finds_missing_and_cut_tiles(tmp_path: Path) -> None:
    """Real files GDAL opens without complaint, yet are not whole."""
    check, not_whole = geotiff_module._check_whole, geotiff_module._NotWhole
    values = np.random.default_rng(3).random((2, 100, 70), dtype=np.float32)
    profile = {
        "driver": "GTiff", "width": 70, "height": 100, "count": 2, "dtype": "float32", "crs": "EPSG:32633",
        "transform": TRANSFORM, "tiled": True, "blockxsize": 32, "blockysize": 32, "compress": "deflate",
        "interleave": "band",
    }
    whole = tmp_path / "whole.tif"
    with rasterio.open(whole, "w", **profile) as dst:
        dst.write(values)
    check(whole, 2)
    with pytest.raises(not_whole, match="expected 3 bands, got 2"):
        check(whole, 3)
    # One tile never written: GDAL reads it back as zeros, without a word.
    holed = tmp_path / "holed.tif"
    with rasterio.open(holed, "w", sparse_ok=True, **profile) as dst:
        dst.write(values[0], 1)
        dst.write(values[1, :96, :], 2, window=Window(0, 0, 70, 96))  # tile rows 0 to 2 of 4
    with rasterio.open(holed) as src:
        assert not src.read(2)[96:, 64:].any()  # the hole reads as zeros
    with pytest.raises(not_whole, match=r"tile \(row 3, col 0\) of band 2 is missing"):
        check(holed, 2)
    # Cut short after the header and tile index: the last tiles lie past the end.
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 3 // 4])
    with pytest.raises(not_whole, match="is missing or cut short"):
        check(cut, 2)


# ---------------------------------------------------------------- killed exports


def staging_folders(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f".{name}.*.partial"))


def test_killed_export_leaves_staging_that_the_next_export_removes(tmp_path: Path) -> None:
    path = tmp_path / "result.zarr"
    values = make_store(path, (1, 2048, 2048), chunk=512)
    out = tmp_path / "out.tif"
    # lzma makes the export take seconds, so the kill lands while tiles are being written.
    code = (
        "import sys; from tilepipe.export import export_geotiff; "
        "export_geotiff(sys.argv[1], sys.argv[2], compress='lzma')"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), str(out)])
    try:
        deadline = time.monotonic() + 120
        while not any(p.stat().st_size for s in staging_folders(tmp_path, "out.tif") for p in s.glob("work/*")):
            assert proc.poll() is None, "the export ended before it could be killed"
            assert time.monotonic() < deadline, "the export never started writing"
            time.sleep(0.01)
        assert proc.poll() is None, "the export ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    (left,) = staging_folders(tmp_path, "out.tif")
    holder = LockHolder.parse((left / "pid").read_text())
    assert holder is not None and (holder.pid, holder.host) == (proc.pid, socket.gethostname())
    export_geotiff(path, out)
    assert staging_folders(tmp_path, "out.tif") == []
    np.testing.assert_array_equal(read_back(out), values)
    np.testing.assert_array_equal(stored(path), values)


def make_staging(folder: Path, name: str, record: str | None) -> Path:
    """A staging folder as ``publish`` makes it, with the given owner record (None: no record)."""
    staging = folder / f".{name}.{os.urandom(4).hex()}.partial"
    (staging / "work").mkdir(parents=True)
    (staging / "work" / name).write_bytes(b"half a tiff")
    if record is not None:
        (staging / "pid").write_text(record)
    return staging


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def owner(pid: int, *, host: str | None = None, started: float | None = None) -> str:
    """The owner record of a staging folder: process ``pid`` of this machine (or ``host``), started when
    that process did (or at ``started``)."""
    if started is None:
        try:
            started = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:
            started = 0.0
    return replace(LockHolder.me(), pid=pid, host=host or socket.gethostname(), started=started).to_json()


def test_only_staging_of_dead_owners_is_removed(store: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, values = store
    out = tmp_path / "out.tif"
    host = socket.gethostname()
    sleeper = subprocess.Popen(["sleep", "600"])
    try:
        dead = make_staging(tmp_path, "out.tif", owner(dead_pid()))
        live = make_staging(tmp_path, "out.tif", owner(sleeper.pid))
        elsewhere = make_staging(tmp_path, "out.tif", owner(dead_pid(), host=f"not-{host}"))  # another machine's
        unrecorded = make_staging(tmp_path, "out.tif", None)  # its writer has not written the record yet
        other_name = make_staging(tmp_path, "other.tif", owner(dead_pid()))
        # A pid now held by a process that started at another time than the recorded writer: reused.
        reused = make_staging(tmp_path, "out.tif", owner(sleeper.pid, started=time.time() - 3600))
        export_geotiff(path, out)
        np.testing.assert_array_equal(read_back(out), values)
        assert set(staging_folders(tmp_path, "out.tif")) == {live, elsewhere, unrecorded}
        assert staging_folders(tmp_path, "other.tif") == [other_name]
        assert not dead.exists() and not reused.exists()
        assert (live / "work" / "out.tif").read_bytes() == b"half a tiff"  # untouched
    finally:
        sleeper.kill()
        sleeper.wait()
    # Once its owner is gone, the next export to the name removes it too.
    export_geotiff(path, out, overwrite=True)
    assert set(staging_folders(tmp_path, "out.tif")) == {elsewhere, unrecorded}


# ---------------------------------------------------------------- outputs that cannot be files


def test_output_that_cannot_be_a_file_is_one_clear_error(store: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = store
    folder = tmp_path / "folder.tif"
    folder.mkdir()
    with pytest.raises(InputError, match=r"^\S*folder\.tif: is a folder, expected a file name$"):
        export_geotiff(path, folder)
    with pytest.raises(InputError, match=r"^\S*folder\.tif: is a folder, expected a file name$"):
        quicklook(path, folder)
    assert listing(folder) == set()
    with pytest.raises(InputError, match=r"^/dev/null: is not a regular file"):
        export_geotiff(path, "/dev/null", overwrite=True)
    assert Path("/dev/null").is_char_device()
    if not Path("/proc/version").is_file():
        return  # no procfs here
    with pytest.raises(StoreError, match=r"^/proc/out\.tif: cannot write in /proc: "):
        export_geotiff(path, "/proc/out.tif")
    with pytest.raises(StoreError, match=r"^/proc/out\.png: cannot write in /proc: "):
        quicklook(path, "/proc/out.png")
    with pytest.raises(InputError, match=r"^/proc/version: already exists"):
        export_geotiff(path, "/proc/version")
    with pytest.raises(StoreError, match=r"^/proc/version: cannot write in /proc: "):
        export_geotiff(path, "/proc/version", overwrite=True)


def test_cli_output_that_cannot_be_a_file_is_one_error_line(store: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = store
    folder = tmp_path / "folder.tif"
    folder.mkdir()
    assert_one_error_line(run_tilepipe("export", "--no-progress", str(path), str(folder)), str(folder), "is a folder")
    if Path("/proc/version").is_file():
        proc = run_tilepipe("export", "--no-progress", "--overwrite", str(path), "/proc/version")
        assert_one_error_line(proc, "/proc/version: cannot write in /proc")
