"""Memory that does not grow with the scene: a 32,768 x 32,768 x 4 sparse scene (16 GiB dense).

Marked slow (minutes on 2 cores): ``python -m pytest -m slow``. The benchmark
``benchmarks/gigapixel.py`` runs the 65,536-pixel scene and records its figures.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

pytestmark = pytest.mark.slow


class _PeakRSS:
    """Peak memory of this process and all its children together, sampled every 50 ms.

    Summed as PSS (proportional set size): a page shared by several processes
    (TensorFlow's libraries in every worker) counts once in all, not once per
    process as a sum of RSS would count it. ``peak_rss`` keeps that sum too.
    """

    def __init__(self) -> None:
        self.peak = 0
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = total_rss = 0
            for proc in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):  # a child may exit between listing and reading
                    info = proc.memory_full_info()
                    total += info.pss
                    total_rss += info.rss
            self.peak = max(self.peak, total)
            self.peak_rss = max(self.peak_rss, total_rss)
            time.sleep(0.05)

    def __enter__(self) -> _PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_large_sparse_scene_runs_in_bounded_memory(tmp_path: Path) -> None:
    import subprocess
    import sys

    import tilepipe
    from tilepipe.sources import synthetic_scene
    from tilepipe.store import ResultStore

    size, tile = 32_768, 1024
    # The model is built in another process: this one submits work and needs no TensorFlow.
    subprocess.run([sys.executable, "-c", "import sys; from tilepipe.demo import build_demo_model; "
                    "build_demo_model(4).save(sys.argv[1])", str(tmp_path / "m.keras")], check=True)
    with _PeakRSS() as rss:
        coo = synthetic_scene((size, size), bands=4, occupancy=0.02, tile_size=(tile, tile), seed=1)
        tilepipe.ingest(coo, tmp_path / "s.zarr", tile_size=tile, model=tmp_path / "m.keras")
        report = tilepipe.run(tmp_path / "s.zarr", tmp_path / "m.keras", tmp_path / "r.zarr", n_workers=2)
    assert report.tiles_total == (size // tile) ** 2
    assert rss.peak < 2 * 2**30, f"peak memory of all processes {rss.peak / 2**30:.2f} GiB (PSS)"
    from tilepipe.model._tf import keras

    model = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    # Spot-check one occupied tile against the dense model on its own neighbourhood.
    occupied = np.argwhere(tilepipe.open_scene(tmp_path / "s.zarr").index() > 0)[0]
    r0, c0 = (int(v) * tile for v in occupied)
    win = (slice(max(r0 - 8, 0), min(r0 + tile + 8, size)), slice(max(c0 - 8, 0), min(c0 + tile + 8, size)))
    dense = np.zeros((win[0].stop - win[0].start, win[1].stop - win[1].start, 4), np.float32)
    sel = (coo.rows >= win[0].start) & (coo.rows < win[0].stop) & (coo.cols >= win[1].start) & (coo.cols < win[1].stop)
    dense[coo.rows[sel] - win[0].start, coo.cols[sel] - win[1].start, coo.bands[sel]] = coo.values[sel]
    ref = np.asarray(model(dense[None]))[0, :, :, 0]
    # The tile's core lies 8 px inside the neighbourhood's own edges (or on the scene's): the demo
    # model's halo is 3 px, so the reference is exact there.
    rr = slice(r0 - win[0].start, r0 - win[0].start + tile)
    cc = slice(c0 - win[1].start, c0 - win[1].start + tile)
    got = np.asarray(ResultStore.open(tmp_path / "r.zarr").data[0, win[0], win[1]])
    assert np.abs(got[rr, cc] - ref[rr, cc]).max() / np.abs(ref[rr, cc]).max() <= 1e-5
