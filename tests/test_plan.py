"""The run plan, driven directly: no store, no cluster, no TensorFlow.

References are worked out here by brute force over pixels (which output pixels a
tile owns, which input pixels it needs, which scene edges its window touches),
never by tilepipe's own geometry.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tilepipe.errors import InputError, StoreError
from tilepipe.geometry import AxisFootprint, Footprint
from tilepipe.model.facts import ModelFacts
from tilepipe.plan import (
    EMPTY_BATCH,
    JOIN_MARGIN,
    JOIN_MAX,
    batches,
    plan_jobs,
    plan_result,
    plan_run,
    shifted,
    touches_border,
)
from tilepipe.store.result import STATUS_COMPUTED, STATUS_EMPTY, STATUS_NOT_DONE
from tilepipe.store.scene import SceneInfo


def _facts(
    before: int, after: int, shrink: int = 0, offset: int = 0, interior: tuple[float, ...] = (0.5,)
) -> ModelFacts:
    axis = AxisFootprint(before, after, shrink, offset, min_length=shrink + 1)
    return ModelFacts("0" * 64, Footprint(axis, axis), 1, 4, interior)


def _scene_info(shape: tuple[int, int], tile: int, halo: int) -> SceneInfo:
    """What a one-band scene store would say about itself: planning reads nothing else."""
    return SceneInfo(shape=shape, bands=1, dtype="float32", tile_size=(tile, tile), halo=halo,
                     transform=(10.0, 0.0, 1000.0, 0.0, -10.0, 5000.0), source={"path": "x.tif"})


@st.composite
def plans(draw: st.DrawFn) -> tuple[SceneInfo, ModelFacts, np.ndarray]:
    # As real models give: 'valid' layers' shrink is part of what they need after a pixel.
    before = draw(st.integers(0, 4))
    shrink = draw(st.integers(0, 3))
    after = shrink + draw(st.integers(0, 4))
    rows, cols = draw(st.integers(shrink + 1, 60)), draw(st.integers(shrink + 1, 60))
    tile = draw(st.integers(1, 25))
    halo = max(before, after) + draw(st.integers(0, 2))
    scene = _scene_info((rows, cols), tile, halo)
    ny, nx = scene.grid.grid_shape
    nnz = np.asarray(draw(st.lists(st.integers(0, 1), min_size=ny * nx, max_size=ny * nx)), np.int64).reshape(ny, nx)
    return scene, _facts(before, after, shrink, offset=before if shrink else 0), nnz


@settings(max_examples=150, deadline=None)
@given(plans())
def test_every_output_pixel_is_owned_once_and_computed_from_a_window_that_holds_its_footprint(
    case: tuple[SceneInfo, ModelFacts, np.ndarray],
) -> None:
    scene, facts, nnz = case
    fp = facts.footprint
    out_rows, out_cols = scene.shape[0] - fp.rows.shrink, scene.shape[1] - fp.cols.shrink
    owner = np.zeros((out_rows, out_cols), np.int32)
    for job in plan_jobs(scene.grid, fp, nnz):
        owner[job.out_core.slices] += 1
        # Every input pixel an output pixel depends on (before/after, clipped to the scene) is in the window.
        r0, r1 = job.out_core.row_start - fp.rows.before, job.out_core.row_stop + fp.rows.after
        c0, c1 = job.out_core.col_start - fp.cols.before, job.out_core.col_stop + fp.cols.after
        assert job.need.row_start == max(r0, 0) and job.need.row_stop == min(r1, scene.shape[0])
        assert job.need.col_start == max(c0, 0) and job.need.col_stop == min(c1, scene.shape[1])
        assert job.stored.contains(job.need)
        assert job.empty == (nnz[job.row, job.col] == 0)
        core = job.core_in_output
        assert core.row_start == job.out_core.row_start - job.need.row_start
        assert core.col_stop - core.col_start == job.out_core.col_stop - job.out_core.col_start
        edge = (job.need.row_start == 0 or job.need.col_start == 0
                or job.need.row_stop == scene.shape[0] or job.need.col_stop == scene.shape[1])
        assert touches_border(job, scene.shape) == edge
    np.testing.assert_array_equal(owner, 1)


@settings(max_examples=150, deadline=None)
@given(plans(), st.integers(1, 12), st.integers(1, 4), st.data())
def test_plan_run_partitions_the_tiles(
    case: tuple[SceneInfo, ModelFacts, np.ndarray], size: int, workers: int, data: st.DataObject
) -> None:
    scene, facts, nnz = case
    fp = facts.footprint
    _, fills = plan_result(scene, facts)
    jobs = plan_jobs(scene.grid, facts.footprint, nnz)
    status = np.zeros((-(-(scene.shape[0] - facts.footprint.rows.shrink) // scene.tile_size[0]),
                       -(-(scene.shape[1] - facts.footprint.cols.shrink) // scene.tile_size[1])), np.uint8)
    done = data.draw(st.sets(st.sampled_from([(j.row, j.col) for j in jobs]))) if jobs else set()
    for r, c in done:
        status[r, c] = data.draw(st.sampled_from([STATUS_COMPUTED, STATUS_EMPTY]))
    plan = plan_run(scene, facts, nnz, status=status, fill_values=fills, batch_size=size, workers=workers)
    tasked = [(j.row, j.col) for batch in plan.tasks for j in batch]
    free = [(int(r), int(c)) for r, c in np.argwhere(plan.free)]
    # Every tile not done is either free or in exactly one task; done tiles are in neither.
    assert sorted(tasked + free) == sorted((j.row, j.col) for j in jobs if (j.row, j.col) not in done)
    assert len(set(tasked)) == len(tasked)
    assert plan.total == len(jobs) and plan.already_done == len(done) and plan.todo == len(tasked)
    # Free tiles are empty and away from every scene border (the interior response is the fill value).
    by_tile = {(j.row, j.col): j for j in jobs}
    for tile in free:
        assert by_tile[tile].empty and not touches_border(by_tile[tile], scene.shape)
    # A task holds empty tiles of one window shape, or busy tiles: at most `size` (fewer to spread them)
    # of one shape (these small footprints: the demo model's kind, see joins_pay).
    assert max(fp.rows.before + fp.rows.after, fp.cols.before + fp.cols.after) < JOIN_MARGIN
    for batch in plan.tasks:
        assert len({(j.empty, j.need.shape) for j in batch}) == 1
        assert len(batch) <= (EMPTY_BATCH if batch[0].empty else size)
    # Joined (a model whose windows add wide margins): the same tiles, each in one task, and touching busy
    # tiles of a group of at most JOIN_MAX in one task, covered together across their edges.
    listed = [j for batch in plan.tasks for j in batch]
    joined = batches(listed, size, workers, join=True)
    assert sorted((j.row, j.col) for batch in joined for j in batch) == sorted((j.row, j.col) for j in listed)
    task_of = {}
    for k, batch in enumerate(joined):
        assert len({j.empty for j in batch}) == 1
        if batch[0].empty:
            assert len({j.need.shape for j in batch}) == 1 and len(batch) <= EMPTY_BATCH
        else:
            assert len(batch) <= max(size, JOIN_MAX)
        task_of.update({(j.row, j.col): k for j in batch})
    for group in _touching_groups({(j.row, j.col) for j in listed if not j.empty}):
        if len(group) <= JOIN_MAX:
            assert len({task_of[t] for t in group}) == 1, group
    classes = {j.empty_class for batch in plan.tasks for j in batch if j.empty}
    assert plan.empty_classes == classes


def _touching_groups(tiles: set[tuple[int, int]]) -> list[set[tuple[int, int]]]:
    """``tiles`` in groups that touch by an edge or a corner (a union-find, by hand)."""
    parent = {t: t for t in tiles}

    def root(t: tuple[int, int]) -> tuple[int, int]:
        while parent[t] != t:
            t = parent[t]
        return t

    for r, c in tiles:
        for other in ((r + dr, c + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)):
            if other in parent:
                parent[root(other)] = root((r, c))
    groups: dict[tuple[int, int], set[tuple[int, int]]] = {}
    for t in tiles:
        groups.setdefault(root(t), set()).add(t)
    return list(groups.values())


def _interior_tiles(shape: tuple[int, int], tile: int, reach: int) -> set[tuple[int, int]]:
    """Tiles whose window (core grown by ``reach`` px) stays off every scene edge, by brute force."""
    rows, cols = shape
    return {(r, c) for r in range(-(-rows // tile)) for c in range(-(-cols // tile))
            if r * tile - reach > 0 and c * tile - reach > 0
            and min((r + 1) * tile, rows) + reach < rows and min((c + 1) * tile, cols) + reach < cols}


def test_empty_interior_tiles_are_free_in_every_band_each_with_its_own_fill_value() -> None:
    scene = _scene_info((40, 50), 10, 2)
    nnz = np.zeros((4, 5), np.int64)
    nnz[2, 3] = 1  # one busy tile: never free
    interior = _interior_tiles((40, 50), 10, 1) - {(2, 3)}
    assert interior == {(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)}
    three = _facts(1, 1, interior=(0.5, 0.7, -1.25))
    _, fills = plan_result(scene, three)
    assert fills == (0.5, np.float32(0.7), -1.25)  # each band's own response, as float32
    plan = plan_run(scene, three, nnz, fill_values=fills, batch_size=8, workers=2)
    assert {(int(r), int(c)) for r, c in np.argwhere(plan.free)} == interior
    assert plan.todo == 20 - len(interior)


def test_no_free_tiles_where_a_band_does_not_respond_with_its_own_fill_value() -> None:
    scene = _scene_info((40, 40), 10, 2)
    nnz = np.zeros((4, 4), np.int64)
    facts = _facts(1, 1, interior=(0.5, 0.7))
    # A format 2 store being resumed holds band 0's fill value for every band.
    legacy = plan_run(scene, facts, nnz, fill_values=(0.5, 0.5), batch_size=8, workers=2)
    assert legacy.free_count == 0 and legacy.todo == 16
    # A response that repeats with a stride (transposed convolutions) is no single fill value.
    periodic = ModelFacts("0" * 64, facts.footprint, 1, 4, (0.5, 0.7), interior_uniform=False)
    assert plan_run(scene, periodic, nnz, fill_values=(0.5, 0.7), batch_size=8, workers=2).free_count == 0
    same = plan_run(scene, facts, nnz, fill_values=(0.5, 0.7), batch_size=8, workers=2)
    assert {(int(r), int(c)) for r, c in np.argwhere(same.free)} == _interior_tiles((40, 40), 10, 1) \
        == {(1, 1), (1, 2), (2, 1), (2, 2)}


def test_busy_tiles_spread_over_workers() -> None:
    scene = _scene_info((80, 80), 10, 1)
    nnz = np.ones((8, 8), np.int64)
    plan = plan_run(scene, _facts(1, 1), nnz, fill_values=(0.5,), batch_size=32, workers=2)
    # 64 busy tiles of 3 window shapes at most 16 a task: at least 4 tasks, about two per worker.
    assert max(len(b) for b in plan.tasks) <= 16
    assert len(batches([], 8, 2)) == 0


def test_plan_result_shape_transform_fill_and_identity() -> None:
    scene = _scene_info((50, 40), 16, 4)
    facts = _facts(2, 4, shrink=4, offset=2, interior=(0.25, 0.75))
    info, fills = plan_result(scene, facts)
    assert info.shape == (2, 46, 36)
    # 'valid' layers move the output by `offset` pixels: by hand, 1000 + 10 * 2 and 5000 - 10 * 2.
    assert info.transform == (10.0, 0.0, 1020.0, 0.0, -10.0, 4980.0)
    assert fills == (0.25, 0.75)
    assert info.grid_shape == (3, 3)
    assert info.identity == {"scene": {"path": "x.tif", "tile_size": [16, 16], "halo": 4}, "model_sha256": "0" * 64}
    assert shifted((2.0, 0.5, 0.0, 0.25, -2.0, 0.0), 3, 4) == (2.0, 0.5, 8.0, 0.25, -2.0, -7.25)


def test_plan_refuses_too_little_halo_and_too_small_scenes() -> None:
    with pytest.raises(StoreError, match="needs a halo of 3 px but the store holds 2"):
        plan_result(_scene_info((50, 50), 16, 2), _facts(3, 3), scene_name="s.zarr")
    with pytest.raises(InputError, match="smaller than the model's footprint"):
        plan_result(_scene_info((3, 30), 16, 4), _facts(2, 4, shrink=4), scene_name="s.zarr")


def test_resume_skips_done_tiles_only() -> None:
    scene = _scene_info((30, 30), 10, 1)
    nnz = np.ones((3, 3), np.int64)
    status = np.full((3, 3), STATUS_COMPUTED, np.uint8)
    status[1, 2] = STATUS_NOT_DONE
    plan = plan_run(scene, _facts(1, 1), nnz, status=status, fill_values=(0.5,), batch_size=8, workers=1)
    assert [(j.row, j.col) for b in plan.tasks for j in b] == [(1, 2)]
    assert plan.already_done == 8


def test_plan_imports_no_tensorflow_dask_or_zarr_io() -> None:
    # The plan module is pure: importing it loads no store I/O (zarr), no raster I/O, no TensorFlow, no Dask.
    import subprocess

    heavy = ("zarr", "rasterio", "tensorflow", "keras", "distributed", "dask")
    code = f"import sys, tilepipe.plan; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
