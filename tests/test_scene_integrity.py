"""A scene store never hands back wrong values as right ones: checksums, missing chunks, stopped ingests.

Every fault here is made for real on the files of a store (a flipped byte, a deleted chunk file,
an ingest process killed with SIGKILL), and every store is checked against rasterio's own reading
of the raster, with tile windows computed by hand, never by tilepipe's grid.
"""

from __future__ import annotations

import json
import math
import os
import pickle
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
import zarr
from affine import Affine

import tilepipe
from tilepipe.errors import InputError, StoreError, TilepipeError
from tilepipe.store.scene import SceneStore

from helpers import assert_one_clear_line, run_tilepipe, write_geotiff

TILE, HALO = 16, 2
_TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 6000000.0)


# -- rasters and their reference reading ----------------------------------------------------------


def _raster(path: Path, shape: tuple[int, int], *, seed: int = 0, empty_rows: tuple[int, int] | None = None,
            nodata: float | None = None, dtype: str = "float32", density: float = 0.4) -> Path:
    """A one-band raster with values in about ``density`` of its pixels; ``empty_rows`` (start, stop) left zero."""
    rng = np.random.default_rng(seed)
    data = (rng.integers(1, 200, size=(1, *shape)) if dtype != "float32" else rng.normal(size=(1, *shape)))
    data = data.astype(dtype)
    data[rng.random(data.shape) > density] = 0
    if empty_rows is not None:
        data[:, empty_rows[0] : empty_rows[1]] = 0
    write_geotiff(path, data, nodata=nodata, crs="EPSG:32633", transform=_TRANSFORM)
    return path


def _reference(path: Path, nodata: float | None = None) -> np.ndarray:
    """The raster as rasterio reads it, ``(y, x)`` float64, with nodata pixels (and NaN) as 0."""
    with rasterio.open(path) as src:
        data = src.read(1).astype(np.float64)
    if nodata is not None:
        data[data == nodata] = 0
    data[np.isnan(data)] = 0
    return data


def _window(row: int, col: int, shape: tuple[int, int], tile: int = TILE, halo: int = HALO) -> tuple[slice, slice]:
    """Tile ``(row, col)``'s haloed window, clipped to the scene, computed by hand."""
    return (slice(max(row * tile - halo, 0), min((row + 1) * tile + halo, shape[0])),
            slice(max(col * tile - halo, 0), min((col + 1) * tile + halo, shape[1])))


