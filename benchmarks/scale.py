"""Scene size costs nothing: the same occupied tiles on a small and on a huge grid.

For each grid side (px) in ``--grids``, in a fresh child process (so that its peak memory is its
own): the same ``--tiles`` occupied tiles of ``--points`` points each (1024 px tiles, placed
on the same tile coordinates of every grid, scattered over the small grid's extent) are ingested
from COO arrays and run through a 2-layer 3x3 model on a 2-worker embedded cluster. Recorded:
ingest and run seconds (client wall time), the client's peak RSS, the Dask tasks the run sent,
and the files each store holds. The bar (issue 16): the largest grid within 2x of the smallest,
client peak under 1.5 GB, tasks independent of the grid.

    python benchmarks/scale.py                                  # 65,536^2 and 4,194,304^2, 400 tiles
    python benchmarks/scale.py --grids 65536,524288 --tiles 40  # the issue's first table

Results go to ``benchmarks/results/scale-<tiles>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TILE = 1024


def occupied_tiles(count: int, small_grid: int, seed: int = 0) -> np.ndarray:
    """``count`` distinct tile coordinates ``(row, col)`` over a ``small_grid`` px grid, away from its edges."""
    rng = np.random.default_rng(seed)
    side = small_grid // TILE
    cells = rng.choice((side - 2) * (side - 2), size=count, replace=False)
    return np.stack([cells // (side - 2) + 1, cells % (side - 2) + 1], axis=1)


def points(tiles: np.ndarray, per_tile: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``per_tile`` distinct random pixels inside each tile (indices ``(row, col, band)``) and their values."""
    rng = np.random.default_rng(seed)
    idx = []
    for r, c in tiles:
        flat = rng.choice(TILE * TILE, size=per_tile, replace=False)
        idx.append(np.stack([r * TILE + flat // TILE, c * TILE + flat % TILE, np.zeros(per_tile, np.int64)], axis=1))
    coords = np.concatenate(idx).astype(np.int64)
    return coords, rng.normal(size=len(coords)).astype(np.float32) + 1.0


def files(path: Path) -> int:
    return sum(1 for p in path.rglob("*") if p.is_file())


def child(args: argparse.Namespace) -> None:
    """One grid: ingest and run, timed; prints one JSON line."""
    import keras
    from distributed import Client, LocalCluster, get_task_stream

    import tilepipe

    work = Path(args.work)
    grid = args.grid
    tiles = occupied_tiles(args.tiles, args.small)
    coords, values = points(tiles, args.points)
    model_path = work / "model.keras"
    if not model_path.exists():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((None, None, 1)), keras.layers.Conv2D(4, 3, padding="same"),
                                  keras.layers.Conv2D(1, 3, padding="same")])
        model.save(model_path)
    scene, result = work / f"scene-{grid}.zarr", work / f"result-{grid}.zarr"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        started = time.perf_counter()
        tilepipe.ingest((coords, values, (grid, grid, 1)), scene, tile_size=TILE, halo=2, overwrite=True,
                        client=client)
        ingest_s = time.perf_counter() - started
        started = time.perf_counter()
        with get_task_stream(client) as stream:
            report = tilepipe.run(scene, model_path, result, client=client, overwrite=True)
        run_s = time.perf_counter() - started
        tasks = len(stream.data)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: kB)
    print(json.dumps({
        "grid": grid, "tiles_total": report.tiles_total, "occupied": args.tiles, "points": len(coords),
        "ingest_s": round(ingest_s, 2), "run_s": round(run_s, 2), "total_s": round(ingest_s + run_s, 2),
        "client_peak_mib": round(peak), "tasks": tasks, "computed": report.computed,
        "scene_files": files(scene), "result_files": files(result),
    }), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", default="65536,4194304", help="grid sides, px, comma-separated")
    parser.add_argument("--tiles", type=int, default=400, help="occupied tiles")
    parser.add_argument("--points", type=int, default=1500, help="points per occupied tile")
    parser.add_argument("--work", default="/tmp/tilepipe-scale", help="where the stores go")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--grid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--small", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    grids = [int(g) for g in args.grids.split(",")]
    os.makedirs(args.work, exist_ok=True)
    rows = []
    for grid in grids:
        cmd = [sys.executable, __file__, "--child", "--grid", str(grid), "--small", str(min(grids)),
               "--tiles", str(args.tiles), "--points", str(args.points), "--work", args.work]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        if out.returncode or not lines:
            sys.exit(f"grid {grid}: the child failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(lines[-1]))
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    table = ["| grid (px) | tiles | ingest (s) | run (s) | total vs smallest | client peak (MiB) | Dask tasks | "
             "files (scene / result) |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        table.append(f"| {row['grid']:,}^2 | {row['tiles_total']:,} | {row['ingest_s']} | {row['run_s']} | "
                     f"{row['total_s'] / base['total_s']:.2f}x | {row['client_peak_mib']} | {row['tasks']} | "
                     f"{row['scene_files']:,} / {row['result_files']:,} |")
    print("\n".join(table))
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    name = f"scale-{args.tiles}"
    (results / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n")
    (results / f"{name}.md").write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
