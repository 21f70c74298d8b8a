"""Shared pieces of the tilepipe benchmarks: an all-process RSS sampler, the
``map_overlap`` block function, scene writers and small formatting helpers.

Dask workers import this module by name (``benchlib``), so the per-process model
cache below survives from one task to the next; ``bench.py`` puts this folder on
the workers' ``sys.path``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil

GB = 1024**3

# --------------------------------------------------------------------------- memory


@dataclass
class _Mark:
    start: float
    baseline: int
    peak: int = 0
    samples: int = 0
    peak_pss: int = 0


@dataclass
class RssSampler:
    """Sum of RSS over this process and all its children (recursively), every ``interval`` s.

    ``with sampler.phase("name") as m:`` records the peak of the sum while the
    block runs (``m.peak``, bytes) and the sum just before it (``m.baseline``).
    ``guard`` (bytes): while a phase marked ``guard_pid`` runs, that process is
    killed when the machine's available memory drops below ``guard``.
    """

    interval: float = 0.05
    guard: int = int(1.0 * GB)
    _marks: list[_Mark] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    guard_pid: int | None = None
    guard_fired: bool = False
    overall_peak: int = 0
    # With ``pss``, also the peak of the summed PSS (proportional set size): pages shared
    # by several processes (TensorFlow's libraries in every worker) count once in all,
    # where a sum of RSS counts them once per process. Slower to sample (reads smaps).
    pss: bool = False
    overall_peak_pss: int = 0
    _procs: dict[int, tuple[str, int]] = field(default_factory=dict)

    def start(self) -> RssSampler:
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @staticmethod
    def _tree() -> list[psutil.Process]:
        """This process and all its children, recursively."""
        root = psutil.Process(os.getpid())
        try:
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return [root]

    @classmethod
    def total_rss(cls, per_process: dict[int, int] | None = None) -> int:
        total = 0
        for p in cls._tree():
            with suppress(psutil.Error):
                rss = p.memory_info().rss
                total += rss
                if per_process is not None:
                    per_process[p.pid] = rss
        return total

    @classmethod
    def total_pss(cls) -> int:
        total = 0
        for p in cls._tree():
            with suppress(psutil.Error):
                total += p.memory_full_info().pss
        return total

    def reset_process_peaks(self) -> None:
        """Forget the per-process peaks (see :meth:`process_peaks`)."""
        with self._lock:
            self._procs.clear()

    def process_peaks(self) -> list[dict[str, Any]]:
        """Peak RSS of each process seen since the last reset: ``{"pid", "name", "peak_rss"}``."""
        with self._lock:
            return [{"pid": pid, "name": name, "peak_rss": peak} for pid, (name, peak) in self._procs.items()]

    @staticmethod
    def _name(pid: int) -> str:
        if pid == os.getpid():
            return "harness"
        try:
            cmd = psutil.Process(pid).cmdline()
        except psutil.Error:
            return f"pid {pid}"
        text = " ".join(cmd)
        if "multiprocessing" in text and "spawn_main" in text:
            return f"dask worker {pid}"
        if "py-spy" in text:
            return f"py-spy {pid}"
        return f"{os.path.basename(cmd[0]) if cmd else '?'} {pid}"

    def _loop(self) -> None:
        while not self._stop.is_set():
            per: dict[int, int] = {}
            rss = self.total_rss(per)
            if self.pss:
                pss = self.total_pss()
                with self._lock:
                    self.overall_peak_pss = max(self.overall_peak_pss, pss)
                    for m in self._marks:
                        m.peak_pss = max(m.peak_pss, pss)
            names = {pid: self._name(pid) for pid in per if pid not in self._procs}
            with self._lock:
                for pid, value in per.items():
                    name, peak = self._procs.get(pid, (names.get(pid, str(pid)), 0))
                    self._procs[pid] = (name, max(peak, value))
                self.overall_peak = max(self.overall_peak, rss)
                for m in self._marks:
                    m.peak = max(m.peak, rss)
                    m.samples += 1
                pid = self.guard_pid
            if pid is not None and psutil.virtual_memory().available < self.guard:
                try:
                    psutil.Process(pid).kill()
                    self.guard_fired = True
                except psutil.Error:
                    pass
            self._stop.wait(self.interval)

    @contextmanager
    def phase(self, name: str = "") -> Iterator[_Mark]:
        base = self.total_rss()
        mark = _Mark(time.perf_counter(), base, base)
        with self._lock:
            self._marks.append(mark)
        try:
            yield mark
        finally:
            last = self.total_rss()
            with self._lock:
                self._marks.remove(mark)
                mark.peak = max(mark.peak, last)


# --------------------------------------------------------------------------- map_overlap worker side

_MODELS: dict[str, Any] = {}
_MODEL_LOCK = threading.Lock()


def _worker_threads() -> int:
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError):
        return 0


def cached_model(path: str) -> Any:
    """The Keras model at ``path``, loaded once per process, TF threads sized to the worker's."""
    with _MODEL_LOCK:
        model = _MODELS.get(path)
        if model is None:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            import tensorflow as tf

            threads = _worker_threads()
            if threads:
                try:
                    tf.config.threading.set_intra_op_parallelism_threads(threads)
                    tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
                except RuntimeError:
                    pass  # TF already running in this process
            import keras

            model = keras.saving.load_model(path, safe_mode=True)
            _MODELS[path] = model
        return model


