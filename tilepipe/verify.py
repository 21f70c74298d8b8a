"""A user's own check of a finished result: tiles recomputed from the scene store on big windows.

:func:`verify_result` picks tiles of a complete result store (every tile on the
border of the result's grid, or a sample of them on big grids, plus random
interior ones), recomputes each with the model from the scene store, and
compares every band with what the store holds.

Why the check is independent of the tiled run
---------------------------------------------
A run computes each tile on the smallest window its footprint allows
(:func:`tilepipe.plan.plan_jobs`, :meth:`~tilepipe.geometry.Footprint.input_window`),
cropped by :func:`tilepipe.execute.compute.compute_tiles`. None of that is used
here. The window is built from the tile's core alone: the core's position in
input pixels, grown by a margin of several halos (:data:`MIN_MARGIN` px at
least) on each side, aligned to the model's total stride and clipped to the
padded scene; the scene store is densified over it with zeros past the scene
(the zero padding of the reference); the model runs once on it; and the tile is
taken at ``core - window_start * scale``. Where the window reaches every scene
edge (the whole padded scene, used where it fits :data:`DEFAULT_MEMORY`) the
output *is* the reference: the whole-scene model on the scene zero-padded at the
bottom and right to a multiple of the stride. Elsewhere it is the reference to
within whatever reaches farther than the margin, which is several times what
the model's footprint says it needs: a footprint too small by less than that,
or any slip of the run's window or crop arithmetic, shows as a difference.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from tilepipe.errors import InputError, ModelError, StoreError
from tilepipe.geometry import Footprint, Window, round_up, tile_name
from tilepipe.location import Location
from tilepipe.model.loader import model_sha256
from tilepipe.plan import run_identity
from tilepipe.sources.identity import short_identity
from tilepipe.store.result import STATUS_COMPUTED, STATUS_EMPTY, STATUS_FREE, ResultStore
from tilepipe.store.scene import SceneStore

__all__ = [
    "DEFAULT_BORDER",
    "DEFAULT_MEMORY",
    "DEFAULT_TILES",
    "DEFAULT_TOLERANCE",
    "MIN_MARGIN",
    "TileCheck",
    "VerifyReport",
    "check_window",
    "pick_tiles",
    "verify_result",
]

#: Random interior tiles checked by default.
DEFAULT_TILES = 8
#: Border tiles checked at most by default (every one where the grid has fewer).
DEFAULT_BORDER = 32
#: Largest relative difference, max|diff| / max|reference| per tile, that passes.
DEFAULT_TOLERANCE = 1e-5
#: Bytes of activations the whole padded scene may cost to be computed in one model call.
DEFAULT_MEMORY = 512 * 2**20
#: Input pixels a check window reaches past a tile's core at least, each side.
MIN_MARGIN = 64

#: Halos (footprint radii) a check window reaches past a tile's core, each side.
_HALOS = 4
_TINY = float(np.finfo(np.float32).tiny)
_STATUS_WORDS = {STATUS_COMPUTED: "computed", STATUS_EMPTY: "empty", STATUS_FREE: "free"}


@dataclass(frozen=True, slots=True)
class TileCheck:
    """One checked tile of a result.

    Attributes
    ----------
    row, col : int
        The tile in the result's grid.
    where : str
        ``"corner"``, ``"edge"`` (touches the border of the grid) or ``"interior"``.
    status : str
        What the run recorded: ``"computed"``, ``"empty"`` or ``"free"``.
    core : Window
        The tile in output pixels.
    window : Window
        The input window the model was run on, input pixels; it may reach past
        the scene into the zero padding of a strided model's reference.
    whole : bool
        Whether ``window`` is the whole padded scene (then the recomputation is
        exactly the reference).
    max_diff : float
        Largest ``|stored - recomputed|`` over the tile's pixels and bands, in
        the result's units; ``inf`` where either holds a non-finite value the
        other does not, or the model's output does not cover the tile.
    max_ref : float
        Largest ``|recomputed|`` over the tile's pixels and bands.
    tolerance : float
        The largest :attr:`relative` difference that passes.
    note : str
        Why the check could not compare (empty when it did).
    """

    row: int
    col: int
    where: str
    status: str
    core: Window
    window: Window
    whole: bool
    max_diff: float
    max_ref: float
    tolerance: float
    note: str = ""

    @property
    def relative(self) -> float:
        """``max_diff / max(max_ref, tiny)``: the largest difference relative to the tile's values."""
        return self.max_diff / max(self.max_ref, _TINY)

    @property
    def passed(self) -> bool:
        """Whether the tile agrees with its recomputation within the tolerance."""
        return self.relative <= self.tolerance

    @property
    def name(self) -> str:
        """``"tile (row R, col C)"``, as every message names a tile (:func:`~tilepipe.geometry.tile_name`)."""
        return tile_name(self.row, self.col)

    def describe(self) -> str:
        """One line: the tile, its relative difference, the window and ok / MISMATCH."""
        w = self.window
        span = (
            "whole padded scene" if self.whole
            else f"rows {w.row_start}..{w.row_stop}, cols {w.col_start}..{w.col_stop}"
        )
        verdict = "ok" if self.passed else "MISMATCH"
        detail = f"; {self.note}" if self.note else ""
        return (
            f"{self.name:<24} {self.where:<8} {self.status:<8} relative difference {self.relative:.3g} "
            f"(max|diff| {self.max_diff:.3g}, max|ref| {self.max_ref:.3g}; model on {span}){detail}: {verdict}"
        )


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What :func:`verify_result` found.

    ``checks`` are the checked tiles in the order they were checked;
    ``tiles_total`` counts the result's tiles; ``margin`` is how far the check
    windows reach past a tile's core, in input pixels ``(rows, cols)`` (None
    where the whole padded scene was computed at once).
    """

    result: str
    scene: str
    model: str
    tolerance: float
    tiles_total: int
    margin: tuple[int, int] | None
    checks: tuple[TileCheck, ...] = field(default=())

    @property
    def failures(self) -> tuple[TileCheck, ...]:
        """The tiles that differ by more than the tolerance."""
        return tuple(c for c in self.checks if not c.passed)

    @property
    def passed(self) -> bool:
        """Whether every checked tile agrees (and at least one was checked)."""
        return bool(self.checks) and not self.failures

    @property
    def worst(self) -> TileCheck | None:
        """The checked tile with the largest relative difference."""
        return max(self.checks, key=lambda c: c.relative, default=None)

    def summary(self) -> str:
        """The pass/fail line."""
        n = len(self.checks)
        worst = self.worst
        if worst is None:
            return f"{self.result}: no tile was checked"
        if self.passed:
            return (f"{self.result}: verified: {n} of {self.tiles_total} tiles agree with the model recomputed on the "
                    f"scene within {self.tolerance:g} (worst {worst.relative:.3g}, {worst.name})")
        bad = self.failures
        named = ", ".join(f"{c.name} ({c.relative:.3g})" for c in bad[:3]) + (" ..." if len(bad) > 3 else "")
        return (f"{self.result}: verify failed: {len(bad)} of {n} checked tiles differ from the model recomputed on "
                f"the scene by more than {self.tolerance:g}: {named}; "
                "run again with --overwrite to recompute the result")


def pick_tiles(
    grid_shape: tuple[int, int], status: np.ndarray, *, tiles: int | None, seed: int, border: int = DEFAULT_BORDER
) -> list[tuple[int, int, str]]:
    """The tiles to check, ``(row, col, where)``: border tiles first, then interior ones.

    Every tile touching the border of the grid ``(rows, cols)`` is checked where
    there are at most ``border`` of them; otherwise the four corners, the tiles
    next to them (where two edges' effects meet) and random others, up to
    ``border``. Of the ``tiles`` random interior tiles, half (rounded up) are
    drawn from those the run computed (where the scene has values), the rest from
    any interior tile. ``seed`` makes the draw reproducible. ``tiles=None``:
    every tile of the grid.
    """
    ny, nx = grid_shape
    rng = np.random.default_rng(seed)
    # Vectorised over the grid: a grid of 16 million tiles is picked from in milliseconds.
    n_inner = max(ny - 2, 0) * max(nx - 2, 0)
    if tiles is None:
        tiles, border = n_inner, ny * nx
    ring = _ring(ny, nx)
    corners = {(0, 0), (0, nx - 1), (ny - 1, 0), (ny - 1, nx - 1)}
    if len(ring) > border:
        near = [t for t in ring if t in corners or any(abs(t[0] - a) + abs(t[1] - b) == 1 for a, b in corners)]
        rest = [t for t in ring if t not in near]
        take = rng.choice(len(rest), size=min(max(border - len(near), 0), len(rest)), replace=False)
        keep = set(near) | {rest[int(i)] for i in take}
        ring = [t for t in ring if t in keep]
    picked = [(r, c, "corner" if (r, c) in corners else "edge") for r, c in ring]
    inner_status = np.asarray(status)[1 : ny - 1, 1 : nx - 1]
    computed = np.flatnonzero(inner_status == STATUS_COMPUTED)  # flat indices into the interior
    first = _sample(rng, computed, min(computed.size, -(-tiles // 2)))
    left = n_inner - first.size
    k = min(tiles - first.size, left)
    if k > 0:  # draw among the interior tiles not drawn yet, without listing them
        ranks = np.sort(rng.choice(left, size=k, replace=False))
        taken = np.sort(first)
        # The rank-th index not in ``taken``: shift each rank past the taken indices below it.
        second = ranks.copy()
        for t in taken:
            second[second >= t] += 1
    else:
        second = np.empty(0, np.int64)
    chosen = np.sort(np.concatenate([first, second]).astype(np.int64))
    width = max(nx - 2, 1)
    picked.extend((int(f // width) + 1, int(f % width) + 1, "interior") for f in chosen)
    return picked


def _ring(ny: int, nx: int) -> list[tuple[int, int]]:
    """The tiles touching the grid's border, in row-major order."""
    if ny <= 2 or nx <= 2:
        return [(r, c) for r in range(ny) for c in range(nx)]
    top = [(0, c) for c in range(nx)]
    sides = [(r, c) for r in range(1, ny - 1) for c in (0, nx - 1)]
    return top + sides + [(ny - 1, c) for c in range(nx)]


def _sample(rng: np.random.Generator, items: np.ndarray, k: int) -> np.ndarray:
    if k <= 0:
        return np.empty(0, np.int64)
    return np.asarray(items)[rng.choice(len(items), size=k, replace=False)]


def check_window(core: Window, footprint: Footprint, scene_shape: tuple[int, int], margin: tuple[int, int]) -> Window:
    """The input window a tile ``core`` (output pixels) is recomputed on.

    The core's position in input pixels, grown by ``margin`` ``(rows, cols)``
    input pixels each side, aligned outwards to the model's stride, clipped to
    the padded scene (``scene_shape = (rows, cols)`` rounded up to the stride)
    and lengthened to the shortest window the model runs on.
    """
    spans = []
    for start, stop, length, axis, grow in zip(
        (core.row_start, core.col_start), (core.row_stop, core.col_stop), scene_shape,
        (footprint.rows, footprint.cols), margin, strict=True,
    ):
        step, scale = axis.step, Fraction(axis.scale)
        padded = axis.padded(length)
        a = (int(start / scale) - grow) // step * step
        b = round_up(-(-stop // scale) + grow, step)  # ceil(stop / scale) + grow, rounded up to the step
        a, b = max(a, 0), min(b, padded)
        if b - a < axis.min_length:  # both multiples of the step, as is min_length
            b = min(padded, a + axis.min_length)
            a = max(0, b - axis.min_length)
        spans.append((a, b))
    (r0, r1), (c0, c1) = spans
    return Window(r0, r1, c0, c1)


def verify_result(
    path: str | os.PathLike[str],
    *,
    tiles: int | None = DEFAULT_TILES,
    seed: int = 0,
    tolerance: float = DEFAULT_TOLERANCE,
    scene: str | os.PathLike[str] | None = None,
    model: str | os.PathLike[str] | None = None,
    border: int = DEFAULT_BORDER,
    margin: int | None = None,
    memory: int = DEFAULT_MEMORY,
    on_tile: Callable[[TileCheck], None] | None = None,
) -> VerifyReport:
    """Check tiles of a complete result store against the model recomputed on the scene store.

    Runs in this process (TensorFlow on its CPU or GPU); see the module
    docstring for how the recomputation is made independent of the tiled run.

    Parameters
    ----------
    path
        The result store.
    tiles
        Random interior tiles to check (besides the border tiles); None: every
        tile of the result.
    seed
        Seed of the random draw of tiles.
    tolerance
        Largest relative difference ``max|diff| / max|reference|`` per tile that passes.
    scene, model
        The scene store and ``.keras`` file, where they moved since the run
        (default: the paths the result's provenance records). The model must be
        the same file (sha256) and the scene store one of the same source and
        tiling.
    border
        Border tiles to check at most (every one where the grid has fewer).
    margin
        Input pixels each check window reaches past a tile's core, each side
        (rounded up to the stride), where the whole padded scene does not fit
        ``memory``. Default: four times the model's footprint radius,
        :data:`MIN_MARGIN` at least.
    memory
        Bytes of activations the whole padded scene may cost for it to be
        computed in one model call (then every tile is checked against the exact
        reference); above it, each tile gets its own window.
    on_tile
        Called with each :class:`TileCheck` as it is made (to show progress).

    Raises
    ------
    StoreError
        The result is incomplete or damaged, records no provenance, or the scene
        store is not the one the result was made from.
    ModelError
        The model file is missing or not the one the result was made with.
    InputError
        A bad argument.
    """
    if tiles is not None and tiles < 0:
        raise InputError(f"tiles: expected an integer >= 0 (or None: every tile), got {tiles}")
    if border < 0:
        raise InputError(f"border: expected an integer >= 0, got {border}")
    if not tolerance >= 0:
        raise InputError(f"tolerance: expected a number >= 0, got {tolerance}")
    result, scene_store, model_path, sha = _open_inputs(os.fspath(path), scene, model)
    # TensorFlow starts only now: a refusal above costs no model load.
    from tilepipe.model.cache import worker_model  # noqa: PLC0415 - TensorFlow only once the inputs are right
    from tilepipe.model.receptive import footprint_of  # noqa: PLC0415 - as above

    compiled = worker_model(model_path, sha)
    keras_model = compiled.model
    footprint = footprint_of(keras_model, name=model_path)
    info = scene_store.info
    expected = footprint.output_shape(info.shape)
    if result.info.shape[1:] != expected:
        raise StoreError(f"{result.path}: holds {result.info.shape[1]} x {result.info.shape[2]} pixels, but the model "
                         f"gives {expected[0]} x {expected[1]} over the scene {scene_store.path}")
    status = result.status()
    picked = pick_tiles(result.info.grid_shape, status, tiles=tiles, seed=seed, border=border)
    channels = max(compiled.max_channels, info.bands, result.info.shape[0])
    recompute = _recompute_strategy(keras_model, scene_store, footprint, result.info.shape[0], channels,
                                    memory=memory, margin=margin)
    checks = []
    th, tw = result.info.tile_size
    _, rows, cols = result.info.shape
    for row, col, where in picked:
        core = Window(row * th, min((row + 1) * th, rows), col * tw, min((col + 1) * tw, cols))
        window, out = recompute.around(core)
        max_diff, max_ref, note = _compare(result, core, window, out, footprint)
        check = TileCheck(row, col, where, _STATUS_WORDS.get(int(status[row, col]), "unknown"), core, window,
                          window == recompute.whole, max_diff, max_ref, tolerance, note)
        checks.append(check)
        if on_tile is not None:
            on_tile(check)
    return VerifyReport(result.path, scene_store.path, model_path, tolerance, int(status.size), recompute.margin,
                        tuple(checks))


@dataclass(frozen=True, slots=True)
class _WholeScene:
    """The model run once on the whole padded scene (``whole``): every tile is checked against
    the exact reference, ``out``."""

    whole: Window
    out: np.ndarray
    margin: None = None

    def around(self, core: Window) -> tuple[Window, np.ndarray]:
        """The window a tile's ``core`` is recomputed on, and the model's output there."""
        return self.whole, self.out


@dataclass(frozen=True, slots=True)
class _PerTile:
    """The model run once per tile, on the tile's :func:`check_window` grown by ``margin``
    ``(rows, cols)`` input pixels past its core."""

    model: Any
    scene: SceneStore
    footprint: Footprint
    bands: int
    whole: Window
    margin: tuple[int, int]

    def around(self, core: Window) -> tuple[Window, np.ndarray]:
        """The window a tile's ``core`` is recomputed on, and the model's output there."""
        window = check_window(core, self.footprint, self.scene.info.shape, self.margin)
        return window, _recompute(self.model, self.scene, window, self.bands)


def _recompute_strategy(model: Any, scene: SceneStore, footprint: Footprint, bands: int, channels: int, *,
                        memory: int, margin: int | None) -> _WholeScene | _PerTile:
    """How tiles are recomputed: the whole padded scene at once where its activations (``channels``
    wide) fit ``memory`` bytes, else each tile on its own window (``margin``: see :func:`verify_result`)."""
    padded = footprint.padded_shape(scene.info.shape)
    whole = Window(0, padded[0], 0, padded[1])
    if _activation_bytes(whole, footprint, channels) <= memory:
        return _WholeScene(whole, _recompute(model, scene, whole, bands))
    return _PerTile(model, scene, footprint, bands, whole, _margins(footprint, margin))


def _open_inputs(
    path: str, scene: str | os.PathLike[str] | None, model: str | os.PathLike[str] | None
) -> tuple[ResultStore, SceneStore, str, str]:
    """The result store, scene store, model path and sha256, each checked against the result's record."""
    result = ResultStore.open(path, mode="r")
    if not result.complete:
        raise StoreError(f"{result.path}: the result is incomplete (its run did not finish); "
                         "run it again to resume, then verify")
    result.verify()  # every chunk its status promises is there: what is compared below is what a reader gets
    prov = result.info.provenance
    sha = str(prov.get("model_sha256") or result.info.identity.get("model_sha256") or "")
    if not sha:
        raise StoreError(f"{result.path}: the result records no model sha256, so no model can be checked against it")
    model_path = os.fspath(model) if model is not None else str(prov.get("model_path") or "")
    if not model_path:
        raise ModelError(f"{result.path}: the result records no model file; name it with --model")
    if model is None and not os.path.isfile(model_path):
        raise ModelError(f"{model_path}: the model file the result records is not there (a model object passed "
                         "to tilepipe.run is saved only for the run); name the .keras file with --model")
    found = model_sha256(model_path)  # an unreadable file: a ModelError naming it
    if found != sha:
        raise ModelError(f"{model_path}: not the model the result was made with (sha256 {short_identity(found)}..., "
                         f"the result records {short_identity(sha)}...); name that model's file with --model")
    scene_path = os.fspath(scene) if scene is not None else str(prov.get("scene_store") or "")
    if not scene_path:
        raise StoreError(f"{result.path}: the result records no scene store; name it with --scene")
    if scene is None and not Location.of(scene_path).exists():
        raise StoreError(f"{scene_path}: the scene store the result records is not there; "
                         "name it with --scene where it moved")
    scene_store = SceneStore.open(scene_path)
    ours = run_identity(scene_store.info, sha)["scene"]
    theirs = result.info.identity.get("scene")
    if ours != theirs:
        raise StoreError(f"{scene_store.path}: not the scene store the result was made from (its source or tiling "
                         "differs from the result's record); name that store with --scene")
    return result, scene_store, model_path, sha


def _margins(footprint: Footprint, margin: int | None) -> tuple[int, int]:
    """How far check windows reach past a core, input pixels ``(rows, cols)``, multiples of the stride."""
    out = []
    for axis in (footprint.rows, footprint.cols):
        grow = max(_HALOS * axis.radius, MIN_MARGIN) if margin is None else margin
        out.append(round_up(max(grow, 0), axis.step))
    return (out[0], out[1])


def _activation_bytes(window: Window, footprint: Footprint, channels: int) -> int:
    """What one model call on ``window`` costs in activations, bytes: the input, the layer's output and
    the convolution's workspace, about four float32 tensors of the widest layer, at the finest resolution."""
    finest = max(Fraction(1), footprint.scale[0]) * max(Fraction(1), footprint.scale[1])
    return int(window.size * finest * channels * 4 * 4)


def _dense(scene: SceneStore, window: Window) -> np.ndarray:
    """The scene over ``window`` (input pixels), ``(rows, cols, bands)`` float32, zeros past the scene.

    Each value is taken from the core of the one scene tile that holds it.
    """
    info = scene.info
    out = np.zeros((*window.shape, info.bands), np.float32)
    inside = window.clip(*info.shape)
    if inside.size == 0:
        return out
    grid = info.grid
    tile_rows, tile_cols = grid.tiles_touching(inside)
    for r in tile_rows:
        for c in tile_cols:
            tile = grid.tile(r, c)
            part = _intersection(tile.core, inside)
            if part is None:
                continue
            data = scene.read_tile(r, c)
            if data is None:
                continue
            if data.shape[:2] != tile.window.shape:
                raise StoreError(f"{scene.path}: {tile.name}: expected a {tile.window.height} x {tile.window.width} "
                                 f"window, got {data.shape[0]} x {data.shape[1]}; ingest again")
            values = data.to_dense(np.float32)
            out[part.relative_to(window).slices] = values[part.relative_to(tile.window).slices]
    return out


def _intersection(a: Window, b: Window) -> Window | None:
    r0, r1 = max(a.row_start, b.row_start), min(a.row_stop, b.row_stop)
    c0, c1 = max(a.col_start, b.col_start), min(a.col_stop, b.col_stop)
    return Window(r0, r1, c0, c1) if r0 < r1 and c0 < c1 else None


def _recompute(model: Any, scene: SceneStore, window: Window, bands: int) -> np.ndarray:
    """The model on the scene densified over ``window``, one call: ``(rows, cols, bands)`` float32."""
    out = model(_dense(scene, window)[None], training=False)
    if isinstance(out, (list, tuple)):
        out = out[0]
    values = np.asarray(out)
    if values.ndim != 4 or values.shape[-1] != bands:
        raise ModelError(f"model: expected images of {bands} bands out, got an output of shape {values.shape}")
    return values[0]


def _compare(
    result: ResultStore, core: Window, window: Window, out: np.ndarray, footprint: Footprint
) -> tuple[float, float, str]:
    """``(max_diff, max_ref, note)`` of the stored ``core`` against the model's output ``out`` on ``window``."""
    stored = _read_core(result, core)
    # Output pixel j of a model run on a window starting (stride-aligned) at input pixel a is the
    # scene's output pixel j + a * scale.
    sr, sc = footprint.scale
    dr, dc = window.row_start * sr, window.col_start * sc
    local = Window(core.row_start - int(dr), core.row_stop - int(dr), core.col_start - int(dc), core.col_stop - int(dc))
    produced = Window(0, out.shape[0], 0, out.shape[1])
    if dr.denominator != 1 or dc.denominator != 1 or not produced.contains(local):
        return float("inf"), 0.0, f"the model's output on the window ({out.shape[0]} x {out.shape[1]}) misses the tile"
    ref = out[local.slices].astype(np.float64)
    got = stored.astype(np.float64)
    with np.errstate(invalid="ignore"):
        diff = np.abs(got - ref)
    same_nan = np.isnan(got) & np.isnan(ref)
    diff[same_nan] = 0.0
    max_diff = float(diff.max()) if diff.size else 0.0
    if not np.isfinite(max_diff):
        max_diff = float("inf")
    finite = np.abs(ref[np.isfinite(ref)])
    return max_diff, float(finite.max()) if finite.size else 0.0, ""


def _read_core(result: ResultStore, core: Window) -> np.ndarray:
    """The stored tile ``core``, every band, as ``(rows, cols, bands)`` float32."""
    planes = []
    for band in range(result.info.shape[0]):
        try:
            planes.append(np.asarray(result.data[band, core.row_start : core.row_stop, core.col_start : core.col_stop]))
        except Exception as exc:  # noqa: BLE001 - zarr and its codecs raise many types
            raise result.read_error(exc, band, core) from None
    return np.stack(planes, axis=-1).astype(np.float32, copy=False)
