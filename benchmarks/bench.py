#!/usr/bin/env python
"""tilepipe against the obvious alternatives, side by side, on the same scene and model.

For each occupancy (fraction of tiles holding values) one synthetic clustered scene
(``--scene lines``: one scene of thin polylines across every tile) is generated and run through:

(a) naive        ``tf.SparseTensor`` of the whole scene -> ``tf.sparse.to_dense`` -> model,
                 in a subprocess (its memory is measurable, an OOM cannot kill the harness);
                 for a strided model (``--model unet``) the scene is padded with zeros at the
                 bottom/right to a multiple of the total stride S first and the output cropped:
                 the reference tilepipe must equal
(b) map_overlap  ``dask.array.from_zarr(dense scene).map_overlap(model, depth=halo,
                 boundary="none")`` -> ``to_zarr``, on the same cluster kind as (c), warm
                 (strided model: scene padded to a multiple of S, depth rounded up to one)
(c) tilepipe     ``tilepipe.run`` on an ingested scene store, warm workers
(c') tilepipe CLI ``tilepipe run WORKFLOW.yaml`` from process start (ingest + run + GeoTIFF)
(d) floor        the sum of pure compiled-model call times over the non-empty tiles
(d'') support floor  the same over only the pieces tilepipe's block-sparse compute runs
                 (rectangles over the affected pixels, or whole windows where cheaper)

and the ratios naive/tilepipe, map_overlap/tilepipe and (tilepipe - floor)/floor, and the
pixels tilepipe ran the model on against the affected pixels (its run report), are
written to ``results/bench-<size>.json`` and ``results/bench-<size>.md`` (``--model unet``:
``bench-<size>-unet.*``; ``--scene lines``: ``...-lines.*``; ``--tag T``: ``...-T.*``).
The outputs of (a), (b) and (c) are compared (max |x - ref| / max |ref|); a difference
over 1e-5 is reported and makes the exit status 1.

    python benchmarks/bench.py --quick
    python benchmarks/bench.py --size 8192 --occupancy 0.01,0.05,0.25,1.0 --workers 2
    python benchmarks/bench.py --model unet --size 8192 --occupancy 0.01,0.05,1.0 --workers 2
    python benchmarks/bench.py --scene lines --skip-cli
    python benchmarks/bench.py --count-only --scene lines   # model / affected pixels, pieces, calls; no timing

See benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import benchlib  # noqa: E402
from benchlib import GB, RssSampler, fmt, markdown_table  # noqa: E402

# The performance bars the project holds itself to (DESIGN.md, "How good it must be")
TARGET_SPARSE_VS_NAIVE = 100.0
TARGET_SPARSE_VS_MAPOVERLAP = 10.0
TARGET_DENSE_VS_MAPOVERLAP = 1.2
TARGET_OVERHEAD = 0.25
TARGET_MODEL_OVER_AFFECTED = 2.0
SPARSE_MAX_OCCUPANCY = 0.05
# Outputs of (a), (b) and (c) must agree to this (max |x - ref| / max |ref|, DESIGN's exactness bar)
AGREEMENT_TOLERANCE = 1e-5
PROFILE_SECONDS = 4.0  # --profile: repeat the warm run under py-spy until this much wall time is sampled


# =========================================================================== children


def _child_tf(threads: int) -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
    return tf


def _maxrss() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def child_naive(spec: dict[str, Any]) -> dict[str, Any]:
    """Whole-scene SparseTensor -> to_dense -> model (what most people try first).

    A strided model runs on the scene padded with zeros at the bottom/right to a
    multiple of its total stride (``spec["step"]``), and its output is cropped back:
    the reference a tiled run must equal. After the timed part, the output's first
    channel is written to ``spec["out"]`` (Zarr, ``(rows, cols)``) for the harness to compare.
    """
    tf = _child_tf(spec["threads"])
    import keras

    size, bands, tile, step = spec["size"], spec["bands"], spec["tile"], spec.get("step", 1)
    coo = benchlib.make_scene(spec.get("scene", "clusters"), size, bands, spec["occupancy"], tile, spec["seed"])
    padded = _round_up(size, step)
    model = keras.saving.load_model(spec["model"], safe_mode=True)
    model(np.zeros((1, 16, 16, bands), np.float32), training=False)  # runtime up, weights built
    t0 = time.perf_counter()
    # The synthetic COO is already in row-major order, so no tf.sparse.reorder (which would only add time).
    # The zero padding is only a larger dense_shape: the padded pixels hold no value.
    st = tf.SparseTensor(indices=np.stack([coo.rows, coo.cols, coo.bands], axis=1), values=coo.values,
                         dense_shape=(padded, padded, bands))
    dense = tf.sparse.to_dense(st)
    t1 = time.perf_counter()
    out = model(dense[None], training=False)[0, :size, :size, 0]
    checksum = float(tf.reduce_sum(out))
    t2 = time.perf_counter()
    del dense
    answer = {"wall_seconds": t2 - t0, "densify_seconds": t1 - t0, "model_seconds": t2 - t1,
              "checksum": checksum, "padded_size": padded, "child_max_rss": _maxrss()}
    if spec.get("out"):
        import zarr

        arr = zarr.create_array(spec["out"], shape=(size, size), chunks=(tile, tile), dtype="float32",
                                fill_value=0.0, overwrite=True)
        arr[:, :] = np.asarray(out)
    return answer


def child_model(spec: dict[str, Any]) -> dict[str, Any]:
    """Build and save the model (``spec["name"]``: demo or unet); the facts the harness needs without TensorFlow.

    ``halo`` and ``step`` (total stride) from tilepipe's footprint; ``floats_per_pixel``:
    the input's bands plus every layer's output values per input pixel (channels x
    its scale squared), measured on a zero input. Keras keeps every intermediate of a
    functional model alive until the call returns, so this is what a whole-scene call holds.
    """
    import keras

    from tilepipe.demo import BUILDERS
    from tilepipe.model import footprint_of

    bands = spec["bands"]
    model = BUILDERS[spec.get("name", "demo")](bands)
    model.save(spec["model"])
    fp = footprint_of(model)
    probe = 64
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    taps = keras.Model(model.inputs, [layer.output for layer in layers])
    outs = taps(np.zeros((1, probe, probe, bands), np.float32), training=False)
    floats = bands + sum(int(np.prod(o.shape[1:])) for o in outs) / probe**2
    return {"halo": int(fp.halo), "step": int(max(fp.step)), "floats_per_pixel": float(floats),
            "widths": [int(layer.output.shape[-1]) for layer in layers]}


def _timed_calls(compiled: Any, inputs: list[np.ndarray], passes: int) -> float:
    """Sum over ``inputs`` (each ``(n, rows, cols, bands)``) of its best of ``passes`` model calls, warm:
    one untimed call per input shape first (tracing, oneDNN kernels)."""
    for shape in {x.shape for x in inputs}:
        compiled(np.zeros(shape, np.float32))
    best = [float("inf")] * len(inputs)
    for _ in range(passes):
        for i, x in enumerate(inputs):
            t0 = time.perf_counter()
            compiled(x)
            best[i] = min(best[i], time.perf_counter() - t0)
    return float(sum(best))


def _batches(groups: dict[tuple[int, ...], list[np.ndarray]], batch: int) -> list[np.ndarray]:
    """Same-shaped inputs stacked ``batch`` at a time, as tilepipe groups them."""
    return [np.stack(ws[i : i + batch]) for ws in groups.values() for i in range(0, len(ws), batch)]


def _support_floor(compiled: Any, jobs: list[Any], tiles: list[Any], windows: list[np.ndarray], footprint: Any,
                   scene_shape: tuple[int, int], batch: int, passes: int) -> dict[str, Any]:
    """The model on only the pieces tilepipe's block-sparse compute runs (``compute.plan_pieces``, as
    ``compute_tiles`` calls it): each busy tile's rectangles over its affected pixels, or its whole
    window where that is cheaper. Pieces grouped into calls as ``plan_pieces`` groups them (by window
    shape, up to ``batch`` pieces a call), across all tiles."""
    try:
        from tilepipe.execute import compute
        plan = compute.plan_pieces(jobs, tiles, footprint=footprint, scene_shape=scene_shape, batch_size=batch,
                                   dense_fraction=compute.DENSE_FRACTION)
        block = compute._steps(footprint)[0]
    except (ImportError, AttributeError) as exc:  # a tilepipe from before plan_pieces
        return {"error": f"not in this tilepipe ({type(exc).__name__}: {exc})"}
    if hasattr(compute, "_gathered"):  # pieces may reach across tile edges: densified as tilepipe does
        coords = [None if t.is_dense else t.coords() for t in tiles]
        batches = [np.asarray(compute._batch(call, jobs, tiles, coords, windows[0].shape[-1]))
                   for call in plan.calls]
    else:  # a piece's window lies inside its tile's (``need``)
        batches = [call.stack([windows[p.tile][p.window.relative_to(jobs[p.tile].need).slices]
                               for p in call.pieces]) for call in plan.calls]
    # A floor is the model's time, not a trace cache's: CompiledModel keeps MAX_TRACES traced shapes
    # (least recently used dropped), and cycling through more shapes than that re-traces every call.
    from tilepipe.model import runner

    shapes = len({b.shape for b in batches})
    runner.MAX_TRACES = max(runner.MAX_TRACES, shapes)
    return {"wall_seconds": _timed_calls(compiled, batches, passes), "pieces": plan.pieces, "batches": len(batches),
            "window_shapes": plan.window_shapes, "batch_shapes": shapes, "sparse_tiles": len(plan.sparse),
            "model_pixels": plan.model_pixels, "affected_pixels": plan.affected_pixels, "block": block}


def child_floor(spec: dict[str, Any]) -> dict[str, Any]:
    """Sum of compiled-model call times over the non-empty tiles' windows (warm, per shape).

    With ``spec["support"]``, also the support floor: the model on only the pieces
    tilepipe's block-sparse compute runs (see :func:`_support_floor`).
    """
    _child_tf(spec["threads"])
    from tilepipe.model import CompiledModel, footprint_of, load_keras_model
    from tilepipe.plan import plan_jobs
    from tilepipe.store import SceneStore

    scene = SceneStore.open(spec["scene"])
    keras_model = load_keras_model(spec["model"])
    compiled = CompiledModel(keras_model)
    footprint = footprint_of(keras_model)
    jobs = [j for j in plan_jobs(scene.info.grid, footprint, scene.index()) if not j.empty]
    tiles, windows = [], []
    for job in jobs:
        tile = scene.read_tile(job.row, job.col)
        assert tile is not None
        # ``need`` may reach past the scene into a strided model's zero padding (as tilepipe pads it)
        dense = tile.to_dense()
        overlap = job.need.clip(job.stored.row_stop, job.stored.col_stop)
        window = np.zeros((*job.need.shape, dense.shape[-1]), np.float32)
        window[overlap.relative_to(job.need).slices] = dense[overlap.relative_to(job.stored).slices]
        tiles.append(tile)
        windows.append(window)
    # one tile per call; each tile's time is its best of `passes` calls (this VM's timings are noisy)
    passes, batch = spec.get("passes", 3), spec["batch"]
    per_tile = _timed_calls(compiled, [w[None] for w in windows], passes)
    # same-shape batches of `batch`, as tilepipe groups them
    groups: dict[tuple[int, ...], list[np.ndarray]] = collections.defaultdict(list)
    for w in windows:
        groups[w.shape].append(w)
    batched = _timed_calls(compiled, _batches(groups, batch), passes)
    answer = {"tiles": len(windows), "threads": spec["threads"], "per_tile_seconds": per_tile,
              "batched_seconds": batched, "batch": batch, "passes": passes,
              "window_pixels": int(sum(j.need.size for j in jobs))}
    if spec.get("support"):
        answer["support"] = _support_floor(compiled, jobs, tiles, windows, footprint, tuple(scene.info.shape),
                                           batch, passes)
    answer["child_max_rss"] = _maxrss()
    return answer


def run_child(kind: str, spec: dict[str, Any], sampler: RssSampler, *, guard: bool = False,
              timeout: float = 3600) -> dict[str, Any]:
    """Run this script as a ``--child`` subprocess; returns its JSON answer (or an error record)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--child-spec", json.dumps(spec)]
    with sampler.phase(kind) as mark:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if guard:
            sampler.guard_pid = proc.pid
            sampler.guard_fired = False
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        finally:
            sampler.guard_pid = None
    answer: dict[str, Any] = {"peak_rss": mark.peak, "baseline_rss": mark.baseline}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            answer.update(json.loads(line[len("RESULT "):]))
            return answer
    answer["error"] = (f"killed at low memory (guard), rc {proc.returncode}" if sampler.guard_fired
                       else f"rc {proc.returncode}: {err.strip().splitlines()[-1] if err.strip() else ''}")
    answer["oom"] = sampler.guard_fired or proc.returncode in (-9, 137)
    return answer


