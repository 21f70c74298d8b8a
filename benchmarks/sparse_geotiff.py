#!/usr/bin/env python
"""Ingest of a sparse GeoTIFF against the same data in a dense one: the left-out blocks cost nothing.

Writes a ``size`` x ``size`` uint8 GeoTIFF (DEFLATE, ``block``-px tiles) whose ``fraction``
of blocks hold data (a few percent of their pixels non-zero, like rasterised detections),
twice: dense (every block in the file, the empty ones as compressed zeros) and sparse
(``SPARSE_OK=TRUE``: only the blocks with data). Also a one-block file, whose ingest is the
fixed cost (cluster round trips, store creation, hashing). Each is ingested into a fresh
scene store with the same LocalCluster, ``--repeat`` times in turn (best of each kept);
the two stores must hold the same index. Prints the times and the dense / sparse ratio net
of the fixed cost (issue 16's target: >= 10x), and writes ``results/sparse-geotiff-<layout>.json``
and ``.md``.

``--layout scattered`` places the data blocks uniformly at random (each one occupies the
index block, 4096 px a side, and the tiles around it); ``clustered`` in a few compact
patches, as detections over a few cities or fields would be.

    python benchmarks/sparse_geotiff.py                      # 65536 x 65536, 1 % of 512-px blocks, scattered
    python benchmarks/sparse_geotiff.py --layout clustered
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from benchlib import library_identity, machine, markdown_table  # noqa: E402


def data_blocks(grid: int, count: int, layout: str, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct ``(row, col)`` blocks of a ``grid`` x ``grid`` block grid, placed by ``layout``."""
    if layout == "scattered":
        flat = rng.choice(grid * grid, count, replace=False)
        return np.stack([flat // grid, flat % grid], axis=1)
    patches = 4
    side = int(np.ceil(np.sqrt(count / patches)))
    chosen: set[tuple[int, int]] = set()
    while len(chosen) < count:
        r0, c0 = rng.integers(0, grid - side, 2)
        for r in range(r0, r0 + side):
            for c in range(c0, c0 + side):
                if len(chosen) < count:
                    chosen.add((int(r), int(c)))
    return np.array(sorted(chosen))


def write(path: str, size: int, block: int, blocks: np.ndarray, *, sparse: bool, seed: int) -> float:
    """Write the scene; return the seconds it took. Both files get the same pixels (same ``seed``)."""
    import rasterio
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=1, dtype="uint8", tiled=True,
                       blockxsize=block, blockysize=block, compress="deflate", SPARSE_OK=sparse,
                       crs="EPSG:32618", transform=(10.0, 0.0, 500000.0, 0.0, -10.0, 4600000.0)) as dst:
        for r, c in blocks:
            values = rng.integers(1, 256, (block, block), dtype=np.uint8)
            values[rng.random((block, block)) >= 0.05] = 0  # 5 % of the block's pixels
            dst.write(values, 1, window=Window(int(c) * block, int(r) * block, block, block))
    # Without SPARSE_OK, GDAL writes every block never written, as compressed zeros, when it closes the file.
    return time.perf_counter() - started


def held_blocks(path: str) -> int:
    """Blocks the file holds (its tile table), as GDAL tells them."""
    import rasterio
    from rasterio.errors import RasterBlockError

    held = 0
    with rasterio.open(path) as src:
        rows, cols = src.block_shapes[0]
        for i in range(-(-src.height // rows)):
            for j in range(-(-src.width // cols)):
                with contextlib.suppress(RasterBlockError):  # a left-out block has no size
                    held += bool(src.block_size(1, i, j))
    return held


def best(repeat: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return min(times), out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=65536)
    p.add_argument("--block", type=int, default=512)
    p.add_argument("--fraction", type=float, default=0.01)
    p.add_argument("--tile-size", type=int, default=1024)
    p.add_argument("--layout", choices=("scattered", "clustered"), default="scattered")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tmp", default="/tmp", help="folder for the scratch directory")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = p.parse_args(argv)
    logging.getLogger("distributed").setLevel(logging.ERROR)

    import tilepipe
    from tilepipe.sources import probe_stack, raster_block_occupancy, raster_tile_occupancy
    from tilepipe.store.info import SceneInfo

    size, block = args.size, args.block
    grid = -(-size // block)
    blocks = data_blocks(grid, max(1, round(args.fraction * grid * grid)), args.layout,
                         np.random.default_rng(args.seed))
    tmp = tempfile.mkdtemp(prefix="tilepipe-sparse-tiff-", dir=args.tmp)
    shown = {k: v for k, v in vars(args).items() if k not in ("tmp", "out")}  # no path of this machine
    doc: dict[str, Any] = {"args": shown, "machine": machine(), "library": library_identity(),
                           "data_blocks": len(blocks), "blocks": grid * grid}
    try:
        files = {"dense": os.path.join(tmp, "dense.tif"), "sparse": os.path.join(tmp, "sparse.tif"),
                 "one block": os.path.join(tmp, "one.tif")}
        doc["write_s"] = {
            "dense": round(write(files["dense"], size, block, blocks, sparse=False, seed=args.seed), 2),
            "sparse": round(write(files["sparse"], size, block, blocks, sparse=True, seed=args.seed), 2),
            "one block": round(write(files["one block"], block, block, np.zeros((1, 2), int), sparse=False,
                                     seed=args.seed), 2),
        }
        doc["file_mb"] = {k: round(os.path.getsize(v) / 2**20, 2) for k, v in files.items()}
        doc["held_blocks"] = {k: held_blocks(v) for k, v in files.items()}
        stack = probe_stack(files["sparse"])
        info = SceneInfo(shape=stack.shape, bands=1, dtype="uint8", tile_size=(args.tile_size, args.tile_size),
                         halo=16)
        started = time.perf_counter()
        occupied = raster_block_occupancy(stack, info)
        doc["occupancy_s"] = round(time.perf_counter() - started, 3)
        tiles = raster_tile_occupancy(stack, info)
        assert occupied is not None and tiles is not None
        doc["index_blocks"] = {"occupied": int(occupied.sum()), "total": int(occupied.size)}
        doc["tiles"] = {"occupied": int(tiles.sum()), "total": int(tiles.size)}

        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, silence_logs=logging.CRITICAL)
        client = Client(cluster)
        times: dict[str, list[float]] = {k: [] for k in files}
        stores: dict[str, Any] = {}
        try:
            # Untimed: the workers' first task imports rasterio and zarr.
            tilepipe.ingest(files["one block"], os.path.join(tmp, "warm-up.zarr"), tile_size=args.tile_size,
                            halo=16, client=client, overwrite=True)
            for _ in range(args.repeat):  # in turn, so that a busy spell of the machine hits all three
                for name, path in files.items():
                    store = os.path.join(tmp, f"{name.replace(' ', '-')}.zarr")
                    started = time.perf_counter()
                    stores[name] = tilepipe.ingest(path, store, tile_size=args.tile_size, halo=16, client=client,
                                                   overwrite=True)
                    times[name].append(time.perf_counter() - started)
        finally:
            client.close()
            cluster.close()
        same = bool(np.array_equal(stores["dense"].index(), stores["sparse"].index())
                    and stores["dense"].entries_total() == stores["sparse"].entries_total())
        doc["same_store"] = same
        doc["ingest_s"] = {k: round(min(v), 2) for k, v in times.items()}
        doc["ingest_all_s"] = {k: [round(t, 2) for t in v] for k, v in times.items()}
        fixed = min(times["one block"])
        dense, sparse = min(times["dense"]) - fixed, min(times["sparse"]) - fixed
        doc["net_s"] = {"dense": round(dense, 2), "sparse": round(sparse, 2)}
        doc["ratio_net"] = round(dense / max(sparse, 1e-3), 1)
        doc["ratio_gross"] = round(min(times["dense"]) / min(times["sparse"]), 1)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"sparse-geotiff-{args.layout}")
    with open(stem + ".json", "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2)
    table = markdown_table(
        ["file", "blocks held", "MB", "ingest s (best)", "net of the fixed cost s"],
        [[k, str(doc["held_blocks"][k]), str(doc["file_mb"][k]), str(doc["ingest_s"][k]),
          str(doc["net_s"].get(k, "-"))] for k in files])
    text = (f"# Sparse GeoTIFF ingest, {size} x {size} uint8, {args.fraction:.0%} of {block}-px blocks, "
            f"{args.layout}\n\n{table}\n\nDense / sparse, net of the fixed cost: {doc['ratio_net']}x "
            f"(gross {doc['ratio_gross']}x). Index blocks occupied: {doc['index_blocks']['occupied']} of "
            f"{doc['index_blocks']['total']}; tiles: {doc['tiles']['occupied']} of {doc['tiles']['total']}. "
            f"Occupancy from the tile tables: {doc['occupancy_s']} s. Same store: {doc['same_store']}.\n")
    with open(stem + ".md", "w", encoding="utf-8") as fh:
        fh.write(text)
    print(text)
    return 0 if doc["same_store"] else 1


if __name__ == "__main__":
    sys.exit(main())
