#!/usr/bin/env python
"""A 65,536 x 65,536 x 4 sparse scene end to end: generate, ingest, run, export, in one invocation.

Each phase is timed and its peak RSS (summed over this process and all its children,
the Dask workers included, sampled every 50 ms) recorded, with the peak of each
process. What whole-scene densify would need is computed, not attempted. Results go to
``results/gigapixel-<size>.json`` and ``.md``; the result is written after every phase,
so a run stopped by ``--max-minutes`` still says how far it got.

    python benchmarks/gigapixel.py                      # 65536 x 65536, occupancy 0.02
    python benchmarks/gigapixel.py --size 16384         # a smaller shake-out
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import benchlib  # noqa: E402
from benchlib import GB, RssSampler, fmt, markdown_table  # noqa: E402

TARGET_PEAK_GB = 2.0  # the bar: a 65,536 x 65,536 sparse scene runs in < 2 GB RSS (all processes)


def _du(path: str) -> int:
    try:
        out = subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=True).stdout
        return int(out.split()[0])
    except (subprocess.CalledProcessError, ValueError, IndexError, FileNotFoundError):
        return 0


def naive_bytes(size: int, bands: int, filters: int = 16) -> dict[str, float]:
    """What ``model(tf.sparse.to_dense(scene)[None])`` would hold: dense input, two 16-wide activations, output."""
    px = size * size
    return {
        "dense_input_gb": px * bands * 4 / GB,
        "one_activation_gb": px * filters * 4 / GB,
        "peak_estimate_gb": px * 4 * (bands + 2 * filters + 1) / GB,
    }


class Runner:
    """Runs the phases, records them, and stops cleanly at the deadline."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sampler = RssSampler(pss=True).start()
        self.t_start = time.perf_counter()
        self.deadline = self.t_start + args.max_minutes * 60
        self.doc: dict[str, Any] = {
            "args": vars(args),
            "machine": benchlib.machine(),
            "tilepipe": benchlib.library_identity(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "naive_would_need": naive_bytes(args.size, args.bands),
            "phases": [],
            "status": "running",
        }
        self.current: dict[str, Any] | None = None
        self._lock = threading.Lock()
        os.makedirs(args.out, exist_ok=True)
        stem = f"gigapixel-{args.size}" + (f"-batch{args.batch_size}" if args.batch_size else "")
        self.json_path = os.path.join(args.out, stem + ".json")
        self.md_path = os.path.join(args.out, stem + ".md")
        threading.Thread(target=self._watchdog, daemon=True).start()

    def phase(self, name: str, fn: Any) -> Any:
        rec: dict[str, Any] = {"phase": name}
        with self._lock:
            self.current = rec
            self.current["_t0"] = time.perf_counter()
        print(f"{name} ...", flush=True)
        self.sampler.reset_process_peaks()
        with self.sampler.phase(name) as mark:
            t0 = time.perf_counter()
            value = fn()
            rec["wall_seconds"] = time.perf_counter() - t0
        rec.update(peak_rss=mark.peak, peak_pss=mark.peak_pss, baseline_rss=mark.baseline,
                   processes=self.sampler.process_peaks())
        with self._lock:
            self.current = None
            rec.pop("_t0", None)
            self.doc["phases"].append(rec)
        print(f"{name}: {rec['wall_seconds']:.1f} s, peak RSS {mark.peak / GB:.2f} GB "
              f"(before {mark.baseline / GB:.2f} GB)", flush=True)
        self.save()
        return value

    def _watchdog(self) -> None:
        while time.perf_counter() < self.deadline:
            time.sleep(1.0)
        with self._lock:
            cur = self.current
            if cur is not None:
                cur["wall_seconds"] = time.perf_counter() - cur.pop("_t0", time.perf_counter())
                cur["stopped"] = f"stopped at the {self.args.max_minutes:g}-minute limit"
                cur["peak_rss"] = self.sampler.overall_peak
                self.doc["phases"].append(cur)
            self.doc["status"] = f"stopped at the {self.args.max_minutes:g}-minute limit"
        self.save()
        print(self.doc["status"], flush=True)
        import psutil

        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()
        os._exit(3)

    def save(self) -> None:
        self.doc["elapsed_seconds"] = time.perf_counter() - self.t_start
        self.doc["overall_peak_rss"] = self.sampler.overall_peak
        self.doc["overall_peak_pss"] = self.sampler.overall_peak_pss
        benchlib.write_text(self.json_path, json.dumps(self.doc, indent=1, default=str))
        benchlib.write_text(self.md_path, render_markdown(self.doc))


def render_markdown(doc: dict[str, Any]) -> str:
    a = doc["args"]
    size = a["size"]
    nv = doc["naive_would_need"]
    rows = []
    for p in doc["phases"]:
        top = sorted(p.get("processes", []), key=lambda q: -q["peak_rss"])[:3]
        rows.append([
            p["phase"], fmt(p.get("wall_seconds"), ".1f") + (" (stopped)" if p.get("stopped") else ""),
            benchlib.gb(p.get("peak_rss")), benchlib.gb(p.get("peak_pss")), benchlib.gb(p.get("baseline_rss")),
            ", ".join(f"{q['name']} {q['peak_rss'] / GB:.2f}" for q in top),
        ])
    peak = doc.get("overall_peak_rss", 0)
    run_peak = max((p.get("peak_rss", 0) for p in doc["phases"] if p["phase"] in ("cluster start", "run")),
                   default=0)
    run_pss = max((p.get("peak_pss", 0) for p in doc["phases"] if p["phase"] in ("cluster start", "run")),
                  default=0)
    lib = doc.get("tilepipe", {})
    lines = [
        f"# tilepipe gigapixel run, {size:,} x {size:,} x {a['bands']}, occupancy {a['occupancy']:g}, "
        f"tile {a['tile_size']}, batch {a.get('batch_size') or 'default (auto)'}",
        "",
        f"tilepipe {lib.get('version')} at commit {lib.get('commit')}{' (dirty)' if lib.get('dirty') else ''}, "
        f"from {lib.get('path')}; {doc.get('started')}.",
        "",
        f"Status: {doc['status']}; {doc.get('elapsed_seconds', 0):.0f} s in all. Machine: "
        f"{doc['machine']['cpus']} CPUs, {doc['machine']['memory_gb']} GB; LocalCluster {a['workers']} workers x "
        "1 thread (processes). Peak RSS: sum over this process and all its children, sampled every 50 ms.",
        "",
        markdown_table(["phase", "wall s", "peak RSS GB (all)", "peak PSS GB (all)", "RSS before GB",
                        "largest processes (GB)"], rows),
        "",
        f"Overall peak RSS (all processes): {peak / GB:.2f} GB; during the run phase: {run_peak / GB:.2f} GB "
        f"(target < {TARGET_PEAK_GB:g} GB: {'ok' if 0 < run_peak < TARGET_PEAK_GB * GB else 'MISS'}). "
        f"As PSS (shared library pages counted once): peak {doc.get('overall_peak_pss', 0) / GB:.2f} GB, "
        f"run phase {run_pss / GB:.2f} GB "
        f"(target: {'ok' if 0 < run_pss < TARGET_PEAK_GB * GB else 'MISS'}). GB here are GiB.",
        f"Whole-scene densify + model would need about {nv['peak_estimate_gb']:.0f} GB "
        f"(dense input {nv['dense_input_gb']:.0f} GB, one 16-filter activation {nv['one_activation_gb']:.0f} GB): "
        "not attempted.",
        "",
    ]
    if doc.get("sizes"):
        lines.append("On disk: " + ", ".join(f"{k} {v / GB:.3f} GB" for k, v in doc["sizes"].items()))
        lines.append("")
    if doc.get("report"):
        r = doc["report"]
        lines.append(f"Run report: tiles {r['tiles_total']} / computed {r['computed']} / empty {r['empty']}; "
                     f"{r['megapixels_per_second']:.0f} Mpx/s; model seconds (summed over tasks) "
                     f"{r['model_seconds']:.1f}.")
        lines.append("")
    if doc.get("check"):
        lines.append(f"Check: {doc['check']}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=65536)
    p.add_argument("--bands", type=int, default=4)
    p.add_argument("--tile-size", type=int, default=1024)
    p.add_argument("--occupancy", type=float, default=0.02)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmp", default="/tmp", help="folder for the scratch directory")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--max-minutes", type=float, default=25.0)
    p.add_argument("--batch-size", type=int, default=None, help="tiles per model call (tilepipe's default: 8)")
    p.add_argument("--profile", action="store_true",
                   help="py-spy (50 Hz, --idle) on the harness and the workers during the run phase")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = p.parse_args(argv)

    logging.getLogger("distributed").setLevel(logging.ERROR)
    run = Runner(args)
    tmp = tempfile.mkdtemp(prefix="tilepipe-giga-", dir=args.tmp)
    run.doc["scratch"] = tmp
    size, tile = args.size, args.tile_size
    try:
        import bench

        import tilepipe
        from tilepipe.demo import DEMO_CRS, DEMO_TRANSFORM
        from tilepipe.sources import synthetic_scene

        model_path = os.path.join(tmp, "model.keras")
        # In a subprocess: this process (tilepipe's client) needs no TensorFlow.
        built = run.phase("build model (subprocess)", lambda: bench.run_child(
            "model", {"bands": args.bands, "model": model_path}, run.sampler))
        if "error" in built:
            raise RuntimeError(f"building the model failed: {built['error']}")
        halo = int(built["halo"])
        held = {"coo": run.phase("generate COO", lambda: synthetic_scene(
            (size, size), bands=args.bands, occupancy=args.occupancy, tile_size=(tile, tile), seed=args.seed))}
        run.doc["nonzero_entries"] = int(held["coo"].values.size)
        scene_path = os.path.join(tmp, "scene.zarr")
        # halo = the model's footprint, what model=model_path would derive (with TensorFlow in this process)
        run.phase("ingest", lambda: tilepipe.ingest(held["coo"], scene_path, tile_size=tile, halo=halo,
                                                   crs=DEMO_CRS, transform=DEMO_TRANSFORM))
        held.clear()
        idx = tilepipe.open_scene(scene_path).index()
        run.doc.update(tiles_total=int(idx.size), tiles_nonempty=int((idx > 0).sum()))

        from distributed import Client, LocalCluster

        def start() -> tuple[Any, Any]:
            cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                                   host="127.0.0.1", dashboard_address=None, silence_logs=logging.CRITICAL)
            return cluster, Client(cluster)

        cluster, client = run.phase("cluster start", start)
        result_path = os.path.join(tmp, "result.zarr")
        spy = None
        if args.profile:
            pids = {"harness": os.getpid()}
            pids.update({f"worker{i}": pid for i, pid in enumerate(client.run(os.getpid).values())})
            prof_dir = os.path.join(args.out, "profiles")
            os.makedirs(prof_dir, exist_ok=True)
            spy = bench.PySpy(pids, prof_dir, f"gigapixel-{size}")
        try:
            report = run.phase("run", lambda: tilepipe.run(scene_path, model_path, result_path, client=client,
                                                                batch_size=args.batch_size))
        finally:
            client.close()
            cluster.close()
        if spy is not None:
            files = spy.stop()
            text = "\n\n".join(
                bench.summarize_collapsed(path, "run_model", None) if name == "harness"
                else bench.summarize_collapsed(path, "run_tiles", bench.WORKER_PHASES) for name, path in files.items())
            with open(os.path.join(args.out, "profiles", f"pyspy-gigapixel-{size}-summary.txt"), "w") as fh:
                fh.write(text)
            run.doc["profile"] = sorted(files.values())
        run.doc["report"] = report.to_dict()
        tif = os.path.join(tmp, "result.tif")
        run.phase("export GeoTIFF", lambda: tilepipe.export_geotiff(result_path, tif))
        run.doc["sizes"] = {"scene store": _du(scene_path), "result store": _du(result_path),
                            "GeoTIFF": os.path.getsize(tif)}
        run.doc["check"] = check(result_path, tif, idx, tile)
        run.doc["harness_imported_tensorflow"] = "tensorflow" in sys.modules
        run.doc["status"] = "complete"
    except Exception as exc:
        run.doc["status"] = f"failed: {type(exc).__name__}: {exc}"
        raise
    finally:
        run.save()
        run.sampler.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(render_markdown(run.doc))
    print(f"written: {run.json_path}, {run.md_path}")
    return 0


def check(result_path: str, tif: str, index: np.ndarray, tile: int) -> str:
    """The GeoTIFF equals the result store on an occupied tile and an empty one."""
    import rasterio
    from rasterio.windows import Window

    import tilepipe

    data = tilepipe.open_result(result_path).data
    occupied = np.argwhere(index > 0)
    empty = np.argwhere(index == 0)
    picks = [tuple(occupied[len(occupied) // 2])] if len(occupied) else []
    picks += [tuple(empty[len(empty) // 2])] if len(empty) else []
    worst = 0.0
    with rasterio.open(tif) as ds:
        shape = (ds.count, ds.height, ds.width)
        for r, c in picks:
            r0, c0 = int(r) * tile, int(c) * tile
            h, w = min(tile, shape[1] - r0), min(tile, shape[2] - c0)
            a = ds.read(1, window=Window(c0, r0, w, h))
            b = np.asarray(data[0, r0 : r0 + h, c0 : c0 + w])
            worst = max(worst, float(np.max(np.abs(a - b))))
    return (f"GeoTIFF {shape} vs result store on tiles {[(int(r), int(c)) for r, c in picks]}: "
            f"max abs diff {worst:.1e}")


if __name__ == "__main__":
    sys.exit(main())
