"""Pixel geometry: windows, tile grids and footprints (no TensorFlow, no Zarr)."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tilepipe.geometry import (
    AxisFootprint,
    Footprint,
    Tile,
    TileGrid,
    Window,
    parse_tile_size,
    round_up,
    stride_aligned,
    tile_name,
)

# -- strategies -------------------------------------------------------------------------------------

sizes = st.integers(min_value=1, max_value=60)
halos = st.integers(min_value=0, max_value=12)


@st.composite
def grids(draw: st.DrawFn) -> TileGrid:
    shape = (draw(sizes), draw(sizes))
    # Tile sizes from 1 up to larger than the scene: dividing it or not.
    tile = (draw(st.integers(1, 70)), draw(st.integers(1, 70)))
    return TileGrid(shape, tile, draw(halos))


@st.composite
def windows_in(draw: st.DrawFn, height: int, width: int) -> Window:
    r0 = draw(st.integers(0, height))
    r1 = draw(st.integers(r0, height))
    c0 = draw(st.integers(0, width))
    c1 = draw(st.integers(c0, width))
    return Window(r0, r1, c0, c1)




@st.composite
def axis_footprints(draw: st.DrawFn) -> AxisFootprint:
    # As derived from real models: ``valid`` layers consume their shrink after the pixel
    # (after >= shrink), and the offset is at most the shrink.
    # and TF runs them on windows at least shrink + 1 long.
    shrink = draw(st.integers(0, 6))
    return AxisFootprint(
        before=draw(st.integers(0, 10)),
        after=draw(st.integers(shrink, shrink + 10)),
        shrink=shrink,
        offset=draw(st.integers(0, shrink)),
        min_length=shrink + 1,
    )

footprints = st.builds(Footprint, rows=axis_footprints(), cols=axis_footprints())


# -- Window -----------------------------------------------------------------------------------------


def test_window_properties() -> None:
    w = Window(2, 7, 3, 11)
    assert (w.height, w.width, w.shape, w.size) == (5, 8, (5, 8), 40)
    assert w.slices == (slice(2, 7), slice(3, 11))
    a = np.arange(200).reshape(10, 20)
    assert a[w.slices].shape == w.shape


def test_window_refuses_negative_extent() -> None:
    with pytest.raises(ValueError, match="stop >= start"):
        Window(5, 4, 0, 1)
    with pytest.raises(ValueError, match="stop >= start"):
        Window(0, 1, 3, 2)
    assert Window(3, 3, 4, 4).size == 0  # empty windows are allowed


def test_window_grow_clip_relative_contains() -> None:
    w = Window(2, 7, 3, 11)
    assert w.grow(1, 2, 3, 4) == Window(1, 9, 0, 15)
    assert w.grow(5, 5, 5, 5).clip(10, 12) == Window(0, 10, 0, 12)
    assert Window(-3, 4, 8, 20).clip(10, 12) == Window(0, 4, 8, 12)
    # A window entirely outside clips to an empty window at the edge, never a negative one.
    assert Window(15, 20, -9, -2).clip(10, 12).size == 0
    outer = Window(1, 9, 2, 12)
    assert w.relative_to(outer) == Window(1, 6, 1, 9)
    assert outer.contains(w)
    assert not w.contains(outer)
    with pytest.raises(ValueError, match="inside"):
        outer.relative_to(w)


def test_values_are_frozen_and_picklable() -> None:
    grid = TileGrid((10, 13), (4, 5), 2)
    tile = grid.tile(1, 2)
    fp = Footprint(AxisFootprint(1, 2, 3, 1), AxisFootprint(0, 4, 0, 0))
    for value in (Window(0, 1, 2, 3), grid, tile, fp, fp.rows):
        assert pickle.loads(pickle.dumps(value)) == value
        with pytest.raises(dataclasses.FrozenInstanceError):
            value.__setattr__(dataclasses.fields(value)[0].name, 0)
    assert isinstance(tile, Tile)
    assert tile.index == (1, 2)


@given(
    st.tuples(st.integers(-20, 20), st.integers(0, 20), st.integers(-20, 20), st.integers(0, 20)),
    st.integers(1, 30),
    st.integers(1, 30),
)
def test_clip_stays_inside_and_keeps_what_was_inside(
    corner_and_size: tuple[int, int, int, int], height: int, width: int
) -> None:
    r0, h, c0, w = corner_and_size
    win = Window(r0, r0 + h, c0, c0 + w)
    clipped = win.clip(height, width)
    assert Window(0, height, 0, width).contains(clipped)
    # Exactly the pixels of the window that lie in the raster.
    mask = np.zeros((height + 60, width + 60), bool)
    mask[r0 + 20 : r0 + h + 20, c0 + 20 : c0 + w + 20] = True
    inside = mask[20 : 20 + height, 20 : 20 + width]
    expect = np.zeros((height, width), bool)
    expect[clipped.slices] = True
    np.testing.assert_array_equal(inside, expect)


# -- parse_tile_size --------------------------------------------------------------------------------


@pytest.mark.parametrize(("given_", "expected"), [(7, (7, 7)), ((3, 9), (3, 9)), ([4, 5], (4, 5))])
def test_parse_tile_size(given_: object, expected: tuple[int, int]) -> None:
    assert parse_tile_size(given_) == expected  # type: ignore[arg-type]


def test_tiles_are_named_one_way_and_sizes_align_to_the_stride() -> None:
    assert tile_name(3, 12) == "tile (row 3, col 12)" == TileGrid((100, 200), (10, 10)).tile(3, 12).name
    assert [round_up(v, 8) for v in (0, 1, 8, 9, 16)] == [0, 8, 8, 16, 16]
    assert stride_aligned((100, 64), (8, 16)) == (104, 64)
    assert stride_aligned((7, 7), (1, 1)) == (7, 7)


@pytest.mark.parametrize("bad", [0, -1, (0, 4), (4, -2), True, 2.5, (1, 2, 3), "8", (1.0, 2)])
def test_parse_tile_size_refuses(bad: object) -> None:
    with pytest.raises(ValueError, match=r"^expected a tile size .*, got "):
        parse_tile_size(bad)  # type: ignore[arg-type]


def test_grid_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError):
        TileGrid((0, 5), (2, 2))
    with pytest.raises(ValueError):
        TileGrid((5, 5), (0, 2))
    with pytest.raises(ValueError, match="halo"):
        TileGrid((5, 5), (2, 2), -1)
    with pytest.raises(IndexError):
        TileGrid((5, 5), (2, 2)).core(3, 0)
    with pytest.raises(IndexError):
        TileGrid((5, 5), (2, 2)).core(0, -1)


# -- TileGrid ---------------------------------------------------------------------------------------


def test_grid_by_hand() -> None:
    # 10 x 13 scene, 4 x 5 tiles: 3 x 3 tiles, last row 2 rows high, last col 3 cols wide.
    grid = TileGrid((10, 13), (4, 5), halo=2)
    assert grid.grid_shape == (3, 3)
    assert grid.n_tiles == 9
    assert grid.core(0, 0) == Window(0, 4, 0, 5)
    assert grid.core(2, 2) == Window(8, 10, 10, 13)
    assert grid.tile(0, 0).window == Window(0, 6, 0, 7)
    assert grid.tile(1, 1).window == Window(2, 10, 3, 12)
    assert grid.tile(2, 2).window == Window(6, 10, 8, 13)
    assert [t.index for t in grid] == [(r, c) for r in range(3) for c in range(3)]


def test_tile_larger_than_scene_is_one_tile() -> None:
    grid = TileGrid((12, 13), (512, 512), halo=5)
    assert grid.grid_shape == (1, 1)
    (tile,) = list(grid)
    assert tile.core == tile.window == Window(0, 12, 0, 13)


@settings(max_examples=200, deadline=None)
@given(grids())
def test_cores_partition_the_scene(grid: TileGrid) -> None:
    cover = np.zeros(grid.shape, dtype=np.int32)
    tiles = list(grid)
    assert len(tiles) == grid.n_tiles == grid.grid_shape[0] * grid.grid_shape[1]
    for tile in tiles:
        cover[tile.core.slices] += 1
    np.testing.assert_array_equal(cover, 1)


@settings(max_examples=200, deadline=None)
@given(grids())
def test_windows_are_cores_grown_by_the_halo_and_clipped(grid: TileGrid) -> None:
    rows, cols = grid.shape
    h = grid.halo
    for tile in grid:
        core, win = tile.core, tile.window
        assert win == Window(
            max(core.row_start - h, 0),
            min(core.row_stop + h, rows),
            max(core.col_start - h, 0),
            min(core.col_stop + h, cols),
        )
        assert win.contains(core)
        assert Window(0, rows, 0, cols).contains(win)


@settings(max_examples=200, deadline=None)
@given(grids())
def test_edge_tiles_may_be_smaller_interior_ones_never(grid: TileGrid) -> None:
    ty, tx = grid.tile_size
    ny, nx = grid.grid_shape
    assert ny == -(-grid.shape[0] // ty) and nx == -(-grid.shape[1] // tx)
    for tile in grid:
        h, w = tile.core.shape
        assert 1 <= h <= ty and 1 <= w <= tx
        assert tile.core.row_start == tile.row * ty and tile.core.col_start == tile.col * tx
        if tile.row < ny - 1:
            assert h == ty
        else:
            assert h == grid.shape[0] - (ny - 1) * ty
        if tile.col < nx - 1:
            assert w == tx
        else:
            assert w == grid.shape[1] - (nx - 1) * tx


@settings(max_examples=100, deadline=None)
@given(st.data(), grids())
def test_tiles_touching_matches_brute_force(data: st.DataObject, grid: TileGrid) -> None:
    win = data.draw(windows_in(*grid.shape))
    rows_r, cols_r = grid.tiles_touching(win)
    got = {(r, c) for r in rows_r for c in cols_r}

    def overlaps(a: Window, b: Window) -> bool:
        return (
            max(a.row_start, b.row_start) < min(a.row_stop, b.row_stop)
            and max(a.col_start, b.col_start) < min(a.col_stop, b.col_stop)
        )

    expected = {t.index for t in grid if overlaps(t.core, win)}
    assert expected <= got
    if win.size:
        assert got == expected


# -- Footprint --------------------------------------------------------------------------------------


def test_footprint_by_hand() -> None:
    fp = Footprint(AxisFootprint(2, 5, 4, 2), AxisFootprint(1, 1, 0, 0))
    assert fp.halo == 5
    assert fp.rows.radius == 5 and fp.cols.radius == 1
    assert fp.output_shape((20, 30)) == (16, 30)
    assert fp.input_window(Window(4, 8, 10, 12), (20, 30)) == Window(2, 13, 9, 13)
    assert fp.input_window(Window(0, 3, 0, 30), (20, 30)) == Window(0, 8, 0, 30)
    assert fp.output_window(Window(2, 13, 9, 13)) == Window(2, 9, 9, 13)
    assert Footprint().halo == 0


@settings(max_examples=200, deadline=None)
@given(st.data(), footprints, sizes, sizes)
def test_input_window_contains_the_core_and_is_clipped(
    data: st.DataObject, fp: Footprint, rows: int, cols: int
) -> None:
    rows += fp.rows.shrink
    cols += fp.cols.shrink
    out_rows, out_cols = fp.output_shape((rows, cols))
    assert out_rows > 0 and out_cols > 0
    core = data.draw(windows_in(out_rows, out_cols))
    win = fp.input_window(core, (rows, cols))
    scene = Window(0, rows, 0, cols)
    assert scene.contains(win)
    assert win.contains(core)  # output pixel j sits at window-local j: the core lies inside
    # Grown by exactly the margins wherever the scene allows, clipped elsewhere
    # (and, for an empty core only, lengthened to the shortest window TF runs).
    r, c = fp.rows, fp.cols
    if core.size:
        assert win.row_start == max(core.row_start - r.before, 0)
        assert win.row_stop == min(core.row_stop + r.after, rows)
        assert win.col_start == max(core.col_start - c.before, 0)
        assert win.col_stop == min(core.col_stop + c.after, cols)
    assert win.height >= r.min_length and win.width >= c.min_length
    # The model's output on that window covers the core.
    if core.size:
        out = fp.output_window(win)
        assert out.contains(core)