def predict_block(block: np.ndarray, model_path: str) -> np.ndarray:
    """``map_overlap`` block function: the model on one haloed ``(rows, cols, bands)`` block.

    Returns the first output channel as ``(rows, cols)`` (the demo model and the U-Net have one).
    """
    model = cached_model(model_path)
    out = model(np.ascontiguousarray(block[None], dtype=np.float32), training=False)
    return np.asarray(out)[0, :, :, 0]


# --------------------------------------------------------------------------- scenes

#: The scenes ``bench.py --scene`` knows.
SCENES = ("clusters", "lines")


def make_scene(scene: str, size: int, bands: int, occupancy: float | None, tile: int, seed: int) -> Any:
    """The benchmark's scene as a :class:`tilepipe.sources.coo.CooScene` (rows, cols, bands), row-major.

    ``clusters``: :func:`tilepipe.sources.synthetic_scene` (``occupancy`` of the tiles hold
    clustered points); ``lines``: :func:`lines_scene` (``occupancy`` unused).
    """
    if scene == "lines":
        return lines_scene(size, bands, seed)
    from tilepipe.sources import synthetic_scene

    assert occupancy is not None
    return synthetic_scene((size, size), bands=bands, occupancy=occupancy, tile_size=(tile, tile), seed=seed)


