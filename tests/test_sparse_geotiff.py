"""Sparse GeoTIFFs (``SPARSE_OK=TRUE``): the blocks a file leaves out are never read nor scanned.

:func:`raster_block_occupancy` is checked against masks computed by hand and against a
brute-force reference built from the tile grid's own windows; ingest of a sparse file must
equal ingest of the same data written densely, and read only the occupied index blocks.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window as RioWindow

from tilepipe.geometry import Window
from tilepipe.sources import probe_stack, raster_block_occupancy, raster_tile_occupancy, read_window_entries
from tilepipe.store.info import SceneInfo

BLOCK = 256
SHAPE = (700, 1000)  # (rows, cols): 3 x 4 file blocks, the last row and column of them partial


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # plain pixel grids, on purpose
        yield


def write_sparse(path: Path, held: dict[tuple[int, int], Sequence[int] | int], *, shape: tuple[int, int] = SHAPE,
                 bands: int = 1, dtype: str = "uint16", nodata: float | None = None, interleave: str = "band",
                 block: int = BLOCK, tiled: bool = True, sparse: bool = True) -> np.ndarray:
    """A GeoTIFF whose file holds only the blocks ``held`` ``{(block_row, block_col): value or per-band values}``.

    A block's value fills every pixel of it (an int: every band; a sequence: one per band, 0
    leaving that band's block out of a band-interleaved file). Returns the scene ``(band, y, x)``
    as read back. ``sparse=False`` writes every block (the same pixels, a dense file).
    """
    dense = np.zeros((bands, *shape), dtype=dtype)
    if nodata is not None:
        dense[:] = nodata
    layout: dict[str, Any] = ({"tiled": True, "blockxsize": block, "blockysize": block} if tiled
                              else {"tiled": False, "blockysize": block})
    with rasterio.open(path, "w", driver="GTiff", width=shape[1], height=shape[0], count=bands, dtype=dtype,
                       nodata=nodata, interleave=interleave, SPARSE_OK=sparse, **layout) as dst:
        if not sparse:
            dst.write(dense)  # every block, nodata ones included
        for (i, j), value in held.items():
            values = [value] * bands if isinstance(value, int) else list(value)
            rows = slice(i * block, min((i + 1) * block, shape[0]))
            cols = slice(j * block, min((j + 1) * block, shape[1])) if tiled else slice(0, shape[1])
            window = RioWindow(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)  # type: ignore[call-arg]
            for band, v in enumerate(values, start=1):
                if v:
                    dense[band - 1, rows, cols] = v
                    dst.write(dense[band - 1, rows, cols], band, window=window)
    return dense


def scene_info(path: Path | list[Path], tile: int = 64, halo: int = 4, **probe: Any) -> tuple[Any, SceneInfo]:
    stack = probe_stack([str(p) for p in path] if isinstance(path, list) else str(path), **probe)
    return stack, SceneInfo(shape=stack.shape, bands=stack.bands, dtype=stack.dtype, tile_size=(tile, tile),
                            halo=halo)


def reference_tiles(info: SceneInfo, held: set[tuple[int, int]],
                    block: tuple[int, int] = (BLOCK, BLOCK)) -> np.ndarray:
    """The tiles whose windows (from the grid itself) meet a held file block, by brute force."""
    grid = info.grid
    rects = [Window(i * block[0], min((i + 1) * block[0], info.shape[0]),
                    j * block[1], min((j + 1) * block[1], info.shape[1])) for i, j in held]
    mask = np.zeros(grid.grid_shape, dtype=bool)
    for tile in grid:
        w = tile.window
        mask[tile.index] = any(w.row_start < h.row_stop and h.row_start < w.row_stop and w.col_start < h.col_stop
                               and h.col_start < w.col_stop for h in rects)
    return mask


def reference(info: SceneInfo, held: set[tuple[int, int]], block: tuple[int, int] = (BLOCK, BLOCK)) -> np.ndarray:
    """The index blocks holding a tile of :func:`reference_tiles`."""
    tiles = reference_tiles(info, held, block)
    by, bx = info.block
    mask = np.zeros((-(-tiles.shape[0] // by), -(-tiles.shape[1] // bx)), dtype=bool)
    for r, c in np.argwhere(tiles):
        mask[r // by, c // bx] = True
    return mask


# -- the mask -----------------------------------------------------------------------------------


def test_mask_by_hand_halo_reaches_the_next_file_block(tmp_path: Path) -> None:
    path = tmp_path / "s.tif"
    write_sparse(path, {(1, 1): 3})  # rows 256-512, cols 256-512
    # 64-px tiles, 3 x 4 tiles a block: index blocks are 192 rows x 256 cols.
    stack, info = scene_info(path, halo=0)
    assert info.block == (3, 4)
    expected = np.array([[0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(raster_block_occupancy(stack, info), expected)
    # A halo of 4 reaches from index block column 0 (cols 0-260) and 2 (508-772) into file block column 1;
    # rows 0-196 and 572-700 stay clear of rows 256-512.
    stack, info = scene_info(path, halo=4)
    expected = np.array([[0, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(raster_block_occupancy(stack, info), expected)


@pytest.mark.parametrize("held", [{(2, 3)}, {(0, 0)}, {(0, 3), (2, 0)}, set(), {(1, 2), (2, 2)}])
@pytest.mark.parametrize(("tile", "halo"), [(64, 0), (64, 4), (100, 7), (48, 60), (1000, 3)])
def test_mask_equals_the_grid_windows(tmp_path: Path, held: set[tuple[int, int]], tile: int, halo: int) -> None:
    """Partial edge blocks, index blocks that do not align with file blocks, halos wider than a block."""
    path = tmp_path / "s.tif"
    write_sparse(path, dict.fromkeys(held, 9))
    stack, info = scene_info(path, tile=tile, halo=halo)
    np.testing.assert_array_equal(raster_block_occupancy(stack, info), reference(info, held))
    np.testing.assert_array_equal(raster_tile_occupancy(stack, info), reference_tiles(info, held))


def test_mask_of_a_dense_file_is_every_block(tmp_path: Path) -> None:
    path = tmp_path / "dense.tif"
    write_sparse(path, {(1, 1): 3}, sparse=False)
    stack, info = scene_info(path)
    assert raster_block_occupancy(stack, info).all()  # type: ignore[union-attr]


def test_striped_file(tmp_path: Path) -> None:
    path = tmp_path / "striped.tif"
    write_sparse(path, {(1, 0): 5}, tiled=False, block=100)  # strips of 100 rows; rows 100-200 held
    stack, info = scene_info(path, tile=64, halo=4)
    expected = reference(info, {(1, 0)}, block=(100, SHAPE[1]))  # a strip: a block as wide as the scene
    assert expected.any() and not expected.all()
    np.testing.assert_array_equal(raster_block_occupancy(stack, info), expected)


def test_multiband_band_interleaved_counts_the_chosen_bands(tmp_path: Path) -> None:
    path = tmp_path / "bands.tif"
    write_sparse(path, {(0, 0): (4, 0), (2, 3): (0, 6)}, bands=2, interleave="band")
    stack, info = scene_info(path)
    np.testing.assert_array_equal(raster_block_occupancy(stack, info), reference(info, {(0, 0), (2, 3)}))
    stack, info = scene_info(path, bands=(1,))  # band 2's block is not read at all
    np.testing.assert_array_equal(raster_block_occupancy(stack, info), reference(info, {(0, 0)}))
    stack, info = scene_info(path, bands=(2,))
    np.testing.assert_array_equal(raster_block_occupancy(stack, info), reference(info, {(2, 3)}))


def test_multiband_pixel_interleaved(tmp_path: Path) -> None:
    path = tmp_path / "pixels.tif"
    write_sparse(path, {(0, 2): (0, 6)}, bands=3, interleave="pixel")  # one block holds every band
    stack, info = scene_info(path, bands=(1,))
    np.testing.assert_array_equal(raster_block_occupancy(stack, info), reference(info, {(0, 2)}))


def test_stack_is_the_union_of_its_rasters(tmp_path: Path) -> None:
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    write_sparse(a, {(0, 0): 1})
    write_sparse(b, {(5, 7): 2}, block=128)  # another block size: each layer's own table
    stack, info = scene_info([a, b])
    held_a = reference(info, {(0, 0)})
    held_b = reference(info, {(5, 7)}, block=(128, 128))  # rows 640-700, cols 896-1000
    np.testing.assert_array_equal(raster_block_occupancy(stack, info), held_a | held_b)


# -- when it cannot be told, or a left-out block would read as data ------------------------------


def test_left_out_blocks_read_as_absent(tmp_path: Path) -> None:
    """The premise: GDAL reads a left-out block as the file's nodata, or 0: no entry either way."""
    for nodata in (None, 7, 0):
        path = tmp_path / f"nd{nodata}.tif"
        write_sparse(path, {(1, 1): 3}, nodata=nodata)
        source = probe_stack(str(path)).layers[0]
        shape, flat, _ = read_window_entries(source, Window(0, 256, 0, 256))  # file block (0, 0): left out
        assert flat.size == 0 and shape == (256, 256, 1)
        with rasterio.open(path) as src:
            assert (src.read(1, window=RioWindow(0, 0, 4, 4)) == (nodata or 0)).all()  # type: ignore[call-arg]