# =========================================================================== profiling


class PySpy:
    """``py-spy record`` attached to some pids (raw collapsed stacks), stopped with SIGINT."""

    def __init__(self, pids: dict[str, int], folder: str, tag: str) -> None:
        self.procs: list[tuple[str, str, subprocess.Popen[bytes]]] = []
        exe = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
        if not os.path.exists(exe):
            print("py-spy not found; no profile", file=sys.stderr)
            return
        for name, pid in pids.items():
            path = os.path.join(folder, f"pyspy-{tag}-{name}.txt")
            p = subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", "50", "--format", "raw", "--idle",
                                  "--nonblocking", "-o", path],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.procs.append((name, path, p))
        time.sleep(1.0)  # let py-spy attach

    def stop(self) -> dict[str, str]:
        out = {}
        for _name, _path, p in self.procs:
            p.send_signal(signal.SIGINT)
        for name, path, p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
            if os.path.exists(path):
                out[name] = path
        return out


# (label, substrings of a frame): the deepest frame of a stack that matches decides its phase.
WORKER_PHASES = [
    ("model load (cache)", ("load_worker_model",)),
    ("open stores", ("SceneStore.open", "ResultStore.open")),
    ("read tile (zarr + decode)", ("read_tile",)),
    ("crop COO to window", ("_crop_coo",)),
    ("densify: SparseTensor -> to_dense", ("densify (",)),
    ("model: numpy -> tf.constant copy", ("convert_to_eager_tensor", "constant (")),
    ("model: graph execution", ("quick_execute", "call_flat", "_call_impl")),
    ("model: wrapper (trace lookup, asarray)", ("CompiledModel.",)),
    ("write core (zarr encode + store)", ("write_core",)),
    ("empty-tile response", ("empty_response", "empty_core")),
    ("batching (stack, concatenate)", ("compute_tiles",)),
]
# The harness (run_model) is split by the function run_model called directly.
HARNESS_CALLEES = {
    "check_workers": "preflight (workers can read / write the paths)",
    "Client.run": "start TensorFlow on the workers",
    "facts_on_worker": "model facts on a worker (submit + wait)",
    "model_file": "model sha256",
    "model_sha256": "model sha256",
    "content_sha256": "model sha256",
    "SceneStore.open": "open scene store",
    "SceneStore.index": "read the tile index",
    "plan_result": "plan the result store",
    "_open_or_create": "create result store",
    "plan_run": "plan tiles and batches",
    "ResultStore.status": "read the status grid",
    "_execute": "execute: submit, wait for workers, record",
    "ResultStore.finish": "write report attrs, consolidate metadata",
}