def _segment(r0: float, c0: float, r1: float, c1: float, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of a ``width``-px segment: one pixel per step along its major axis, ``width`` across."""
    n = int(max(abs(r1 - r0), abs(c1 - c0))) + 1
    t = np.linspace(0.0, 1.0, n)
    rr = np.round(r0 + t * (r1 - r0)).astype(np.int64)
    cc = np.round(c0 + t * (c1 - c0)).astype(np.int64)
    offsets = np.arange(width) - width // 2
    if abs(c1 - c0) >= abs(r1 - r0):  # mostly along the columns: thick across the rows
        return (rr[:, None] + offsets).ravel(), np.repeat(cc, width)
    return np.repeat(rr, width), (cc[:, None] + offsets).ravel()


def lines_scene(size: int, bands: int, seed: int, *, lines: tuple[int, int] = (6, 10),
                points: tuple[int, int] = (200, 500)) -> Any:
    """Linear features: polylines crossing the whole ``size x size`` scene, plus scattered points.

    From ``seed`` alone: ``lines`` (inclusive range) polylines, each from one edge to the
    opposite one through 2 - 4 segments (its ends anywhere on those edges, the vertices
    between evenly spaced and up to 1/16 of the scene off the straight line), 1 - 3 px wide; then ``points`` (inclusive
    range) single pixels anywhere. Every pixel holds a value in each band, uniform in (0, 1].
    Roads or rivers on an otherwise empty raster: almost every tile is busy, few pixels are.
    """
    from tilepipe.sources.coo import CooScene

    rng = np.random.default_rng(seed)
    rr_all, cc_all = [], []
    for _ in range(int(rng.integers(lines[0], lines[1] + 1))):
        segments, width = int(rng.integers(2, 5)), int(rng.integers(1, 4))
        along = np.linspace(0, size - 1, segments + 1)
        ends = rng.uniform(0, size - 1, 2)
        jitter = rng.uniform(-size / 16, size / 16, segments + 1) * (np.arange(segments + 1) % segments > 0)
        across = np.clip(np.linspace(ends[0], ends[1], segments + 1) + jitter, 0, size - 1)
        if rng.random() < 0.5:  # left to right
            vr, vc = across, along
        else:  # top to bottom
            vr, vc = along, across
        for k in range(segments):
            rr, cc = _segment(vr[k], vc[k], vr[k + 1], vc[k + 1], width)
            rr_all.append(rr)
            cc_all.append(cc)
    n_points = int(rng.integers(points[0], points[1] + 1))
    rr_all.append(rng.integers(0, size, n_points))
    cc_all.append(rng.integers(0, size, n_points))
    rr, cc = np.concatenate(rr_all), np.concatenate(cc_all)
    ok = (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size)
    pix = np.unique(rr[ok] * size + cc[ok])  # row-major, each pixel once
    values = (1.0 - rng.random((pix.size, bands))).astype(np.float32)
    return CooScene((size, size, bands), np.repeat(pix // size, bands), np.repeat(pix % size, bands),
                    np.tile(np.arange(bands, dtype=np.int64), pix.size), values.reshape(-1))



def write_dense_zarr(coo: Any, path: str, tile: int, shape: tuple[int, int, int] | None = None) -> int:
    """Write the COO scene as a dense Zarr v3 array ``(rows, cols, bands)`` chunked ``(tile, tile, bands)``.

    Chunk by chunk from the COO (never the whole dense array); chunks without a
    value are left unwritten (they read as the fill value 0, as zarr's default
    ``write_empty_chunks=False`` would leave them anyway). ``shape`` (default the
    scene's) may be larger: the scene padded with zeros at the bottom/right, as a
    strided model's reference runs on it. Returns chunks written.
    """
    import zarr

    rows, cols, bands = shape if shape is not None else coo.shape
    arr = zarr.create_array(path, shape=(rows, cols, bands), chunks=(tile, tile, bands), dtype="float32",
                            fill_value=0.0, overwrite=True)
    nx = -(-cols // tile)
    tid = (coo.rows // tile) * nx + coo.cols // tile
    order = np.argsort(tid, kind="stable")
    tid_sorted = tid[order]
    ids, starts = np.unique(tid_sorted, return_index=True)
    stops = np.append(starts[1:], tid_sorted.size)
    for t, a, b in zip(ids, starts, stops, strict=True):
        sel = order[a:b]
        r0, c0 = int(t // nx) * tile, int(t % nx) * tile
        h, w = min(tile, rows - r0), min(tile, cols - c0)
        block = np.zeros((h, w, bands), dtype=np.float32)
        block[coo.rows[sel] - r0, coo.cols[sel] - c0, coo.bands[sel]] = coo.values[sel]
        arr[r0 : r0 + h, c0 : c0 + w, :] = block
    return int(ids.size)


def _first_channel(path: str, component: str | None) -> Any:
    """A result as a ``(rows, cols)`` view: a 2-D array (map_overlap, naive) as it is,
    a tilepipe ``(band, rows, cols)`` array (``component`` of a group) at band 0."""
    import zarr

    arr = zarr.open_group(path, mode="r")[component] if component else zarr.open_array(path, mode="r")
    if arr.ndim == 2:
        return lambda r, c: arr[r, c]
    return lambda r, c: arr[0, r, c]


def max_rel_err(x_path: str, x_component: str | None, ref_path: str, ref_component: str | None,
                tile: int) -> dict[str, Any]:
    """``max |x - ref| / max |ref|`` between two results, read block by block.

    Each is a 2-D Zarr array (``component`` None) or the ``component`` of a group
    holding ``(band, rows, cols)`` (tilepipe's result; band 0 is compared). Returns
    ``{"rel": ..., "max_abs": ..., "max_ref": ...}``; different shapes are an error
    (``rel`` infinite and ``"error"`` saying so), never a silent partial comparison.
    """
    import zarr

    shapes = []
    for path, comp in ((x_path, x_component), (ref_path, ref_component)):
        arr = zarr.open_group(path, mode="r")[comp] if comp else zarr.open_array(path, mode="r")
        shapes.append(tuple(arr.shape[-2:]))
    if shapes[0] != shapes[1]:
        return {"rel": float("inf"), "max_abs": None, "max_ref": None,
                "error": f"shapes differ: {shapes[0]} vs {shapes[1]}"}
    x, y = _first_channel(x_path, x_component), _first_channel(ref_path, ref_component)
    rows, cols = shapes[0]
    err = 0.0
    ref = 0.0
    step = 4 * tile
    for r in range(0, rows, step):
        for c in range(0, cols, step):
            window = (slice(r, r + step), slice(c, c + step))
            a = np.asarray(x(*window), dtype=np.float64)
            b = np.asarray(y(*window), dtype=np.float64)
            diff = float(np.max(np.abs(a - b)))
            err = max(err, diff if np.isfinite(diff) else float("inf"))  # a NaN must not compare away
            ref = max(ref, float(np.max(np.abs(b))))
    return {"rel": err / ref if ref > 0 else err, "max_abs": err, "max_ref": ref}


# --------------------------------------------------------------------------- formatting


def scrub_paths(text: str) -> str:
    """Results name no path of the machine they ran on: the repository becomes ``.``,
    temporary folders ``<tmp>`` and the home folder ``~``."""
    import re
    import tempfile

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = text.replace(repo + os.sep, "").replace(repo, ".")
    text = re.sub(re.escape(tempfile.gettempdir()) + r"/[^\s\"',;)]*", "<tmp>", text)
    return text.replace(os.path.expanduser("~"), "~")


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` with machine paths scrubbed (see :func:`scrub_paths`)."""
    with open(path, "w") as fh:
        fh.write(scrub_paths(text))


def gb(n: float | None) -> str:
    return "-" if n is None else f"{n / GB:.2f}"


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def library_identity() -> dict[str, Any]:
    """Which tilepipe is measured: its folder, version and git commit.

    A snapshot folder (``git archive HEAD tilepipe | tar -x -C SNAP`` with the commit
    in ``SNAP/COMMIT``, run with ``PYTHONPATH=SNAP``) pins the library while its
    repository moves on; otherwise the commit of the checkout and whether
    ``tilepipe/`` differs from it.
    """
    import subprocess

    import tilepipe

    pkg = os.path.dirname(os.path.abspath(tilepipe.__file__))
    root = os.path.dirname(pkg)
    # The folder by its name only: a result file names no path of the machine it ran on.
    out: dict[str, Any] = {"path": os.path.basename(pkg), "version": tilepipe.__version__, "commit": None,
                           "dirty": None}
    stamp = os.path.join(root, "COMMIT")
    if os.path.exists(stamp):
        with open(stamp) as fh:
            out.update(commit=fh.read().strip(), dirty=False)
        return out
    try:
        out["commit"] = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                                       check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "tilepipe"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        out["dirty"] = bool(changed)
    except (OSError, subprocess.CalledProcessError):
        pass
    return out


def machine() -> dict[str, Any]:
    import platform

    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / GB, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