def test_nodata_override_that_makes_left_out_blocks_data(tmp_path: Path) -> None:
    path = tmp_path / "nd7.tif"
    write_sparse(path, {(1, 1): 3}, nodata=7)
    stack, info = scene_info(path, nodata=9)  # left-out blocks read as 7, which is now data
    assert raster_block_occupancy(stack, info) is None
    stack, info = scene_info(path, nodata=7)  # the file's own: still absent
    np.testing.assert_array_equal(raster_block_occupancy(stack, info), reference(info, {(1, 1)}))
    plain = tmp_path / "plain.tif"
    write_sparse(plain, {(1, 1): 3})
    stack, info = scene_info(plain, nodata=9)  # no nodata in the file: left out reads as 0, absent anyway
    np.testing.assert_array_equal(raster_block_occupancy(stack, info), reference(info, {(1, 1)}))
    stack, info = scene_info([plain, path], nodata=9)  # one layer that cannot be skipped: nothing is
    assert raster_block_occupancy(stack, info) is None


def test_not_a_geotiff_cannot_tell(tmp_path: Path) -> None:
    tif = tmp_path / "s.tif"
    write_sparse(tif, {(1, 1): 3})
    vrt = tmp_path / "s.vrt"
    vrt.write_text(
        f'<VRTDataset rasterXSize="{SHAPE[1]}" rasterYSize="{SHAPE[0]}">'
        '<VRTRasterBand dataType="UInt16" band="1"><SimpleSource>'
        f'<SourceFilename relativeToVRT="1">{tif.name}</SourceFilename><SourceBand>1</SourceBand>'
        "</SimpleSource></VRTRasterBand></VRTDataset>", encoding="utf-8")
    stack, info = scene_info(vrt)
    assert raster_block_occupancy(stack, info) is None
    assert raster_tile_occupancy(stack, info) is None
    envi = tmp_path / "s.img"
    with rasterio.open(envi, "w", driver="ENVI", width=64, height=64, count=1, dtype="uint8") as dst:
        dst.write(np.ones((1, 64, 64), np.uint8))
    stack, info = scene_info(envi)
    assert raster_block_occupancy(stack, info) is None