def _assert_store_equals(scene: SceneStore, ref: np.ndarray, tile: int = TILE, halo: int = HALO) -> None:
    """Every tile's count and densified values equal the reference window; the total equals the scene's."""
    rows, cols = -(-ref.shape[0] // tile), -(-ref.shape[1] // tile)
    index = scene.index()
    assert index.shape == (rows, cols)
    for r in range(rows):
        for c in range(cols):
            want = ref[_window(r, c, ref.shape, tile, halo)]
            assert index[r, c] == np.count_nonzero(want), (r, c)
            got = scene.read_tile(r, c)
            if got is None:
                assert not want.any(), (r, c)
                continue
            np.testing.assert_array_equal(got.to_dense(np.float64)[:, :, 0], want, err_msg=f"tile (row {r}, col {c})")
    assert scene.attrs["nnz_total"] == np.count_nonzero(ref)


def _occupied_tile(ref: np.ndarray) -> tuple[int, int]:
    """An occupied tile that is not the first one (so a message naming it is not an accident)."""
    rows, cols = -(-ref.shape[0] // TILE), -(-ref.shape[1] // TILE)
    for r in range(rows - 1, -1, -1):
        for c in range(cols - 1, -1, -1):
            if ref[_window(r, c, ref.shape)].any():
                return r, c
    raise AssertionError("no occupied tile")


def _flip_byte(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))


def _assert_unchained_and_picklable(err: BaseException) -> None:
    """A worker's error arrives at a Dask client as itself: no cause to unpickle, and it pickles as a StoreError."""
    assert err.__cause__ is None and err.__context__ is None
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is StoreError and str(back) == str(err)


@pytest.fixture
def scene(tmp_path: Path) -> tuple[SceneStore, np.ndarray, Path]:
    """A 100 x 90 scene (rows 30-70 empty) ingested in 16 px tiles: 7 x 6 tiles in 4 x 3 index blocks."""
    tif = _raster(tmp_path / "x.tif", (100, 90), empty_rows=(30, 70))
    store = tilepipe.ingest(str(tif), tmp_path / "s.zarr", tile_size=TILE, halo=HALO)
    return store, _reference(tif), tmp_path / "s.zarr"


# -- 1. a checksum on every chunk -----------------------------------------------------------------


def test_every_array_of_the_store_carries_a_crc32c_and_the_store_reads_back_exactly(
    scene: tuple[SceneStore, np.ndarray, Path],
) -> None:
    store, ref, path = scene
    for array in ("tiles", "nnz", "entries"):
        codecs = [c["name"] for c in json.loads((path / array / "zarr.json").read_text())["codecs"]]
        assert codecs[-1] == "crc32c", (array, codecs)
        assert "zstd" in codecs, (array, codecs)
    assert json.loads((path / "zarr.json").read_text())["attributes"]["tilepipe"]["format_version"] == 3
    assert store.info.block == (2, 2)  # the index blocks the tests below name
    _assert_store_equals(store, ref)


def test_every_chunk_tilepipe_encodes_itself_is_byte_for_byte_what_zarr_writes(
    scene: tuple[SceneStore, np.ndarray, Path], tmp_path: Path,
) -> None:
    """Tilepipe writes its scene chunks' bytes itself (zarr's per-chunk threads cost a millisecond each):
    each one must be exactly zarr's own encoding of the same values, edge blocks padded included."""
    _store, _ref, path = scene
    source = zarr.open_group(str(path), mode="r")
    copy = zarr.open_group(str(tmp_path / "zarr-wrote.zarr"), mode="w")
    compared: dict[str, list[tuple[int, ...]]] = {}
    for name in ("tiles", "nnz", "entries"):
        array = source[name]
        meta = json.loads((path / name / "zarr.json").read_text())
        twin = copy.create_array(name, shape=array.shape, chunks=array.chunks, dtype=array.metadata.data_type,
                                 fill_value=array.fill_value, compressors=array.compressors)
        files = sorted(p for p in (path / name / "c").rglob("*") if p.is_file())
        assert files, name
        for chunk_file in files:
            coords = tuple(int(v) for v in chunk_file.relative_to(path / name / "c").parts)
            selection = tuple(slice(i * n, min((i + 1) * n, dim))
                              for i, n, dim in zip(coords, array.chunks, array.shape, strict=True))
            twin[selection] = array[selection]
            assert (tmp_path / "zarr-wrote.zarr" / name / "c").joinpath(*map(str, coords)).read_bytes() == \
                chunk_file.read_bytes(), (name, coords)
            compared.setdefault(name, []).append(coords)
        assert [c["name"] for c in meta["codecs"]][-1] == "crc32c"
    assert len(compared["tiles"]) > 10
    assert any(row == 3 for row, _ in compared["nnz"])  # the last block row: one tile row of two, padded


def test_chunks_of_arrays_with_other_codecs_are_left_to_zarr(tmp_path: Path) -> None:
    """Only tilepipe's own codec chain is encoded by hand; any other array's chunks go through zarr."""
    from zarr.codecs import BloscCodec, ZstdCodec

    from tilepipe.store._zarr import chunk_encoder, compressors, write_many

    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    ours = group.create_array("ours", shape=(5, 3), chunks=(2, 2), dtype="int64", fill_value=-1,
                              compressors=compressors(3))
    no_checksum = group.create_array("plain", shape=(5, 3), chunks=(2, 2), dtype="int64", compressors=[ZstdCodec()])
    blosc = group.create_array("blosc", shape=(5, 3), chunks=(2, 2), dtype="int64", compressors=[BloscCodec()])
    assert chunk_encoder(ours) is not None
    assert chunk_encoder(no_checksum) is None and chunk_encoder(blosc) is None
    values = np.arange(15, dtype=np.int64).reshape(5, 3)
    assert write_many([(no_checksum, (slice(4, 5), slice(2, 3)), values[4:, 2:])]) is None
    assert no_checksum[4, 2] == 14


def test_a_flipped_byte_in_a_tile_chunk_is_an_error_naming_the_tile(
    scene: tuple[SceneStore, np.ndarray, Path],
) -> None:
    _, ref, path = scene
    r, c = _occupied_tile(ref)
    _flip_byte(path / "tiles" / "c" / str(r) / str(c))
    with pytest.raises(StoreError) as err:
        tilepipe.open_scene(path).read_tile(r, c)
    assert str(err.value) == f"{path}: tile (row {r}, col {c}) is corrupt (checksum mismatch); ingest again"
    _assert_unchained_and_picklable(err.value)


def test_a_flipped_byte_in_an_index_chunk_is_an_error_naming_the_block(
    scene: tuple[SceneStore, np.ndarray, Path],
) -> None:
    _, ref, path = scene
    _flip_byte(path / "nnz" / "c" / "1" / "1")  # block (1, 1): tiles rows 2-3, cols 2-3, all empty
    store = tilepipe.open_scene(path)
    with pytest.raises(StoreError, match=r"s\.zarr: index block \(1, 1\) is corrupt \(checksum mismatch\); "
                                         r"ingest again$") as err:
        store.index()
    _assert_unchained_and_picklable(err.value)
    # A tile of the damaged block, whose chunk is absent, cannot be called empty either.
    assert not ref[_window(2, 2, ref.shape)].any() and not (path / "tiles" / "c" / "2" / "2").exists()
    with pytest.raises(StoreError, match=r"index block \(1, 1\) is corrupt"):
        store.read_tile(2, 2)


def test_a_store_of_format_1_is_refused_with_what_to_do(scene: tuple[SceneStore, np.ndarray, Path]) -> None:
    _, _, path = scene
    group = zarr.open_group(str(path), mode="r+")
    attrs = dict(group.attrs["tilepipe"])  # type: ignore[arg-type]
    group.attrs["tilepipe"] = {**attrs, "format_version": 1}
    with pytest.raises(StoreError,
                       match=r"store format 1 is not one of the supported 2, 3; ingest again with --overwrite"):
        tilepipe.open_scene(path)


# -- 2. an absent chunk is "empty" only where the index says so ------------------------------------


def test_empty_tiles_have_no_chunk_and_read_as_empty(scene: tuple[SceneStore, np.ndarray, Path]) -> None:
    store, ref, path = scene
    index = store.index()
    for r in range(index.shape[0]):
        for c in range(index.shape[1]):
            has_chunk = (path / "tiles" / "c" / str(r) / str(c)).exists()
            assert has_chunk == bool(ref[_window(r, c, ref.shape)].any()) == (index[r, c] > 0), (r, c)
            if not has_chunk:
                assert store.read_tile(r, c) is None
    assert (index == 0).any() and (index > 0).any()  # both kinds are here


def test_a_deleted_tile_chunk_of_an_occupied_tile_is_an_error_naming_the_tile(
    scene: tuple[SceneStore, np.ndarray, Path],
) -> None:
    _, ref, path = scene
    r, c = _occupied_tile(ref)
    (path / "tiles" / "c" / str(r) / str(c)).unlink()
    want = np.count_nonzero(ref[_window(r, c, ref.shape)])
    with pytest.raises(StoreError) as err:
        tilepipe.open_scene(path).read_tile(r, c)
    assert str(err.value) == f"{path}: tile (row {r}, col {c}) is missing (its index says {want} entries); ingest again"
    _assert_unchained_and_picklable(err.value)


def test_a_deleted_index_chunk_is_an_error_naming_the_block(scene: tuple[SceneStore, np.ndarray, Path]) -> None:
    _, _, path = scene
    (path / "nnz" / "c" / "1" / "2").unlink()  # block (1, 2): tiles rows 2-3, cols 4-5
    with pytest.raises(StoreError) as err:
        tilepipe.open_scene(path).index()
    assert str(err.value) == f"{path}: index block (1, 2) (tile (row 2, col 4)) is missing; ingest again"


@pytest.mark.cluster
@pytest.mark.parametrize("fault", ["deleted tile", "flipped tile", "deleted index"])
def test_a_run_over_a_damaged_store_fails_naming_the_tile(
    fault: str, scene: tuple[SceneStore, np.ndarray, Path], tmp_path: Path, dask_client: Any,
) -> None:
    from helpers import conv, sequential

    _, ref, path = scene
    r, c = _occupied_tile(ref)
    if fault == "deleted tile":
        (path / "tiles" / "c" / str(r) / str(c)).unlink()
        message = rf"tile \(row {r}, col {c}\) is missing"
    elif fault == "flipped tile":
        _flip_byte(path / "tiles" / "c" / str(r) / str(c))
        message = rf"tile \(row {r}, col {c}\) is corrupt \(checksum mismatch\)"
    else:
        (path / "nnz" / "c" / "0" / "1").unlink()
        message = r"index block \(0, 1\) \(tile \(row 0, col 2\)\) is missing"
    model = sequential(1, conv(1, 3, padding="same"), seed=0)
    # A damaged tile fails (the run ends incomplete, to resume once mended); a damaged index stops the run.
    with pytest.raises(TilepipeError, match=message):
        tilepipe.run(path, model, tmp_path / "r.zarr", client=dask_client)
    if (tmp_path / "r.zarr").exists():
        assert not tilepipe.open_result(tmp_path / "r.zarr").complete


# -- 3. a killed ingest resumes -------------------------------------------------------------------

_KILLED_INGEST = textwrap.dedent("""
    import sys
    from distributed import Client
    import tilepipe
    # One worker thread: blocks finish one at a time, so the kill lands between blocks on any machine.
    with Client(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as client:
        tilepipe.ingest(sys.argv[1], sys.argv[2], tile_size=16, halo=2, client=client)
""")


def _chunk_files(path: Path) -> dict[str, int]:
    """Every chunk file of a store (not zarr's temporary ``.partial`` ones), with its modification time (ns)."""
    return {str(p.relative_to(path)): p.stat().st_mtime_ns
            for array in ("tiles", "nnz", "entries") for p in (path / array / "c").rglob("*")
            if not p.name.endswith(".partial") and p.is_file()}


def test_a_killed_ingest_resumes_and_ingests_only_the_unfinished_blocks(tmp_path: Path) -> None:
    tif = _raster(tmp_path / "big.tif", (1024, 1024), seed=3, density=0.3)
    path = tmp_path / "s.zarr"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_INGEST, str(tif), str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while sum(k.startswith("nnz/") for k in _chunk_files(path)) < 3:  # 3 index chunks: 3 blocks done
            assert proc.poll() is None, "the ingest ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    attrs = json.loads((path / "zarr.json").read_text())["attributes"]["tilepipe"]
    assert attrs["complete"] is False

    killed = SceneStore.open(path, require_complete=False)
    blocks = killed.blocks()
    assert len(blocks) == 16
    unfinished = killed.unfinished_blocks()
    finished = [b for b in blocks if b not in unfinished]
    assert 3 <= len(finished) < 16, finished
    before = _chunk_files(path)
    time.sleep(0.01)  # so that a chunk written again has a later time

    store = tilepipe.ingest(str(tif), path, tile_size=16, halo=2)  # no overwrite: resumed

    after = _chunk_files(path)
    by, bx = store.info.block

    def block_of(key: str) -> tuple[int, int]:
        array, _, r, c = key.split("/")
        if array == "tiles":
            return int(r) // by, int(c) // bx
        return int(r), int(c)  # nnz and entries: one chunk per block

    touched = {block_of(k) for k in after if after[k] != before.get(k)}
    assert touched == set(unfinished)  # every unfinished block written again, and no finished one
    assert all(after[k] == t for k, t in before.items() if block_of(k) in finished)
    assert store.attrs["complete"] is True
    _assert_store_equals(store, _reference(tif))


def test_an_unfinished_ingest_of_points_in_memory_resumes_its_unfinished_block(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    dense = rng.normal(size=(100, 90, 1)).astype(np.float32)
    dense[rng.random(dense.shape) > 0.3] = 0
    points = (np.argwhere(dense), dense[dense != 0], dense.shape)
    path = tmp_path / "s.zarr"
    tilepipe.ingest(points, path, tile_size=TILE, halo=HALO)
    # As a kill would leave it: block (1, 2) (tile rows 2-3, cols 4-5) without its counts, one of its tiles
    # half-written (a temporary file zarr never renamed into place), and the store not marked complete.
    group = zarr.open_group(str(path), mode="r+")
    group.attrs["tilepipe"] = {**dict(group.attrs["tilepipe"]), "complete": False}  # type: ignore[arg-type]
    (path / "nnz" / "c" / "1" / "2").unlink()
    (path / "entries" / "c" / "1" / "2").unlink()
    (path / "tiles" / "c" / "2" / "4").rename(path / "tiles" / "c" / "2" / "4.0123.partial")
    before = _chunk_files(path)
    time.sleep(0.01)

    store = tilepipe.ingest(points, path, tile_size=TILE, halo=HALO)

    after = _chunk_files(path)
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed == {"nnz/c/1/2", "entries/c/1/2", *(f"tiles/c/{r}/{c}" for r in (2, 3) for c in (4, 5))}
    assert not list(path.rglob("*.partial"))
    _assert_store_equals(store, dense[:, :, 0].astype(np.float64))
    # The total: the finished blocks' counts read back, the resumed block's as its task reported it.
    assert store.attrs["nnz_total"] == store.entries_total() == int(np.count_nonzero(dense))


def test_an_index_block_lost_after_its_write_fails_the_ingest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every task reports success, but one block's index chunk is gone by the end: the store is not complete."""
    from tilepipe.execute import ingest as ingest_module

    rng = np.random.default_rng(9)
    dense = rng.normal(size=(100, 90, 1)).astype(np.float32)
    dense[rng.random(dense.shape) > 0.3] = 0
    points = (np.argwhere(dense), dense[dense != 0], dense.shape)
    path = tmp_path / "s.zarr"
    real = ingest_module.ingest_coo_block
    lost: list[tuple[int, int]] = []
    which = ["nnz"]  # the array whose chunk of block (1, 2) goes

    def write_then_lose(buckets: Any, store: Any, block: tuple[int, int]) -> Any:
        done = real(buckets, store, block)
        if block == (1, 2):
            (path / which[0] / "c" / "1" / "2").unlink()  # after the write: a disk or another hand lost it
            lost.append(block)
        return done

    monkeypatch.setattr(ingest_module, "ingest_coo_block", write_then_lose)
    for array in ("nnz", "entries"):
        which[0] = array
        with pytest.raises(StoreError) as err:
            tilepipe.ingest(points, path, tile_size=TILE, halo=HALO, overwrite=True)
        assert str(err.value) == f"{path}: index block (1, 2) is missing after ingest; ingest again"
        attrs = json.loads((path / "zarr.json").read_text())["attributes"]["tilepipe"]
        assert attrs["complete"] is False
    assert lost == [(1, 2), (1, 2)]


def test_an_unfinished_ingest_of_another_source_is_not_resumed(tmp_path: Path) -> None:
    a = _raster(tmp_path / "a.tif", (64, 64), seed=1)
    b = _raster(tmp_path / "b.tif", (64, 64), seed=2)
    tilepipe.ingest(str(a), tmp_path / "s.zarr", tile_size=TILE, halo=HALO)
    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")
    group.attrs["tilepipe"] = {**dict(group.attrs["tilepipe"]), "complete": False}  # type: ignore[arg-type]
    with pytest.raises(StoreError, match=r"holds an unfinished ingest of a scene of another source \(.*a\.tif\)"):
        tilepipe.ingest(str(b), tmp_path / "s.zarr", tile_size=TILE, halo=HALO)
    store = tilepipe.ingest(str(b), tmp_path / "s.zarr", tile_size=TILE, halo=HALO, overwrite=True)
    _assert_store_equals(store, _reference(b))


# -- 4. a nodata value the dtype cannot hold ------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "nodata", "message"),
    [
        ("uint8", -1, "nodata -1 cannot be a uint8 value (whole numbers 0 to 255)"),
        ("uint8", 300, "nodata 300 cannot be a uint8 value (whole numbers 0 to 255)"),
        ("int16", 0.5, "nodata 0.5 cannot be a int16 value (whole numbers -32768 to 32767)"),
        ("uint16", math.nan, "nodata nan cannot be a uint16 value (whole numbers 0 to 65535)"),
        ("float32", 1e40, "nodata 1e+40 cannot be a float32 value (it overflows)"),
    ],
)
def test_a_nodata_value_the_dtype_cannot_hold_is_refused(
    dtype: str, nodata: float, message: str, tmp_path: Path,
) -> None:
    tif = _raster(tmp_path / "x.tif", (20, 20), dtype=dtype)
    with pytest.raises(InputError) as err:
        tilepipe.ingest(str(tif), tmp_path / "s.zarr", tile_size=TILE, nodata=nodata)
    assert str(err.value) == f"{tif}: {message}"
    assert not (tmp_path / "s.zarr").exists()


def test_a_nodata_value_the_dtype_holds_drops_exactly_those_pixels(tmp_path: Path) -> None:
    tif = _raster(tmp_path / "x.tif", (40, 40), dtype="uint8", density=0.9)
    with rasterio.open(tif) as src:
        data = src.read(1)
    data[::3, ::2] = 255
    write_geotiff(tif, data[None], crs="EPSG:32633", transform=_TRANSFORM)
    store = tilepipe.ingest(str(tif), tmp_path / "s.zarr", tile_size=TILE, halo=HALO, nodata=255)
    ref = _reference(tif, nodata=255)
    assert np.count_nonzero(ref) == np.count_nonzero((data != 0) & (data != 255))
    _assert_store_equals(store, ref)


# -- 5. impossible or absurd tile sizes -----------------------------------------------------------


def test_a_tile_larger_than_the_scene_is_clipped_to_it(tmp_path: Path) -> None:
    tif = _raster(tmp_path / "x.tif", (400, 400), seed=5)
    store = tilepipe.ingest(str(tif), tmp_path / "s.zarr", tile_size=100000, halo=HALO)
    assert store.info.tile_size == (400, 400)
    assert store.index().shape == (1, 1)
    tile = store.read_tile(0, 0)
    assert tile is not None
    np.testing.assert_array_equal(tile.to_dense(np.float64)[:, :, 0], _reference(tif))
    assert tilepipe.ingest(str(tif), tmp_path / "s.zarr", tile_size=100000, halo=HALO).attrs["complete"]  # reused


def test_a_tile_is_clipped_per_axis(tmp_path: Path) -> None:
    tif = _raster(tmp_path / "x.tif", (70, 30), seed=6)
    store = tilepipe.ingest(str(tif), tmp_path / "s.zarr", tile_size=(32, 64), halo=HALO)
    assert store.info.tile_size == (32, 30) and store.index().shape == (3, 1)
    ref = _reference(tif)
    for r in range(3):
        rows = slice(max(r * 32 - HALO, 0), min((r + 1) * 32 + HALO, 70))
        tile = store.read_tile(r, 0)
        assert tile is not None
        np.testing.assert_array_equal(tile.to_dense(np.float64)[:, :, 0], ref[rows])


def test_a_tiny_tile_on_a_large_scene_is_refused_with_the_reason(tmp_path: Path) -> None:
    tif = _raster(tmp_path / "x.tif", (400, 400))
    with pytest.raises(InputError) as err:
        tilepipe.ingest(str(tif), tmp_path / "s.zarr", tile_size=1)
    assert str(err.value) == ("tile_size 1: tiles smaller than 16 px cost more in overhead than they hold "
                              "(160000 tiles for a 400 x 400 scene); use at least 16")
    assert not (tmp_path / "s.zarr").exists()


def test_a_scene_smaller_than_the_tile_is_one_tile(tmp_path: Path) -> None:
    tif = _raster(tmp_path / "x.tif", (12, 13), seed=7)
    store = tilepipe.ingest(str(tif), tmp_path / "s.zarr", tile_size=1024, halo=HALO)
    assert store.info.tile_size == (12, 13) and store.index().shape == (1, 1)
    tile = store.read_tile(0, 0)
    assert tile is not None
    np.testing.assert_array_equal(tile.to_dense(np.float64)[:, :, 0], _reference(tif))


# -- 6. what an existing output is, in words ------------------------------------------------------


def test_info_on_a_raster_says_it_is_a_file(tmp_path: Path) -> None:
    tif = _raster(tmp_path / "x.tif", (20, 20), dtype="uint8")
    with pytest.raises(StoreError) as err:
        tilepipe.info(tif)
    assert str(err.value) == f"{tif}: is a file, not a tilepipe store (Zarr v3 folder)"
    assert_one_clear_line(run_tilepipe("info", str(tif)), f"{tif}: is a file, not a tilepipe store (Zarr v3 folder)")
    bad_nodata = run_tilepipe("ingest", str(tif), str(tmp_path / "s.zarr"), "--nodata", "-1")
    assert_one_clear_line(bad_nodata, f"{tif}: nodata -1 cannot be a uint8 value")


@pytest.mark.parametrize(
    ("change", "holds"),
    [
        ({"halo": 3}, "the same source with halo 2 (asked: 3)"),
        ({"tile_size": 32}, "the same source with tile size 16 x 16 (asked: 32 x 32)"),
        ({"tile_size": 32, "halo": 4}, "the same source with tile size 16 x 16 (asked: 32 x 32), halo 2 (asked: 4)"),
        ({"nodata": 7}, "the same file with nodata None (asked: 7.0)"),
    ],
)
def test_reuse_refused_says_what_differs(change: dict[str, Any], holds: str, tmp_path: Path) -> None:
    tif = _raster(tmp_path / "x.tif", (64, 64), dtype="uint8")
    tilepipe.ingest(str(tif), tmp_path / "s.zarr", tile_size=TILE, halo=HALO)
    asked: dict[str, Any] = {"tile_size": TILE, "halo": HALO, **change}
    with pytest.raises(StoreError) as err:
        tilepipe.ingest(str(tif), tmp_path / "s.zarr", **asked)
    assert str(err.value) == (f"{tmp_path / 's.zarr'}: already exists and holds {holds}; "
                              "pass overwrite=True (--overwrite) to replace it")


def test_reuse_refused_for_another_source_names_it(tmp_path: Path) -> None:
    a = _raster(tmp_path / "a.tif", (64, 64), seed=1)
    b = _raster(tmp_path / "b.tif", (64, 64), seed=2)
    tilepipe.ingest(str(a), tmp_path / "s.zarr", tile_size=TILE, halo=HALO)
    with pytest.raises(StoreError, match=rf"holds a scene of another source \({a}\); pass overwrite"):
        tilepipe.ingest(str(b), tmp_path / "s.zarr", tile_size=TILE, halo=HALO)
    os.utime(a, ns=(1, 1))
    with rasterio.open(a, "r+") as dst:
        dst.write(np.full((1, 64, 64), 9, np.float32))
    with pytest.raises(StoreError, match=rf"holds a scene of {a} as it was before it changed; pass overwrite"):
        tilepipe.ingest(str(a), tmp_path / "s.zarr", tile_size=TILE, halo=HALO)