def _phase_of(frames: list[str], phases: list[tuple[str, tuple[str, ...]]]) -> str:
    for frame in reversed(frames):
        for label, keys in phases:
            if any(k in frame for k in keys):
                return label
    return "other"


def _callee_phase(frames: list[str]) -> str:
    if len(frames) < 2:
        return "run_model itself"
    name = frames[1].split(" (")[0]
    return HARNESS_CALLEES.get(name, name)


def summarize_collapsed(path: str, focus: str, phases: list[tuple[str, tuple[str, ...]]] | None,
                        top: int = 20) -> str:
    """Where the time of the ``focus`` function went, from a py-spy ``--idle`` raw profile.

    Samples of stacks through ``focus`` (run_tiles on workers, run_model in the
    harness) are counted as wall time and split into phases: by the deepest frame
    that matches ``phases``, or (``phases`` None) by the function ``focus`` called.
    """
    phase: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as fh:
        for line in fh:
            stack, _, n = line.rstrip().rpartition(" ")
            if not n.isdigit():
                continue
            frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
            cut = next((i for i, f in enumerate(frames) if f.startswith(focus + " ")), None)
            if cut is None:
                continue
            frames = frames[cut:]
            count = int(n)
            total += count
            phase[_phase_of(frames, phases) if phases is not None else _callee_phase(frames)] += count
            leaf[frames[-1]] += count
    if not total:
        return f"{os.path.basename(path)}: no samples in {focus}"
    lines = [f"{os.path.basename(path)}: {total} samples in {focus} (wall time, idle included)", "  phases:"]
    lines += [f"    {100 * c / total:5.1f}%  {f}" for f, c in phase.most_common()]
    lines.append("  deepest frames:")
    lines += [f"    {100 * c / total:5.1f}%  {f}" for f, c in leaf.most_common(top)]
    return "\n".join(lines)


# =========================================================================== the cases