# -- ingest -------------------------------------------------------------------------------------


def _clip(a: Window, b: Window) -> Window:
    return Window(max(a.row_start, b.row_start), min(a.row_stop, b.row_stop),
                  max(a.col_start, b.col_start), min(a.col_stop, b.col_stop))


def _tiles(store: Any) -> dict[tuple[int, int], tuple[np.ndarray, ...]]:
    ny, nx = store.info.grid.grid_shape
    out = {}
    for r in range(ny):
        for c in range(nx):
            tile = store.read_tile(r, c)
            if tile is not None:
                out[(r, c)] = tile.coords()
    return out


def write_random_sparse(path: Path, held: set[tuple[int, int]], rng: np.random.Generator, *, bands: int,
                        interleave: str, block: int, nodata: int | None, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """A sparse GeoTIFF whose held blocks hold random values, a third of them 0 and some nodata; returns
    the scene ``(band, y, x)`` as written (left-out blocks: nodata, or 0)."""
    dense = np.full((bands, *shape), nodata or 0, dtype="int16")
    with rasterio.open(path, "w", driver="GTiff", width=shape[1], height=shape[0], count=bands, dtype="int16",
                       nodata=nodata, interleave=interleave, tiled=True, blockxsize=block, blockysize=block,
                       SPARSE_OK=True) as dst:
        for i, j in held:
            rows = slice(i * block, min((i + 1) * block, shape[0]))
            cols = slice(j * block, min((j + 1) * block, shape[1]))
            part = rng.integers(-5, 6, (bands, rows.stop - rows.start, cols.stop - cols.start)).astype("int16")
            part[rng.random(part.shape) < 0.3] = 0
            dense[:, rows, cols] = part
            dst.write(part, window=RioWindow(cols.start, rows.start, cols.stop - cols.start,  # type: ignore[call-arg]
                                             rows.stop - rows.start))
    return dense


@pytest.mark.parametrize("interleave", ["band", "pixel"])
@pytest.mark.parametrize("nodata", [None, 3])
def test_held_block_reads_give_every_entry_of_the_window(tmp_path: Path, interleave: str, nodata: int | None) -> None:
    """:func:`read_held_entries` against the scene written, by numpy: windows that meet held blocks by a strip,
    a corner, across several, not at all, and whole; a stack of two files with their own blocks and block sizes."""
    from tilepipe.sources import occupancy
    from tilepipe.sources.geotiff import open_raster

    rng = np.random.default_rng(5)
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    scene_a = write_random_sparse(a, {(0, 0), (1, 2), (2, 3)}, rng, bands=2, interleave=interleave, block=256,
                                  nodata=nodata)
    scene_b = write_random_sparse(b, {(3, 1), (0, 7)}, rng, bands=1, interleave=interleave, block=128, nodata=None)
    stack = probe_stack([str(a), str(b)])
    scene = np.concatenate([scene_a, scene_b])  # (band, y, x)
    nd = np.array([nodata, nodata, None], dtype=object)
    absent = scene == 0
    for band in range(3):
        if nd[band] is not None:
            absent[band] |= scene[band] == nd[band]
    windows = [Window(250, 262, 500, 520), Window(0, 700, 0, 1000), Window(300, 400, 0, 100),
               Window(384, 520, 100, 300), Window(508, 580, 764, 836), Window(0, 40, 890, 1000)]
    for _ in range(40):
        r0, c0 = int(rng.integers(0, SHAPE[0])), int(rng.integers(0, SHAPE[1]))
        windows.append(Window(r0, int(rng.integers(r0 + 1, SHAPE[0] + 1)), c0, int(rng.integers(c0 + 1, SHAPE[1] + 1))))
    with open_raster(str(a)) as da, open_raster(str(b)) as db:
        for w in windows:
            shape, flat, values = occupancy.read_held_entries(stack, w, [da, db])
            part = np.moveaxis(scene[:, w.row_start : w.row_stop, w.col_start : w.col_stop], 0, -1)
            want = np.flatnonzero(~np.moveaxis(absent[:, w.row_start : w.row_stop, w.col_start : w.col_stop], 0, -1))
            assert shape == part.shape, w
            np.testing.assert_array_equal(flat, want, err_msg=str(w))
            np.testing.assert_array_equal(values, part.reshape(-1)[want], err_msg=str(w))
            assert values.dtype == np.dtype(stack.dtype)


def test_ingest_of_a_sparse_file_equals_the_dense_file(tmp_path: Path) -> None:
    from tilepipe.execute.ingest import ingest

    held = {(0, 0): 3, (1, 2): 11, (2, 3): 7}
    for nodata in (None, 7):
        sparse, dense = tmp_path / f"sparse{nodata}.tif", tmp_path / f"dense{nodata}.tif"
        want = write_sparse(sparse, held, nodata=nodata, bands=2)
        assert (write_sparse(dense, held, nodata=nodata, bands=2, sparse=False) == want).all()
        a = ingest(str(sparse), tmp_path / f"sparse{nodata}.zarr", tile_size=64, halo=4)
        b = ingest(str(dense), tmp_path / f"dense{nodata}.zarr", tile_size=64, halo=4)
        assert a.info == b.info
        np.testing.assert_array_equal(a.index(), b.index())
        assert a.entries_total() == b.entries_total() == int(np.count_nonzero((want != 0) & (want != (nodata or 0))))
        got, ref = _tiles(a), _tiles(b)
        assert got.keys() == ref.keys() and got
        for key in ref:
            for x, y in zip(got[key], ref[key], strict=True):
                np.testing.assert_array_equal(x, y)
        stack, info = scene_info(sparse, tile=64, halo=4)
        occupied = raster_block_occupancy(stack, info)
        assert occupied is not None and 0 < occupied.sum() < occupied.size
        np.testing.assert_array_equal(a.written_blocks(), occupied)


def test_ingest_reads_only_the_occupied_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every window ingest reads lies in an index block that meets a block the file holds; no other is read,
    and of each such window only the part inside the held block reaches GDAL."""
    from tilepipe.execute import tasks
    from tilepipe.execute.ingest import ingest
    from tilepipe.sources import occupancy

    path = tmp_path / "sparse.tif"
    write_sparse(path, {(1, 1): 3}, shape=(4096, 4096))  # 1 of 256 file blocks; 4 x 4 index blocks of 1024 px
    read: list[Window] = []
    pieces: list[Window] = []
    whole: list[Window] = []
    real, real_piece, real_whole = tasks.read_held_entries, occupancy.read_window, occupancy.read_stack_entries

    def counted(stack: Any, window: Window, datasets: Any = None) -> Any:
        read.append(window)
        return real(stack, window, datasets)

    def piece(layer: Any, window: Window, dataset: Any = None) -> Any:
        pieces.append(window)
        return real_piece(layer, window, dataset)

    def at_once(stack: Any, window: Window, datasets: Any = None) -> Any:
        whole.append(window)
        return real_whole(stack, window, datasets)

    monkeypatch.setattr(tasks, "read_held_entries", counted)  # local threads: this very module
    monkeypatch.setattr(occupancy, "read_window", piece)
    monkeypatch.setattr(occupancy, "read_stack_entries", at_once)
    store = ingest(str(path), tmp_path / "s.zarr", tile_size=64, halo=4)
    grid, (by, bx) = store.info.grid, store.info.block
    ny, nx = grid.grid_shape
    occupied = reference(store.info, {(1, 1)})  # the index blocks whose windows meet rows/cols 256-512
    # Inside that block, only the tiles whose windows meet rows and cols 256-512 are read: by hand,
    # windows [64 r - 4, 64 r + 68) meet [256, 512) for r = 3 .. 8 (tile 3: 188-260; tile 8: 508-580).
    tiles = {(r, c) for r in range(3, 9) for c in range(3, 9)}
    assert sorted(read, key=lambda w: (w.row_start, w.col_start)) == [grid.tile(r, c).window for r, c in sorted(tiles)]
    assert all(occupied[r // by, c // bx] for r, c in tiles) and (ny, nx) == (64, 64)
    # The 20 tiles on the ring (row or col 3 or 8) meet the held block by a 4-px strip: each reads only the
    # strip (tile 3's window [188, 260) reads rows [256, 260)). The 16 inside are (68 / 72)^2 held: each is
    # read whole, in one call.
    ring = {t for t in tiles if 3 in t or 8 in t}
    held = Window(256, 512, 256, 512)
    by_place = {"key": lambda w: (w.row_start, w.col_start, w.row_stop, w.col_stop)}
    assert sorted(pieces, **by_place) == sorted([_clip(grid.tile(r, c).window, held) for r, c in ring], **by_place)
    assert sorted(whole, **by_place) == sorted([grid.tile(r, c).window for r, c in tiles - ring], **by_place)
    assert Window(256, 260, 256, 260) in pieces  # tile (3, 3): the held block's corner, 4 x 4 px
    np.testing.assert_array_equal(store.written_blocks(), occupied)
    assert store.entries_total() == BLOCK * BLOCK
