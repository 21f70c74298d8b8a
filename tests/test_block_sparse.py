"""Block-sparse compute inside tiles: rectangles over the affected pixels, pasted on the zero response.

Every check compares with the whole-scene model (on the scene zero-padded to the total stride),
never with tilepipe; and each checks that the rectangles were really used (``sparse_tiles``), so a
test cannot pass by falling back to whole windows.
"""

from __future__ import annotations

import functools
from fractions import Fraction
from typing import Any

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from keras import layers as kl
from test_strided import padded_reference, relative_error, unet, unet_specs

from tilepipe.errors import UntileableModelError
from tilepipe.execute.compute import BLOCK, Computed, compute_tiles, empty_core
from tilepipe.geometry import AxisFootprint, Footprint, TileGrid, Window
from tilepipe.geometry.support import affected, cover, rounded
from tilepipe.model.receptive import footprint_of
from tilepipe.model.runner import CompiledModel
from tilepipe.plan import plan_jobs
from tilepipe.sources.coo import TileBuckets, coo_from_arrays
from tilepipe.store.codec import TileData

TOLERANCE = 1e-5


def tiled(model: keras.Model, dense: np.ndarray, tile: int, *, dense_fraction: float = 0.5,
          mosaic: bool | None = None, join: bool = True, tasks: int = 1) -> tuple[np.ndarray, Any]:
    """The scene through the planner and ``compute_tiles`` as a run does it: ``(output, stats of the busy tiles)``.

    ``tasks``: the busy tiles dealt round-robin to that many ``compute_tiles`` calls (a run's tasks), so
    that neighbours land in different tasks and a task must not read input that only another one holds.
    """
    fp = footprint_of(model)
    fn = CompiledModel(model)
    rows, cols, bands = dense.shape
    r, c, b = np.nonzero(dense)
    scene = coo_from_arrays(np.stack([r, c, b], axis=1), dense[r, c, b], dense.shape, name="test")
    tile = -(-tile // fp.rows.step) * fp.rows.step
    grid = TileGrid((rows, cols), (min(tile, rows), min(tile, cols)), fp.halo)
    buckets = TileBuckets(scene, grid, name="test")
    busy, data, empty = [], [], []
    for job in plan_jobs(grid, fp):
        shape, flat, vals = buckets.window_entries(grid.tile(*job.tile))
        if flat.size:
            busy.append(job)
            data.append(TileData(shape, vals, flat))
        else:
            empty.append(job)
    parts = [compute_tiles(fn, busy[k::tasks], data[k::tasks], bands, footprint=fp, scene_shape=(rows, cols),
                           batch_size=4, dense_fraction=dense_fraction, mosaic=mosaic, join=join)
             for k in range(tasks)]
    done = Computed([], *(sum(getattr(p, name) for p in parts) for name in
                          ("model_pixels", "affected_pixels", "sparse_tiles", "model_calls", "mosaic_calls")))
    out_rows, out_cols = fp.output_shape((rows, cols))
    out = np.full((out_rows, out_cols, parts[0].cores[0].shape[2] if busy else 1), np.nan, np.float32)
    for k, part in enumerate(parts):
        for job, core in zip(busy[k::tasks], part.cores, strict=True):
            out[job.out_core.slices] = core
    for job in empty:
        out[job.out_core.slices] = empty_core(fn, job, bands, fp)
    return out, done


# --------------------------------------------------------------------------- the geometry alone


def test_affected_is_the_data_dilated_by_the_footprint() -> None:
    rng = np.random.default_rng(0)
    need = Window(10, 90, 20, 100)
    mask = rng.random(need.shape) < 0.004
    r, c = np.nonzero(mask)
    mask[0, 7] = mask[40, 0] = mask[-1, 30] = mask[50, -1] = True  # at every edge of the window
    r, c = np.nonzero(mask)
    fp = Footprint(AxisFootprint(before=3, after=2), AxisFootprint(before=1, after=4))
    core = Window(10, 90, 20, 100)  # the whole window, as at a scene's borders
    got = affected(r, c, need, core, fp)
    # Output (y, x) depends on inputs y - 3 .. y + 2 and x - 1 .. x + 4: by hand, pixel by pixel.
    padded = np.zeros((need.height + 12, need.width + 12), bool)
    padded[6:-6, 6:-6] = mask
    want = np.zeros(need.shape, bool)
    for y in range(need.height):
        for x in range(need.width):
            want[y, x] = padded[6 + y - 3 : 6 + y + 3, 6 + x - 1 : 6 + x + 5].any()
    np.testing.assert_array_equal(got, want)
    inner = affected(r, c, need, Window(15, 85, 25, 95), fp)  # a core inside its window
    np.testing.assert_array_equal(inner, want[5:75, 5:75])


def test_affected_on_a_window_shorter_than_the_footprint() -> None:
    # Two rows, a footprint reaching 6 rows after a pixel: the dilation's shifts pass the window's end.
    fp = Footprint(AxisFootprint(before=0, after=6), AxisFootprint(before=0, after=0))
    got = affected(np.array([0]), np.array([1]), Window(0, 2, 0, 2), Window(0, 2, 0, 2), fp)
    np.testing.assert_array_equal(got, [[False, True], [False, False]])
    got = affected(np.array([1]), np.array([0]), Window(0, 2, 0, 2), Window(0, 2, 0, 2), fp)
    np.testing.assert_array_equal(got, [[True, False], [True, False]])


def _painted(shape: tuple[int, int], rects: list[Window]) -> np.ndarray:
    painted = np.zeros(shape, np.int32)
    for w in rects:
        painted[w.slices] += 1
    return painted


@pytest.mark.parametrize("align", [1, 8])
def test_cover_covers_every_affected_pixel_with_rounded_aligned_rectangles(align: int) -> None:
    rng = np.random.default_rng(1)
    block = 32
    for _ in range(20):
        mask = np.zeros((130, 97), bool)
        for _ in range(rng.integers(1, 6)):
            y, x = rng.integers(0, 130), rng.integers(0, 97)
            mask[y : y + rng.integers(1, 40), x : x + rng.integers(1, 3)] = True
        rects = cover(mask, block, align=align)
        for w in rects:
            assert 0 <= w.row_start < w.row_stop <= 130 and 0 <= w.col_start < w.col_stop <= 97
            assert mask[w.slices].any()  # no rectangle without a pixel to compute
            for start, size, length in ((w.row_start, w.height, 130), (w.col_start, w.width, 97)):
                # Sides rounded (few shapes), starts on the stride: except where the mask's edge cuts them.
                assert size == rounded(size, block, align) or start + size == length or start == 0
                assert start % align == 0 or start + size == length
        assert np.all(_painted(mask.shape, rects)[mask] >= 1)  # every affected pixel covered
    assert cover(np.zeros((64, 64), bool), block) == []


def test_rounded_sides_are_half_blocks_then_blocks_on_the_stride() -> None:
    sides = [1, 8, 9, 16, 17, 32, 33, 48, 49]
    assert [int(v) for v in rounded(np.array(sides), 16)] == [8, 8, 16, 16, 24, 32, 48, 48, 64]
    assert [int(v) for v in rounded(np.array([1, 9, 40]), 16, align=16)] == [16, 16, 48]


def _cost(rects: list[Window], margin: int, block: int) -> int:
    return sum((int(rounded(w.height, block)) + margin) * (int(rounded(w.width, block)) + margin) for w in rects)


def test_rectangles_cost_no_more_than_the_active_blocks_and_still_cover_everything() -> None:
    """With the window's margins counted, nearby rectangles become one box and L-shapes are cut in two:
    every affected pixel stays covered, and the windows (rectangles grown by the margins) cost no more
    than those of the active blocks alone (SBNet's cover)."""
    rng = np.random.default_rng(2)
    block = 16
    merged_any = split_any = False
    for _ in range(60):
        mask = np.zeros((256, 200), bool)
        for _ in range(rng.integers(2, 9)):
            y, x = rng.integers(0, 256), rng.integers(0, 200)
            mask[y : y + rng.integers(1, 30), x : x + rng.integers(1, 30)] = True
        margin = int(rng.choice([6, 20, 96]))
        rects = cover(mask, block, (margin, margin))
        assert np.all(_painted(mask.shape, rects)[mask] >= 1), "an affected pixel left out by a merge or a cut"
        active = mask.reshape(16, 16, 200 // 8, 8).any(axis=(1, 3))  # 16 x 8 squares: two per block column
        blocks = [Window(y * 16, y * 16 + 16, x * 8 // 16 * 16, x * 8 // 16 * 16 + 16)
                  for y, x in zip(*np.nonzero(active), strict=True)]
        blocks = list(dict.fromkeys(blocks))
        assert _cost(rects, margin, block) <= _cost(blocks, margin, block)
        merged_any |= len(rects) < len(blocks)
        split_any |= any(not mask[w.slices].all() for w in rects) and len(rects) > 1
    assert merged_any and split_any


def test_an_l_shaped_cluster_is_cut_where_its_bounding_box_would_cost_more() -> None:
    mask = np.zeros((200, 200), bool)
    mask[:40, :200] = True  # the bar of an L
    mask[40:200, :40] = True  # its leg
    rects = cover(mask, 16, (6, 6), overhead=1500)
    assert len(rects) == 2
    assert sum(w.size for w in rects) < 0.5 * 200 * 200
    assert np.all(_painted(mask.shape, rects)[mask] >= 1)


def _staircase(seed: int) -> np.ndarray:
    """Two to four overlapping blocks, each down and right of the last: a cluster that is no rectangle."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((900, 900), bool)
    y = x = 0
    for _ in range(rng.integers(2, 5)):
        h, w = rng.integers(80, 300, 2)
        mask[y : y + h, x : x + w] = True
        y, x = min(y + int(rng.integers(40, h)), 800), min(x + int(rng.integers(40, w)), 800)
    return mask


def test_wide_margins_cut_staircases_every_way_and_cost_less() -> None:
    """With a U-Net's 96-px margins a cut may pay off only through the cuts after it: cutting every way
    (on a coarse grid) beats one cut at a time on most staircases, never loses, and still covers all."""
    def windows(rects: list[Window]) -> int:
        return sum((int(rounded(w.height, 16, 8)) + 96) * (int(rounded(w.width, 16, 8)) + 96) + 1500 for w in rects)

    cheaper = 0
    for seed in range(12):
        mask = _staircase(seed)
        thorough = cover(mask, 16, (96, 96), overhead=1500, align=8)
        greedy = cover(mask, 16, (96, 96), overhead=1500, align=8, partition=False)
        assert np.all(_painted(mask.shape, thorough)[mask] >= 1), seed
        assert all(w.row_start % 8 == 0 and w.col_start % 8 == 0 for w in thorough)
        assert windows(thorough) <= windows(greedy), seed
        cheaper += windows(thorough) < windows(greedy)
    assert cheaper >= 4
    # Narrow margins (the demo model's 6 px): a cut that pays off pays at once, and the cover is as before.
    mask = _staircase(2)
    assert cover(mask, 16, (6, 6), overhead=1500, align=8) == cover(mask, 16, (6, 6), overhead=1500, align=8,
                                                                       partition=False)


# --------------------------------------------------------------------------- exact against the whole scene


@functools.lru_cache(maxsize=16)
def stride_one(bands: int, kind: str, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    x = keras.Input((None, None, bands))
    if kind == "same":
        h = kl.Conv2D(4, 3, padding="same", activation="relu", bias_initializer="ones")(x)
        h = kl.Conv2D(3, 3, padding="same", dilation_rate=2, activation="tanh", bias_initializer="ones")(h)
        y = kl.Conv2D(3, 1, bias_initializer=keras.initializers.Constant([0.1, -0.5, 0.9]))(h)
    elif kind == "valid":
        h = kl.Conv2D(4, 3, padding="valid", activation="relu")(x)
        h = kl.Conv2D(4, 5, padding="same", activation="sigmoid")(h)
        y = kl.Conv2D(2, 3, padding="valid", dilation_rate=2)(h)
    else:  # a transposed-conv decoder: its zero response repeats with the stride
        h = kl.Conv2D(3, 3, strides=2, padding="same", bias_initializer="ones", activation="relu")(x)
        h = kl.Conv2D(3, 3, padding="same", activation="tanh")(h)
        y = kl.Conv2DTranspose(2, 3, strides=2, padding="same", bias_initializer="ones")(h)
    return keras.Model(x, y)


def _reference(model: keras.Model, dense: np.ndarray) -> np.ndarray:
    fp = footprint_of(model)
    return padded_reference(model, dense, fp.rows.step, Fraction(fp.rows.scale))


@st.composite
def supports(draw: st.DrawFn, shape: tuple[int, int], tile: int, bands: int) -> np.ndarray:
    """A few single pixels, lines and blobs, placed near block edges, tile core edges, halo zones and
    scene borders (where an off-by-one in a rectangle or a class would show)."""
    rows, cols = shape
    near = sorted({v for t in range(0, max(rows, cols) + tile, tile) for v in (t - 33, t - 32, t - 31, t - 3, t - 1,
                                                                                t, t + 1, t + 3, t + 31, t + 32)})
    dense = np.zeros((rows, cols, bands), np.float32)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["pixel", "row", "col", "blob"]))
        y = min(max(draw(st.sampled_from(near)), 0), rows - 1)
        x = min(max(draw(st.sampled_from(near)), 0), cols - 1)
        length = draw(st.integers(2, 70))
        value = draw(st.floats(0.5, 3.0))
        band = draw(st.integers(0, bands - 1))
        if kind == "pixel":
            dense[y, x, band] = value
        elif kind == "row":
            dense[y, x : x + length, band] = value
        elif kind == "col":
            dense[y : y + length, x, band] = value
        else:
            dense[y : y + 5, x : x + 4, :] = value
    return dense


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["same", "valid", "transpose"]), data=st.data())
def test_supports_at_block_tile_and_scene_edges_are_exact(kind: str, data: st.DataObject) -> None:
    bands = 2
    model = stride_one(bands, kind)
    shape = data.draw(st.sampled_from([(200, 170), (256, 256), (131, 262)]))
    tile = 128
    dense = data.draw(supports(shape, tile, bands))
    ref = _reference(model, dense)
    got, _ = tiled(model, dense, tile)  # rectangles where they are cheaper, whole windows elsewhere
    assert relative_error(got, ref) <= TOLERANCE
    forced, done = tiled(model, dense, tile, dense_fraction=1e9)  # rectangles in every busy tile
    assert relative_error(forced, ref) <= TOLERANCE
    assert done.sparse_tiles >= 1  # computed by rectangles, not whole windows
    laid, _ = tiled(model, dense, tile, dense_fraction=1e9, mosaic=True)  # small free pieces side by side
    assert relative_error(laid, ref) <= TOLERANCE
    # Each tile by its own rectangles, and neighbours in different tasks (joined only within a task).
    apart, _ = tiled(model, dense, tile, dense_fraction=1e9, join=False)
    assert relative_error(apart, ref) <= TOLERANCE
    split, _ = tiled(model, dense, tile, dense_fraction=1e9, tasks=2)
    assert relative_error(split, ref) <= TOLERANCE


def test_one_detection_costs_a_small_window_not_a_tile_and_its_neighbours() -> None:
    model = stride_one(2, "same")
    dense = np.zeros((512, 512, 2), np.float32)
    dense[255, 256, 1] = 2.0  # on the corner of four tiles: all four busy
    got, done = tiled(model, dense, 256)
    assert relative_error(got, _reference(model, dense)) <= TOLERANCE
    assert done.sparse_tiles == 4
    assert done.affected_pixels == 7 * 7  # a 3x3 (radius 1), a 3x3 dilated by 2 (radius 2), a 1x1: radius 3
    # The four tiles' 7 x 7 affected pixels covered together: one rectangle, its sides rounded up to half
    # a block, grown by the footprint's 3 px each side; not four 262 x 262 windows.
    assert done.model_pixels == (int(rounded(7, BLOCK)) + 6) ** 2
    assert done.model_calls == 1
    # Each tile by its own rectangles: at most 4 x 4 affected pixels each, four small windows.
    apart, each = tiled(model, dense, 256, join=False)
    assert relative_error(apart, _reference(model, dense)) <= TOLERANCE
    assert each.model_pixels == 4 * (int(rounded(4, BLOCK)) + 6) ** 2


def test_whole_windows_where_rectangles_would_cost_more() -> None:
    model = stride_one(1, "same")
    rng = np.random.default_rng(3)
    dense = (rng.random((256, 256, 1)) < 0.3).astype(np.float32)
    got, done = tiled(model, dense, 128)
    assert relative_error(got, _reference(model, dense)) <= TOLERANCE
    assert done.sparse_tiles == 0
    sparse_only, forced = tiled(model, dense, 128, dense_fraction=1e9)  # rectangles even where dear
    assert relative_error(sparse_only, _reference(model, dense)) <= TOLERANCE
    assert forced.sparse_tiles == 4


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=unet_specs(), seed=st.integers(0, 2**16), data=st.data())
def test_random_unets_are_exact_by_rectangles(spec: dict[str, Any], seed: int, data: st.DataObject) -> None:
    model = unet(spec, 1, seed)
    try:
        fp = footprint_of(model)
    except UntileableModelError:
        reject()  # skips that cannot line up: test_strided checks the refusal
    step = fp.rows.step
    shape = data.draw(st.sampled_from([(8 * step + 5, 10 * step), (12 * step, 9 * step + 3)]))
    tile = data.draw(st.sampled_from([4 * step, 6 * step]))
    dense = np.zeros((*shape, 1), np.float32)
    y = data.draw(st.integers(0, shape[0] - 1))
    x = data.draw(st.integers(0, shape[1] - 1))
    dense[y, x, 0] = 1.5
    dense[max(y - 7, 0) : y + 1, x, 0] = -0.75
    dense[min(y + 9, shape[0] - 1), max(x - 11, 0), 0] = 0.5  # another small piece, perhaps in another tile
    ref = _reference(model, dense)
    got, done = tiled(model, dense, tile, dense_fraction=1e9)
    assert relative_error(got, ref) <= TOLERANCE, (spec, shape, tile, y, x)
    assert done.sparse_tiles >= 1
    laid, _ = tiled(model, dense, tile, dense_fraction=1e9, mosaic=True)
    assert relative_error(laid, ref) <= TOLERANCE, (spec, shape, tile, y, x)
    apart, _ = tiled(model, dense, tile, dense_fraction=1e9, join=False)
    assert relative_error(apart, ref) <= TOLERANCE, (spec, shape, tile, y, x)


def test_the_unet_bench_footprint_is_exact_by_rectangles() -> None:
    from tilepipe.demo import build_unet_model

    model = build_unet_model(bands=2)
    dense = np.zeros((600, 520, 2), np.float32)
    dense[300:303, 100:400, 0] = 1.0  # a road across tiles
    dense[40, 500, 1] = 2.0
    ref = _reference(model, dense)
    got, done = tiled(model, dense, 256, dense_fraction=1e9)  # rectangles in every busy tile
    assert relative_error(got, ref) <= TOLERANCE
    assert done.sparse_tiles >= 3
    # The road's tiles covered together cost fewer pixels than each by its own rectangles (the
    # windows of a cut road each pay the footprint's margins at the cut), and are as exact.
    apart, each = tiled(model, dense, 256, dense_fraction=1e9, join=False)
    assert relative_error(apart, ref) <= TOLERANCE
    assert done.model_pixels < each.model_pixels
    # In tasks that hold one of two neighbours each, none reads input only the other one holds.
    split, _ = tiled(model, dense, 256, dense_fraction=1e9, tasks=2)
    assert relative_error(split, ref) <= TOLERANCE


@pytest.mark.parametrize("kind", ["same", "valid", "transpose", "unet"])
def test_small_pieces_laid_side_by_side_are_exact(kind: str) -> None:
    """Scattered points and short lines inside the scene: their pieces are free, and go through the model
    laid side by side in a few calls (mosaics), each at a multiple of the stride."""
    from tilepipe.demo import build_unet_model

    model = build_unet_model(bands=2) if kind == "unet" else stride_one(2, kind)
    rng = np.random.default_rng(11)
    rows, cols, tile = (1400, 1344, 640) if kind == "unet" else (700, 640, 320)  # the U-Net's halo is 92 px
    dense = np.zeros((rows, cols, 2), np.float32)
    for _ in range(40):
        y, x = int(rng.integers(0, rows)), int(rng.integers(0, cols))
        dense[y : y + int(rng.integers(1, 4)), x : x + int(rng.integers(1, 30)), int(rng.integers(0, 2))] = 1.25
    ref = _reference(model, dense)
    got, done = tiled(model, dense, tile, dense_fraction=1e9, mosaic=True)
    assert relative_error(got, ref) <= TOLERANCE
    assert 1 <= done.mosaic_calls < done.model_calls  # some pieces laid together, the clipped ones alone
    assert done.model_calls < 40  # not one call per piece


@pytest.mark.parametrize("kind", ["same", "transpose"])
def test_multiband_zero_responses_differ_and_stay_exact(kind: str) -> None:
    model = stride_one(3, kind)
    dense = np.zeros((160, 160, 3), np.float32)
    dense[64, 64, 2] = 1.0
    got, done = tiled(model, dense, 64)
    ref = _reference(model, dense)
    assert relative_error(got, ref) <= TOLERANCE
    assert len({float(v) for v in ref[150, 20]}) == ref.shape[2]  # the bands' zero responses differ
    assert done.sparse_tiles >= 1
