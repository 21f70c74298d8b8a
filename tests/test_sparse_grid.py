"""Stores in O(occupied tiles): a huge grid around a handful of points costs what the points cost.

The scene index writes only the blocks that hold data, with a checksummed record of which;
the result's status grid writes only chunks that hold a tile not free, with a record too. A
deleted chunk of either is still an error. Exactness on a grid of a million tiles is checked
against the model on each occupied neighbourhood (and on windows of zeros elsewhere, borders
and corners included): the whole scene (16384^2 px) would not fit a test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

import tilepipe
from tilepipe.errors import StoreError
from tilepipe.geometry import TileGrid
from tilepipe.sources.coo import coo_block_occupancy, coo_from_arrays

SIDE = 16384  # px: 1024 x 1024 tiles of 16 px, a million tiles
TILE = 16
# Points: a cluster in the interior, one on a tile corner, one at the scene's top-left corner,
# one on the bottom border, one on a block edge (blocks are 256 x 256 tiles here).
POINTS = [(5000, 7000), (5003, 7004), (5010, 6995), (8191, 8191), (0, 0), (SIDE - 1, 1234), (4095, 4096)]


def _brute_occupancy(rows: np.ndarray, cols: np.ndarray, grid: TileGrid, block: tuple[int, int]) -> np.ndarray:
    ny, nx = grid.grid_shape
    mask = np.zeros((-(-ny // block[0]), -(-nx // block[1])), bool)
    for r in range(ny):
        for c in range(nx):
            w = grid.tile(r, c).window
            if np.any((rows >= w.row_start) & (rows < w.row_stop) & (cols >= w.col_start) & (cols < w.col_stop)):
                mask[r // block[0], c // block[1]] = True
    return mask


@settings(max_examples=60, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 90), st.integers(1, 90)),
    tile=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    halo=st.integers(0, 30),
    block=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    seed=st.integers(0, 2**16),
    n=st.integers(0, 12),
)
def test_the_blocks_a_point_reaches_are_exactly_those_whose_tiles_windows_hold_it(
    shape: tuple[int, int], tile: tuple[int, int], halo: int, block: tuple[int, int], seed: int, n: int,
) -> None:
    rng = np.random.default_rng(seed)
    rows, cols = rng.integers(0, shape[0], n), rng.integers(0, shape[1], n)
    scene = coo_from_arrays(np.stack([rows, cols], axis=1), np.ones(n, np.float32), shape)
    grid = TileGrid(shape, tile, halo)
    np.testing.assert_array_equal(coo_block_occupancy(scene, grid, block), _brute_occupancy(rows, cols, grid, block))


def _points(seed: int = 5) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    rng = np.random.default_rng(seed)
    idx = np.array([(r, c, 0) for r, c in POINTS], np.int64)
    return idx, rng.normal(size=len(POINTS)).astype(np.float32) + 2.0, (SIDE, SIDE, 1)


def _files(path: Path, array: str) -> int:
    folder = path / array / "c"
    return sum(1 for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


@pytest.fixture(scope="module")
def huge_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("huge") / "s.zarr"
    tilepipe.ingest(_points(), path, tile_size=TILE, halo=2)
    return path


def test_a_million_tile_scene_writes_only_the_blocks_its_points_reach(huge_scene: Path) -> None:
    store = tilepipe.open_scene(huge_scene)
    assert store.info.grid.grid_shape == (1024, 1024) and store.info.block == (256, 256)
    written = store.written_blocks()
    # Blocks by hand: (5000, 7000) -> tile (312, 437) -> block (1, 1); (8191, 8191) -> tile (511, 511),
    # its halo reaches tile 512 -> blocks (1|2, 1|2); (0, 0) -> (0, 0); (16383, 1234) -> tile (1023, 77) -> (3, 0);
    # (4095, 4096) -> tile (255, 256): block (0, 1), and its halo reaches tile row 256 -> (1, 1), and col 255 -> (0, 0).
    want = {(1, 1), (1, 2), (2, 1), (2, 2), (0, 0), (3, 0), (0, 1), (1, 0)}
    assert {(int(r), int(c)) for r, c in np.argwhere(written)} == want
    assert _files(huge_scene, "nnz") == len(want) and _files(huge_scene, "entries") == len(want)
    index = store.index()
    assert index.shape == (1024, 1024)
    assert store.attrs["nnz_total"] == len(POINTS)
    # Each point counts once in its own tile's window and once per neighbour whose halo holds it.
    occupied = {(r // TILE, c // TILE) for r, c in POINTS}
    assert all(index[t] > 0 for t in occupied)
    assert int(np.count_nonzero(index)) < 40


def test_a_deleted_or_flipped_record_of_written_blocks_is_an_error(huge_scene: Path, tmp_path: Path) -> None:
    import shutil

    for fault in ("deleted block", "deleted record", "flipped record"):
        path = tmp_path / fault.replace(" ", "_")
        shutil.copytree(huge_scene, path)
        if fault == "deleted block":
            (path / "nnz" / "c" / "3" / "0").unlink()
            match = r"index block \(3, 0\) \(tile \(row 768, col 0\)\) is missing"
        elif fault == "deleted record":
            for p in (path / "written" / "c").rglob("*"):
                if p.is_file():
                    p.unlink()
            match = r"the record of written index blocks lists 0 blocks, but the store says 8"
        else:
            chunk = next(p for p in (path / "written" / "c").rglob("*") if p.is_file())
            blob = bytearray(chunk.read_bytes())
            blob[len(blob) // 2] ^= 0xFF
            chunk.write_bytes(bytes(blob))
            match = r"the record of written index blocks is corrupt \(checksum mismatch\)"
        with pytest.raises(StoreError, match=match):
            tilepipe.open_scene(path).index()


def _reference_window(model: Any, rows: slice, cols: slice, halo: int) -> np.ndarray:
    """The whole-scene model's output on ``rows, cols`` (``(band, y, x)``), from the points alone:
    the window grown by ``halo`` and clipped to the scene is all the model sees of them."""
    from helpers import predict

    r0, r1 = max(rows.start - halo, 0), min(rows.stop + halo, SIDE)
    c0, c1 = max(cols.start - halo, 0), min(cols.stop + halo, SIDE)
    crop = np.zeros((r1 - r0, c1 - c0, 1), np.float32)
    idx, values, _ = _points()
    for (r, c, _), v in zip(idx, values, strict=True):
        if r0 <= r < r1 and c0 <= c < c1:
            crop[r - r0, c - c0, 0] = v
    out = predict(model, crop[None])[0].transpose(2, 0, 1)
    return out[:, rows.start - r0 : rows.stop - r0, cols.start - c0 : cols.stop - c0]


@pytest.mark.cluster
def test_a_million_tile_run_is_exact_and_writes_in_proportion_to_the_points(
    huge_scene: Path, tmp_path: Path, dask_client: Any, assert_exact: Any,
) -> None:
    from helpers import conv, sequential

    model = sequential(1, conv(3, 3, padding="same", activation="relu"), conv(2, 3, padding="same"), seed=21)
    out = tmp_path / "r.zarr"
    report = tilepipe.run(huge_scene, model, out, client=dask_client)
    assert report.tiles_total == 1024 * 1024
    result = tilepipe.open_result(out)
    status = result.status()
    border = 4 * 1024 - 4
    busy = int(np.count_nonzero(status == 1))
    assert 0 < busy < 40 and int(np.count_nonzero(status == 2)) < border + 40
    # Files follow the points and the grid's perimeter, never its area: band chunks for the busy and
    # border tiles, and the status chunks (256 x 256 tiles) that hold one of them.
    assert _files(out, "band_1") == int(np.count_nonzero(status != 3)) < 5000
    holding = (status != 3).reshape(4, 256, 4, 256).any(axis=(1, 3))
    assert _files(out, "status") == int(holding.sum())
    stored = zarr.open_group(str(out), mode="r")
    assert int(np.asarray(stored["status_written"][...]).sum()) == _files(out, "status")
    # Exact around every point (its tile and the neighbours its footprint reaches), and on windows of
    # zeros: deep inside (free tiles), on every border and in the corners.
    windows = [(slice(max(r - 40, 0), min(r + 40, SIDE)), slice(max(c - 40, 0), min(c + 40, SIDE))) for r, c in POINTS]
    windows += [(slice(a, a + 48), slice(b, b + 48)) for a in (0, 9000, SIDE - 48) for b in (0, 9000, SIDE - 48)]
    for rows, cols in windows:
        got = result.data[0:2, rows, cols]
        assert_exact(got, _reference_window(model, rows, cols, halo=2), f"window {rows}, {cols}")


@pytest.mark.cluster
def test_a_deleted_status_chunk_is_damage_and_a_rerun_mends_it(
    huge_scene: Path, tmp_path: Path, dask_client: Any, assert_exact: Any,
) -> None:
    from helpers import conv, sequential

    model = sequential(1, conv(2, 3, padding="same"), seed=4)
    model.save(tmp_path / "m.keras")  # one file, one identity: the rerun resumes this run's store
    out = tmp_path / "r.zarr"
    tilepipe.run(huge_scene, tmp_path / "m.keras", out, client=dask_client)
    (out / "status" / "c" / "1" / "1").unlink()  # tiles rows 256-511, cols 256-511: the busy ones at (312, 437)
    with pytest.raises(StoreError, match=r"tile \(row 256, col 256\): the status chunk that records it .* is missing"):
        tilepipe.open_result(out).verify()
    report = tilepipe.run(huge_scene, tmp_path / "m.keras", out, client=dask_client)
    assert report.repaired == 256 * 256 and not report.up_to_date
    rows, cols = slice(4960, 5040), slice(6960, 7040)
    assert_exact(tilepipe.open_result(out).data[0:2, rows, cols], _reference_window(model, rows, cols, 1), "mended")


@pytest.mark.cluster
def test_a_busy_tile_whose_status_reads_free_is_computed_again(
    tmp_path: Path, dask_client: Any, assert_exact: Any,
) -> None:
    """Free is what an absent status chunk reads as: a run killed before its first status write leaves
    busy tiles reading free. The next run must compute them, not take them as done."""
    from helpers import conv, coo, patches, reference, sequential

    dense = patches((96, 96, 1), [(40, 50, 40, 50)], seed=3)
    model = sequential(1, conv(2, 3, padding="same"), seed=9)
    model.save(tmp_path / "m.keras")
    tilepipe.ingest(coo(dense), tmp_path / "s.zarr", tile_size=16, halo=1)
    out = tmp_path / "r.zarr"
    tilepipe.run(tmp_path / "s.zarr", tmp_path / "m.keras", out, client=dask_client)
    from tilepipe.store.result import ResultStore

    result = ResultStore.open(out, mode="r+")
    status = result.status()
    assert status[2, 2] == 1  # the busy tile (rows 32-47, cols 32-47)
    # As a run killed before its status write would leave it: the tile reads free, and has no chunks.
    result.set_status(np.array([2]), np.array([2]), 3)
    for band in ("band_1", "band_2"):
        (out / band / "c" / "2" / "2").unlink()
    result.mark_incomplete()
    report = tilepipe.run(tmp_path / "s.zarr", tmp_path / "m.keras", out, client=dask_client)
    assert report.computed >= 1
    assert_exact(tilepipe.open_result(out).read(), reference(model, dense), "busy tile read free")