def _rm(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _add_path(path: str) -> None:
    if path not in sys.path:
        sys.path.insert(0, path)


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step


# Copies of each activation a whole-scene call holds at its peak, per model (measured, see below).
NAIVE_COPIES = {"demo": 2.0, "unet": 1.15}


def predicted_naive_bytes(padded: int, nnz: int, floats_per_pixel: float, copies: float) -> int:
    """What whole-scene densify + model holds at its peak, + 1 GB of runtime.

    ``padded``: the scene side the model runs on. The dense input and every layer's
    output (Keras keeps a functional model's intermediates alive during the call;
    ``floats_per_pixel`` from ``child_model``), each counted ``copies`` times. The demo
    model's tensors are all counted twice (oneDNN reorders every tensor into its blocked
    layout): 4 + 16 + 16 + 1 floats per pixel at 8192 x 8192 x 4, predicted 19.8 GB,
    measured 19.5 GB max RSS. The U-Net's (226 floats per pixel) barely more than once:
    2040 x 2040 x 4 measured 4.8 GB max RSS, 1.0 copies over 1 GB of runtime; with 1.15,
    4096 x 4096 x 4 is predicted 17.2 GB, measured 16.4 GB.
    """
    return int(copies * padded * padded * 4 * floats_per_pixel) + nnz * (3 * 8 + 4) * 2 + GB


def _trim_memory() -> None:
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def local_cluster(workers: int) -> Iterator[Any]:
    """A fresh LocalCluster (``workers`` processes x 1 thread) and its client; the same
    configuration for (b) and (c), new processes for each so one's memory is not the other's."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, silence_logs=logging.CRITICAL)
    client = Client(cluster)
    try:
        client.run(_add_path, HERE)
        yield client
    finally:
        client.close()
        cluster.close()


def _chunks_along(length: int, tile: int, depth: int) -> tuple[int, ...]:
    """Chunk sizes of ``tile`` along an axis of ``length``; a last chunk shorter than
    ``depth`` joins the one before it (dask would otherwise rechunk, and a rechunk
    need not keep the chunk boundaries on the model's stride)."""
    sizes = [tile] * (length // tile)
    rest = length % tile
    if rest and rest < depth and sizes:
        sizes[-1] += rest
    elif rest:
        sizes.append(rest)
    return tuple(sizes)


def case_mapoverlap(client: Any, dense_path: str, out_path: str, model_path: str, depth: int, tile: int,
                    size: int) -> float:
    """``map_overlap`` of the model over the dense scene at ``dense_path`` -> Zarr at ``out_path``.

    For a strided model the dense scene is already padded to a multiple of the stride S,
    and ``tile`` and ``depth`` are multiples of S: every block (chunk grown by the depth,
    or cut at the padded scene's edge by ``boundary="none"``) starts at and is a multiple
    of S, as the reference's grid is. ``boundary="none"`` (not 0): the model then sees the
    scene's edge as the reference does, and its ``same`` layers pad each activation there;
    zeros padded onto the input are not the same thing. The output is cropped to the scene.
    """
    import dask.array as da

    rows, cols, bands = da.from_zarr(dense_path).shape
    chunks = (_chunks_along(rows, tile, depth), _chunks_along(cols, tile, depth), (bands,))
    x = da.from_zarr(dense_path, chunks=chunks)
    y = da.map_overlap(benchlib.predict_block, x, depth=(depth, depth, 0), boundary="none", dtype=np.float32,
                       drop_axis=2, meta=np.empty((0, 0), np.float32), model_path=model_path)
    if y.shape != (size, size) or chunks[:2] != (_chunks_along(rows, tile, 0), _chunks_along(cols, tile, 0)):
        y = y[:size, :size].rechunk((tile, tile))  # zarr wants regular chunks
    t0 = time.perf_counter()
    da.to_zarr(y, out_path, overwrite=True)
    return time.perf_counter() - t0


def _tilepipe_path() -> str:
    import tilepipe

    return os.path.dirname(os.path.abspath(tilepipe.__file__))


def case_tilepipe(client: Any, scene_path: str, model_path: str, out_path: str) -> tuple[float, dict[str, Any]]:
    import tilepipe

    _rm(out_path)
    t0 = time.perf_counter()
    report = tilepipe.run(scene_path, model_path, out_path, client=client, overwrite=True)
    return time.perf_counter() - t0, report.to_dict()


def case_cli(tmp: str, size: int, bands: int, occ: float | None, seed: int, tile: int, model_path: str, workers: int,
             sampler: RssSampler) -> dict[str, Any]:
    folder = os.path.join(tmp, "cli")
    _rm(folder)
    os.makedirs(folder)
    wf = os.path.join(folder, "workflow.yaml")
    with open(wf, "w") as fh:
        fh.write(
            f"input:\n  synthetic: {{shape: [{size}, {size}], bands: {bands}, occupancy: {occ}, seed: {seed}}}\n"
            f"model:\n  path: {model_path}\n"
            f"tiling:\n  tile_size: {tile}\n  halo: auto\n"
            "output:\n  zarr: result.zarr\n  scene: scene.zarr\n  geotiff: result.tif\n"
            f"cluster:\n  n_workers: {workers}\n  threads_per_worker: 1\n"
        )
    exe = os.path.join(os.path.dirname(sys.executable), "tilepipe")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "tilepipe.cli"]
    with sampler.phase("cli") as mark:
        t0 = time.perf_counter()
        proc = subprocess.run([*cmd, "run", wf, "--overwrite"], capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
    rec: dict[str, Any] = {"wall_seconds": wall, "peak_rss": mark.peak, "baseline_rss": mark.baseline,
                           "rc": proc.returncode}
    if proc.returncode != 0:
        rec["error"] = (proc.stderr.strip().splitlines() or [""])[-1]
    else:
        rec["stdout_tail"] = proc.stdout.strip().splitlines()[-3:]
    _rm(folder)
    return rec


def bench_occupancy(args: argparse.Namespace, occ: float | None, sampler: RssSampler, tmp: str,
                    model_path: str, facts: dict[str, Any], results_dir: str) -> dict[str, Any]:
    """Every case on one scene: ``args.scene`` at occupancy ``occ`` (None for ``lines``)."""
    import tilepipe
    from tilepipe.store.result import band_array_name

    size, bands, tile, workers = args.size, args.bands, args.tile_size, args.workers
    halo, step = int(facts["halo"]), int(facts["step"])
    padded = _round_up(size, step)  # the side the reference (a) and map_overlap (b) run on
    depth = _round_up(halo, step)  # map_overlap's depth: the halo, kept on the stride
    pixels = size * size
    rec: dict[str, Any] = {"scene": args.scene, "occupancy": occ, "size": size, "bands": bands, "tile_size": tile,
                           "pixels": pixels, "padded_size": padded, "mapoverlap_depth": depth}
    say = _say

    # ------------------------------------------------------------- untimed preparation
    t0 = time.perf_counter()
    coo = benchlib.make_scene(args.scene, size, bands, occ, tile, args.seed)
    nnz = int(coo.values.size)
    rec["nonzero_pixels"] = int(np.unique(coo.rows * size + coo.cols).size)
    scene_path = os.path.join(tmp, "scene.zarr")
    dense_path = os.path.join(tmp, "dense.zarr")
    _rm(scene_path)
    # halo = the model's footprint (what model=model_path would derive, without TensorFlow in this process)
    tilepipe.ingest(coo, scene_path, tile_size=tile, halo=halo, overwrite=True)
    index = tilepipe.open_scene(scene_path).index()
    chunks = benchlib.write_dense_zarr(coo, dense_path, tile, shape=(padded, padded, bands))
    rec.update(nonzero_entries=nnz, tiles_total=int(index.size), tiles_nonempty=int((index > 0).sum()),
               dense_chunks_written=chunks)
    say(f"{_label(rec)}: {nnz} values in {rec['nonzero_pixels']} pixels, "
        f"{rec['tiles_nonempty']}/{rec['tiles_total']} non-empty tile windows; "
        f"prepared in {time.perf_counter() - t0:.1f} s")
    del coo
    cases: dict[str, Any] = {}

    # ------------------------------------------------------------- (a) naive
    _trim_memory()  # give the harness's freed heap back, so the naive child has all it can get
    need = predicted_naive_bytes(padded, nnz, float(facts["floats_per_pixel"]), NAIVE_COPIES[args.model])
    avail = benchlib.psutil.virtual_memory().available
    naive_out = os.path.join(tmp, "naive.zarr")
    _rm(naive_out)
    spec = {"scene": args.scene, "size": size, "bands": bands, "tile": tile, "occupancy": occ, "seed": args.seed,
            "model": model_path, "threads": workers, "step": step, "out": naive_out}
    if args.skip_naive:
        cases["naive"] = {"skipped": True}
    elif need > avail:
        cases["naive"] = {"oom": True, "predicted_bytes": need,
                          "error": f"out of memory at {need / GB:.1f} GB (predicted; {avail / GB:.1f} GB free)"}
    else:
        res = run_child("naive", spec, sampler, guard=True)
        res["predicted_bytes"] = need
        if res.get("oom"):
            res["error"] = f"out of memory at {res['peak_rss'] / GB:.1f} GB (all processes)"
        cases["naive"] = res
    say(f"  naive: {_brief(cases['naive'])}")

    # ------------------------------------------------------------- (b) map_overlap, warm
    mo_out = os.path.join(tmp, "mapoverlap.zarr")
    times = []
    with local_cluster(workers) as client:
        case_mapoverlap(client, dense_path, os.path.join(tmp, "mo-warm.zarr"), model_path, depth, tile, size)
        _rm(os.path.join(tmp, "mo-warm.zarr"))
        with sampler.phase("map_overlap") as mark:
            for _ in range(args.repeat):
                _rm(mo_out)
                times.append(case_mapoverlap(client, dense_path, mo_out, model_path, depth, tile, size))
    cases["map_overlap"] = {"wall_seconds": min(times), "all_seconds": times, "peak_rss": mark.peak,
                            "baseline_rss": mark.baseline}
    say(f"  map_overlap: {_brief(cases['map_overlap'])}")

    # ------------------------------------------------------------- (c) tilepipe, warm
    tp_out = os.path.join(tmp, "tilepipe.zarr")
    times, reports = [], []
    with local_cluster(workers) as client:
        # Which tilepipe the workers import (PYTHONPATH=SNAPSHOT must reach them too)
        rec["tilepipe_on_workers"] = sorted(set(client.run(_tilepipe_path).values()))
        if rec["tilepipe_on_workers"] != [_tilepipe_path()]:
            raise RuntimeError(f"the workers import tilepipe from {rec['tilepipe_on_workers']}, "
                               f"the harness from {_tilepipe_path()}")
        case_tilepipe(client, scene_path, model_path, os.path.join(tmp, "tp-warm.zarr"))
        _rm(os.path.join(tmp, "tp-warm.zarr"))
        with sampler.phase("tilepipe") as mark:
            for _ in range(args.repeat):
                wall, report = case_tilepipe(client, scene_path, model_path, tp_out)
                times.append(wall)
                reports.append(report)
        if args.profile:
            rec["profile"] = profile_tilepipe(client, scene_path, model_path, tmp, results_dir, size,
                                              _label(rec))
    best = int(np.argmin(times))
    cases["tilepipe_warm"] = {"wall_seconds": times[best], "all_seconds": times, "peak_rss": mark.peak,
                              "baseline_rss": mark.baseline, "report": reports[best]}
    say(f"  tilepipe warm: {_brief(cases['tilepipe_warm'])}")
    # What tilepipe's block-sparse compute ran the model on (absent before commit 9b19cf2)
    model_px, affected_px = reports[best].get("model_pixels"), reports[best].get("affected_pixels")
    rec["pixels"] = {"model_pixels": model_px, "affected_pixels": affected_px,
                     "model_over_affected": _ratio(model_px, affected_px)}
    if model_px is not None:
        say(f"  tilepipe ran the model on {model_px / 1e6:.3f} Mpx for {fmt(_mpx(affected_px), '.3f')} Mpx affected "
            f"({fmt(rec['pixels']['model_over_affected'])}x)")

    # ------------------------------------------------------------- do (a), (b), (c) agree?
    naive_ran = "error" not in cases["naive"] and not cases["naive"].get("skipped")
    first_band = band_array_name(0)  # the result store (format 3) holds one (rows, cols) array per band
    pairs = [("tilepipe_vs_mapoverlap", tp_out, first_band, mo_out)]
    if naive_ran:  # (a) is the reference
        pairs += [("tilepipe_vs_naive", tp_out, first_band, naive_out),
                  ("mapoverlap_vs_naive", mo_out, None, naive_out)]
    agreement = {name: benchlib.max_rel_err(x, comp, ref, None, tile) for name, x, comp, ref in pairs}
    rec["agreement"] = agreement
    rec["max_rel_err_tilepipe_vs_mapoverlap"] = agreement["tilepipe_vs_mapoverlap"]["rel"]
    rec["agree"] = all(a["rel"] <= AGREEMENT_TOLERANCE for a in agreement.values())
    for name, a in agreement.items():
        flag = "ok" if a["rel"] <= AGREEMENT_TOLERANCE else f"MISMATCH (over {AGREEMENT_TOLERANCE:g})"
        say(f"  max rel err {name.replace('_vs_', ' vs ')}: {a['rel']:.2e} "
            f"(max abs {fmt(a['max_abs'], '.2e')}, max |ref| {fmt(a['max_ref'], '.3g')}) {a.get('error', '')}{flag}")
    _rm(naive_out)

    # ------------------------------------------------------------- (c') tilepipe CLI, cold
    if args.skip_cli:
        cases["tilepipe_cold_cli"] = {"skipped": True}
    elif args.scene != "clusters":  # a workflow's synthetic input makes the clusters scene only
        cases["tilepipe_cold_cli"] = {"skipped": True, "why": f"no workflow input makes the {args.scene} scene"}
    else:
        cases["tilepipe_cold_cli"] = case_cli(tmp, size, bands, occ, args.seed, tile, model_path, workers, sampler)
    say(f"  tilepipe cold CLI: {_brief(cases['tilepipe_cold_cli'])}")

    # ------------------------------------------------------------- (d) floor, (d'') support floor
    fspec = {"scene": scene_path, "model": model_path, "threads": workers, "batch": 8}
    floor = run_child("floor", {**fspec, "support": True}, sampler)
    support = floor.pop("support", {"error": floor.get("error", "not measured")})
    if "error" not in floor:
        floor["wall_seconds"] = min(floor["per_tile_seconds"], floor["batched_seconds"])
        rec["pixels"]["window_pixels"] = floor["window_pixels"]  # what whole windows would cost
    cases["floor"] = floor
    cases["support_floor"] = support
    one = run_child("floor", {**fspec, "threads": 1}, sampler)
    if "error" not in one:
        one["wall_seconds"] = min(one["per_tile_seconds"], one["batched_seconds"]) / workers
    cases["floor_1thread_split"] = one
    say(f"  floor ({workers} TF threads): {_brief(floor)}; 1 thread / {workers} workers: {_brief(one)}")
    say(f"  support floor ({workers} TF threads): {_brief(support)}"
        + (f"; {support['pieces']} pieces in {support['batches']} batches, {support['window_shapes']} shapes, "
           f"model on {support['model_pixels'] / 1e6:.3f} Mpx" if "error" not in support else ""))
    if "error" not in support and model_px is not None and support["model_pixels"] != model_px:
        say(f"  note: the support floor's pieces ({support['model_pixels']} px) are not tilepipe's ({model_px} px)")

    for c in cases.values():
        if c.get("wall_seconds"):
            c["megapixels_per_second"] = pixels / 1e6 / c["wall_seconds"]
    rec["cases"] = cases
    tp = cases["tilepipe_warm"]["wall_seconds"]
    ratios: dict[str, float | None] = {
        "naive_over_tilepipe": _ratio(cases["naive"].get("wall_seconds"), tp),
        "mapoverlap_over_tilepipe": _ratio(cases["map_overlap"]["wall_seconds"], tp),
        "tilepipe_over_mapoverlap": _ratio(tp, cases["map_overlap"]["wall_seconds"]),
        "overhead_over_floor": _ratio(tp - floor["wall_seconds"], floor["wall_seconds"])
        if floor.get("wall_seconds") else None,
        "overhead_over_floor_1thread_split": _ratio(tp - one["wall_seconds"], one["wall_seconds"])
        if one.get("wall_seconds") else None,
        "overhead_over_support_floor": _ratio(tp - support["wall_seconds"], support["wall_seconds"])
        if support.get("wall_seconds") else None,
        "cli_cold_over_tilepipe_warm": _ratio(cases["tilepipe_cold_cli"].get("wall_seconds"), tp),
    }
    rec["ratios"] = ratios
    _rm(mo_out)
    _rm(tp_out)
    _rm(dense_path)
    return rec


def profile_tilepipe(client: Any, scene_path: str, model_path: str, tmp: str, results_dir: str, size: int,
                     label: str) -> dict[str, Any]:
    """One more warm tilepipe run under py-spy (harness + every worker) and a dask performance report."""
    from distributed import performance_report

    tag = f"{size}-" + (f"occ{label}" if label[0].isdigit() else label)
    pids = {"harness": os.getpid()}
    pids.update({f"worker{i}": pid for i, pid in enumerate(client.run(os.getpid).values())})
    prof_dir = os.path.join(results_dir, "profiles")
    os.makedirs(prof_dir, exist_ok=True)
    spy = PySpy(pids, prof_dir, tag)
    html = os.path.join(prof_dir, f"dask-report-{tag}.html")
    walls: list[float] = []
    with performance_report(filename=html):
        # Several runs when one is short, so the profile holds enough samples (50 Hz).
        while not walls or (sum(walls) < PROFILE_SECONDS and len(walls) < 50):
            wall, report = case_tilepipe(client, scene_path, model_path, os.path.join(tmp, "tp-prof.zarr"))
            walls.append(wall)
    files = spy.stop()
    _rm(os.path.join(tmp, "tp-prof.zarr"))
    summaries = {name: summarize_collapsed(path, "run_model", None) if name == "harness"
                 else summarize_collapsed(path, "run_tiles", WORKER_PHASES) for name, path in files.items()}
    with open(os.path.join(prof_dir, f"pyspy-{tag}-summary.txt"), "w") as fh:
        fh.write(f"{len(walls)} warm tilepipe run(s) under py-spy: wall {sum(walls):.2f} s in all "
                 f"({min(walls):.2f} s best); last report {json.dumps(report)}\n\n")
        fh.write("\n\n".join(summaries.values()))
    _say(f"  profile: {len(walls)} run(s), {sum(walls):.2f} s under py-spy -> {prof_dir}")
    return {"runs_under_profiler": len(walls), "wall_seconds_under_profiler": walls, "files": sorted(files.values()),
            "dask_report": html}


# =========================================================================== reporting


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _mpx(pixels: int | None) -> float | None:
    return None if pixels is None else pixels / 1e6


def _label(rec: dict[str, Any]) -> str:
    """A result row's name: its occupancy, or its scene where that has none."""
    occ = rec.get("occupancy")
    return rec.get("scene", "clusters") if occ is None else f"{occ:g}"


def _is_sparse(rec: dict[str, Any]) -> bool:
    occ = rec.get("occupancy")
    return occ is None or occ <= SPARSE_MAX_OCCUPANCY  # the lines scene is sparse: few pixels in every tile


def _brief(c: dict[str, Any]) -> str:
    if c.get("skipped"):
        return "skipped"
    if c.get("error"):
        return c["error"]
    rss = f", peak RSS {c['peak_rss'] / GB:.2f} GB" if c.get("peak_rss") else ""
    return f"{c['wall_seconds']:.2f} s{rss}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def _err(rec: dict[str, Any], pair: str) -> str:
    a = rec.get("agreement", {}).get(pair)
    if a is None:
        value = rec.get(f"max_rel_err_{pair}")  # results written before the agreement record
        return "-" if value is None else f"{value:.1e}"
    return f"{a['rel']:.1e}" + ("" if a["rel"] <= AGREEMENT_TOLERANCE else " MISMATCH")


def _say(line: str) -> None:
    print(line, flush=True)


MODEL_ABOUT = {
    "demo": "`tilepipe.demo.build_demo_model` (three 3x3 `same` Conv2D, 16 filters)",
    "unet": "`tilepipe.demo.build_unet_model` (3-level U-Net, 16/32/32 filters, 2x2 max pooling down, "
            "bilinear upsampling up, skip concatenation)",
}

CASE_NAMES = [
    ("naive", "(a) naive to_dense + model"),
    ("map_overlap", "(b) dask map_overlap, warm"),
    ("tilepipe_warm", "(c) tilepipe.run, warm"),
    ("tilepipe_cold_cli", "(c') tilepipe run CLI, cold (+ingest, export)"),
    ("floor", "(d) floor: model calls only"),
    ("floor_1thread_split", "(d') floor, 1 TF thread / workers"),
    ("support_floor", "(d'') support floor: model calls on the affected rectangles only"),
]
FLOORS = ("floor", "floor_1thread_split", "support_floor")


def render_markdown(doc: dict[str, Any]) -> str:
    a = doc["args"]
    lib = doc.get("tilepipe", {})
    model = a.get("model", "demo")
    facts = doc.get("model_facts", {})
    about = MODEL_ABOUT.get(model, model)
    scene = a.get("scene", "clusters")
    out = [
        f"# tilepipe benchmark, {a['size']} x {a['size']} x {a['bands']}, tile {a['tile_size']}, model {model}"
        + ("" if scene == "clusters" else f", scene {scene}"),
        "",
        f"Model: {about}; halo {doc.get('halo')}, total stride {facts.get('step', 1)}."
        + (" (a) runs on the scene padded with zeros to a multiple of the stride (output cropped), the "
           f"reference; (b) on the dense scene padded likewise, depth {_round_up(doc.get('halo', 0), facts['step'])}, "
           '`boundary="none"`.' if facts.get("step", 1) > 1 else ""),
        "",
        f"tilepipe {lib.get('version')} at commit {lib.get('commit')}{' (dirty)' if lib.get('dirty') else ''}, "
        f"from {lib.get('path')}; {doc.get('started')}.",
        "",
        f"Machine: {doc['machine']['cpus']} CPUs, {doc['machine']['memory_gb']} GB; cluster: LocalCluster "
        f"{a['workers']} workers x 1 thread (processes), a fresh one for (b) and for (c). "
        f"Times: best of {a['repeat']} for (b) and (c), single "
        "run otherwise. Peak RSS: sum over the harness and all its child processes (idle cluster included), "
        "sampled every 50 ms.",
        "",
    ]
    if scene == "lines":
        out += ["Scene: `benchlib.lines_scene` (polylines 1 - 3 px wide crossing the scene, plus scattered "
                f"points), seed {a['seed']}.", ""]
    rows = []
    for r in doc["results"]:
        for key, label in CASE_NAMES:
            c = r["cases"].get(key)
            if c is None:  # results written before that case existed
                continue
            if c.get("skipped"):
                rows.append([_label(r), label, "skipped", "", ""])
            elif c.get("error"):
                rows.append([_label(r), label, c["error"], "", benchlib.gb(c.get("peak_rss"))])
            else:
                rows.append([_label(r), label, fmt(c.get("wall_seconds")),
                             fmt(c.get("megapixels_per_second"), ".1f"),
                             benchlib.gb(c.get("peak_rss")) if key not in FLOORS else "-"])
    out.append(markdown_table(["occupancy", "case", "wall s", "Mpx/s", "peak RSS GB"], rows))
    out += ["", "## Ratios and targets", ""]
    rrows = []
    for r in doc["results"]:
        q = r["ratios"]
        sparse = _is_sparse(r)
        dense = r.get("occupancy") is not None and r["occupancy"] >= 1.0
        px = r.get("pixels", {})
        checks = []
        if sparse and q["naive_over_tilepipe"] is not None:
            checks.append(f"naive>={TARGET_SPARSE_VS_NAIVE:g}x: "
                          f"{'ok' if q['naive_over_tilepipe'] >= TARGET_SPARSE_VS_NAIVE else 'MISS'}")
        if sparse:
            checks.append(f"map_overlap>={TARGET_SPARSE_VS_MAPOVERLAP:g}x: "
                          f"{'ok' if q['mapoverlap_over_tilepipe'] >= TARGET_SPARSE_VS_MAPOVERLAP else 'MISS'}")
        if dense:
            checks.append(f"<= {TARGET_DENSE_VS_MAPOVERLAP}x map_overlap: "
                          f"{'ok' if q['tilepipe_over_mapoverlap'] <= TARGET_DENSE_VS_MAPOVERLAP else 'MISS'}")
        if q["overhead_over_floor"] is not None:
            checks.append(f"overhead<={TARGET_OVERHEAD:.0%}: "
                          f"{'ok' if q['overhead_over_floor'] <= TARGET_OVERHEAD else 'MISS'}")
        if px.get("model_over_affected") is not None and sparse:
            checks.append(f"model px<={TARGET_MODEL_OVER_AFFECTED:g}x affected: "
                          f"{'ok' if px['model_over_affected'] <= TARGET_MODEL_OVER_AFFECTED else 'MISS'}")
        rrows.append([
            _label(r), f"{r['tiles_nonempty']}/{r['tiles_total']}",
            fmt(q["naive_over_tilepipe"], ".1f"), fmt(q["mapoverlap_over_tilepipe"], ".2f"),
            _pct(q.get("overhead_over_floor")), _pct(q.get("overhead_over_floor_1thread_split")),
            _pct(q.get("overhead_over_support_floor")),
            _err(r, "tilepipe_vs_mapoverlap"), _err(r, "tilepipe_vs_naive"), _err(r, "mapoverlap_vs_naive"),
            "; ".join(checks),
        ])
    out.append(markdown_table(
        ["occupancy", "non-empty tiles", "naive / tilepipe", "map_overlap / tilepipe", "(tilepipe-floor)/floor",
         "vs 1-thread floor", "vs support floor", "rel err (c) vs (b)", "(c) vs (a)", "(b) vs (a)", "targets"],
        rrows))
    out += ["", "## Pixels the model ran on", ""]
    prows = []
    for r in doc["results"]:
        px, sf = r.get("pixels", {}), r["cases"].get("support_floor", {})
        prows.append([_label(r), str(r.get("nonzero_pixels", "-")), fmt(_mpx(px.get("affected_pixels")), ".3f"),
                      fmt(_mpx(px.get("model_pixels")), ".3f"), fmt(px.get("model_over_affected")),
                      fmt(_mpx(px.get("window_pixels")), ".3f"),
                      "-" if "pieces" not in sf else
                      f"{sf['pieces']} / {sf['batches']} / {sf['window_shapes']} / {sf.get('batch_shapes', '-')}"])
    out.append(markdown_table(
        ["occupancy", "non-zero pixels", "affected Mpx", "model Mpx (tilepipe)", "model / affected",
         "whole windows Mpx", "support floor: pieces / batches / window shapes / batch shapes"], prows))
    out += ["", "affected: output pixels of busy tiles whose footprint holds a value (the least an exact run "
            "computes); model: input pixels tilepipe ran the model on (run report); whole windows: the busy "
            "tiles' input windows, what the model ran on before block-sparse compute. '-': not reported "
            "(a tilepipe before it)."]
    out += ["", f"rel err: max |x - ref| / max |ref| over the whole output, ref the second named; "
            f"agreement required: <= {AGREEMENT_TOLERANCE:g} ('-': (a) did not run)."]
    out.append("")
    return "\n".join(out)


# =========================================================================== main


def count_pieces(scene_path: str, keras_model: Any, workers: int = 2) -> dict[str, Any]:
    """What tilepipe's block-sparse compute would run the model on over the scene store at ``scene_path``,
    planned as a run plans it, without running the model: tasks from ``plan.batches`` for ``workers``
    one-thread CPU workers, each task's pieces from ``compute.plan_pieces`` with the batch size a CPU
    worker picks (``runner.auto_batch_size``)."""
    from tilepipe.execute import compute
    from tilepipe.model import CompiledModel, footprint_of
    from tilepipe.model.runner import auto_batch_size
    from tilepipe.plan import DEFAULT_BATCH, batches, joins_pay, plan_jobs
    from tilepipe.store import SceneStore

    scene = SceneStore.open(scene_path)
    footprint = footprint_of(keras_model)
    channels = CompiledModel(keras_model).max_channels
    shape = tuple(scene.info.shape)
    jobs = [j for j in plan_jobs(scene.info.grid, footprint, scene.index()) if not j.empty]
    got = {"busy_tiles": len(jobs), "sparse_tiles": 0, "model_pixels": 0, "affected_pixels": 0, "pieces": 0,
           "calls": 0, "block": compute._steps(footprint)[0]}
    shapes: set[tuple[int, int]] = set()
    # A run's CPU batch and the bench's workers; touching tiles together as a run of this model puts them.
    for task in batches(jobs, DEFAULT_BATCH, workers, join=joins_pay(footprint)):
        tiles = [scene.read_tile(j.row, j.col) for j in task]
        largest = max(task, key=lambda j: j.need.size).need.shape  # as a run's task picks its batch size
        plan = compute.plan_pieces(task, tiles, footprint=footprint, scene_shape=shape,
                                   batch_size=auto_batch_size(largest, channels, None))
        got["sparse_tiles"] += len(plan.sparse)
        got["model_pixels"] += plan.model_pixels
        got["affected_pixels"] += plan.affected_pixels
        got["pieces"] += plan.pieces
        got["calls"] += len(plan.calls)
        shapes |= {call.shape for call in plan.calls}
    got["window_shapes"] = len(shapes)
    got["model_over_affected"] = _ratio(got["model_pixels"], got["affected_pixels"])
    return got


def count_only(args: argparse.Namespace) -> int:
    """``--count-only``: model / affected pixels, pieces and calls per scene, printed (deterministic)."""
    import tilepipe
    from tilepipe.demo import BUILDERS

    keras_model = BUILDERS[args.model](args.bands)
    from tilepipe.model import footprint_of

    halo = footprint_of(keras_model).halo
    tmp = tempfile.mkdtemp(prefix="tilepipe-count-", dir=args.tmp)
    try:
        for occ in args.occupancies:
            coo = benchlib.make_scene(args.scene, args.size, args.bands, occ, args.tile_size, args.seed)
            scene_path = os.path.join(tmp, "scene.zarr")
            tilepipe.ingest(coo, scene_path, tile_size=args.tile_size, halo=halo, overwrite=True)
            got = count_pieces(scene_path, keras_model, args.workers)
            label = args.scene if occ is None else f"{occ:g}"
            print(f"{args.model} {args.size}^2 {label}: model {got['model_pixels']} px, affected "
                  f"{got['affected_pixels']} px ({fmt(got['model_over_affected'], '.3f')}x); "
                  f"{got['pieces']} pieces, {got['window_shapes']} window shapes, {got['calls']} model calls; "
                  f"{got['sparse_tiles']}/{got['busy_tiles']} busy tiles by rectangles; block {got['block']}",
                  flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", choices=["demo", "unet"], default="demo",
                   help="demo: tilepipe.demo.build_demo_model (3 convs, halo 3); unet: build_unet_model\n"
                        "(3 levels, 16/32/32 filters, stride 8, halo 48; results in bench-<size>-unet.*)")
    p.add_argument("--size", type=int, default=8192, help="scene rows = cols (default 8192)")
    p.add_argument("--bands", type=int, default=4)
    p.add_argument("--tile-size", type=int, default=1024)
    p.add_argument("--scene", choices=benchlib.SCENES, default="clusters",
                   help="clusters: tilepipe.sources.synthetic_scene, one per --occupancy;\n"
                        "lines: benchlib.lines_scene (polylines across the scene + points), one row;\n"
                        "results in bench-<size>[-<model>]-lines.*")
    p.add_argument("--occupancy", default="0.01,0.05,0.25,1.0",
                   help="comma-separated fractions of tiles (--scene clusters only)")
    p.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes (1 thread each)")
    p.add_argument("--repeat", type=int, default=3, help="timed repetitions of (b) and (c); the best counts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--tag", default="", help="appended to the results' file names: bench-<size>[-<model>]-<tag>.*")
    p.add_argument("--tmp", default=None, help="scratch folder (default: a new one under $TMPDIR)")
    p.add_argument("--quick", action="store_true", help="smoke run: size 2048, occupancy 0.05,1.0, repeat 1")
    p.add_argument("--profile", action="store_true",
                   help="one extra warm tilepipe run per occupancy under py-spy + dask performance_report")
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--skip-cli", action="store_true")
    p.add_argument("--count-only", action="store_true",
                   help="only plan tilepipe's block-sparse pieces and print model / affected pixels,\n"
                        "pieces and model calls (no model run, no timing; seconds)")
    p.add_argument("--child", choices=["naive", "floor", "model"], help=argparse.SUPPRESS)
    p.add_argument("--child-spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.occupancy, args.repeat = 2048, "0.05,1.0", 1
    args.occupancies: list[float | None] = (
        [None] if args.scene == "lines" else [float(x) for x in args.occupancy.split(",") if x.strip()])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.child:
        spec = json.loads(args.child_spec)
        answer = {"naive": child_naive, "floor": child_floor, "model": child_model}[args.child](spec)
        print("RESULT " + json.dumps(answer), flush=True)
        return 0

    if args.count_only:
        return count_only(args)
    os.makedirs(args.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="tilepipe-bench-", dir=args.tmp)
    sampler = RssSampler().start()
    stem = "-".join([f"bench-{args.size}", *(x for x in (args.model, args.scene, args.tag)
                                            if x and x not in ("demo", "clusters"))])
    json_path = os.path.join(args.out, f"{stem}.json")
    md_path = os.path.join(args.out, f"{stem}.md")
    doc: dict[str, Any] = {
        "args": {k: v for k, v in vars(args).items() if k not in ("child", "child_spec")},
        "machine": benchlib.machine(),
        "tilepipe": benchlib.library_identity(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": [],
    }
    _say(f"tilepipe {doc['tilepipe'].get('version')} from {doc['tilepipe'].get('path')} "
         f"(commit {doc['tilepipe'].get('commit')})")
    try:
        model_path = os.path.join(tmp, "model.keras")
        built = run_child("model", {"name": args.model, "bands": args.bands, "model": model_path}, sampler)
        if "error" in built:
            raise RuntimeError(f"building the model failed: {built['error']}")
        facts = {k: built[k] for k in ("halo", "step", "floats_per_pixel", "widths")}
        if args.tile_size % facts["step"]:
            raise SystemExit(f"--tile-size {args.tile_size} is not a multiple of the model's stride {facts['step']}")
        doc["halo"] = facts["halo"]
        doc["model_facts"] = facts
        for occ in args.occupancies:
            rec = bench_occupancy(args, occ, sampler, tmp, model_path, facts, args.out)
            rec["harness_imported_tensorflow"] = "tensorflow" in sys.modules
            doc["results"].append(rec)
            doc["overall_peak_rss"] = sampler.overall_peak
            benchlib.write_text(json_path, json.dumps(doc, indent=1, default=str))
    finally:
        sampler.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    benchlib.write_text(json_path, json.dumps(doc, indent=1, default=str))
    md = render_markdown(doc)
    benchlib.write_text(md_path, md)
    print()
    print(md)
    print(f"written: {json_path}, {md_path}")
    bad = [_label(r) for r in doc["results"] if not r.get("agree", True)]
    if bad:
        print(f"MISMATCH: results differ by more than {AGREEMENT_TOLERANCE:g} at occupancy {', '.join(bad)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
