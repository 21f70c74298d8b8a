#!/usr/bin/env python
"""GeoTIFF export of a large sparse result store: the export before and after, in one invocation.

Builds a result store as a sparse run leaves it, without running a model: ``size`` x
``size`` pixels, tiles of 1024, ``occupancy`` of the tiles computed (random float32), the
tiles on the scene border written with a response that differs from the fill value near
the border (as a ``same``-padded model's does), every other tile free (never written,
read as the fill value). Then exports it with the ``--before`` revision's
``tilepipe/export/geotiff.py`` (read with ``git show``, run against this tree's store
code) and with this tree's, alternately, ``--repeat`` times each, and checks that both
files hold the same pixels and that this tree's is a valid COG source (``rio cogeo
validate`` on a COG export, when rio-cogeo is installed). Results go to
``results/export-<size>.json`` and ``.md``.

    python benchmarks/export.py                        # 32768 x 32768, before = HEAD
    python benchmarks/export.py --size 65536 --before 3754583
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from types import ModuleType
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import benchlib  # noqa: E402
from benchlib import markdown_table  # noqa: E402

FILL = 0.4712345  # a sigmoid-like background response: not zero, not round


def build_result(path: str, size: int, tile: int, occupancy: float, seed: int) -> dict[str, int]:
    """Write a complete result store of one band; return its tile counts."""
    from rasterio.crs import CRS

    from tilepipe.demo import DEMO_CRS, DEMO_TRANSFORM
    from tilepipe.geometry import Window
    from tilepipe.store.result import STATUS_COMPUTED, STATUS_EMPTY, STATUS_FREE, ResultInfo, ResultStore

    grid = -(-size // tile)
    info = ResultInfo(shape=(1, size, size), transform=tuple(DEMO_TRANSFORM)[:6],
                      crs_wkt=CRS.from_user_input(DEMO_CRS).to_wkt(), tile_size=(tile, tile),
                      provenance={"run_id": "bench-export"})
    store = ResultStore.create(path, info, fill_values=[FILL])
    rng = np.random.default_rng(seed)
    status = np.full((grid, grid), STATUS_FREE, np.uint8)
    status[0, :] = status[-1, :] = status[:, 0] = status[:, -1] = STATUS_EMPTY
    computed = rng.choice(grid * grid, size=max(1, round(occupancy * grid * grid)), replace=False)
    status.flat[computed] = STATUS_COMPUTED
    for r, c in zip(*np.nonzero(status != STATUS_FREE), strict=True):
        r0, c0 = int(r) * tile, int(c) * tile
        h, w = min(tile, size - r0), min(tile, size - c0)
        if status[r, c] == STATUS_COMPUTED:
            values = rng.random((h, w), dtype=np.float32)
        else:  # a border tile: the fill value except within 3 pixels of the scene's edge
            values = np.full((h, w), FILL, np.float32)
            ys, xs = np.arange(r0, r0 + h)[:, None], np.arange(c0, c0 + w)[None, :]
            edge = np.minimum(np.minimum(ys, size - 1 - ys), np.minimum(xs, size - 1 - xs))
            values = np.where(edge < 3, np.float32(0.3) + edge.astype(np.float32) * 0.01, values).astype(np.float32)
        store.write_core(Window(r0, r0 + h, c0, c0 + w), values[:, :, None])
    store.write_status(status)
    store.finish(complete=True, report={})
    return {"tiles": grid * grid, "computed": int((status == STATUS_COMPUTED).sum()),
            "empty_border": int((status == STATUS_EMPTY).sum()), "free": int((status == STATUS_FREE).sum())}


def load_before(rev: str) -> ModuleType:
    """This tree's package with ``tilepipe/export/geotiff.py`` as it was at ``rev``."""
    source = subprocess.run(["git", "show", f"{rev}:tilepipe/export/geotiff.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    folder = tempfile.mkdtemp(prefix="tilepipe-export-before-")
    file = os.path.join(folder, "geotiff_before.py")
    with open(file, "w") as fh:
        fh.write(source)
    spec = importlib.util.spec_from_file_location("geotiff_before", file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def same_pixels(a: str, b: str, side: int = 4096) -> bool:
    """Whether two GeoTIFFs hold bit-identical pixels (read window by window)."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(a) as x, rasterio.open(b) as y:
        if (x.count, x.height, x.width, x.nodata) != (y.count, y.height, y.width, y.nodata):
            return False
        for r in range(0, x.height, side):
            for c in range(0, x.width, side):
                w = Window(c, r, min(side, x.width - c), min(side, x.height - r))
                if not np.array_equal(x.read(window=w).view(np.uint32), y.read(window=w).view(np.uint32)):
                    return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=32768)
    p.add_argument("--tile-size", type=int, default=1024)
    p.add_argument("--occupancy", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--before", default="HEAD", help="git revision whose export is the 'before'")
    p.add_argument("--cog", action="store_true", help="also time a COG export of each")
    p.add_argument("--tmp", default=tempfile.gettempdir(), help="folder for the scratch directory")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)

    import tilepipe
    from tilepipe.export import geotiff as after

    before = load_before(args.before)
    tmp = tempfile.mkdtemp(prefix="tilepipe-export-", dir=args.tmp)
    doc: dict[str, Any] = {"args": vars(args), "machine": benchlib.machine(), "tilepipe": benchlib.library_identity(),
                           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "times": {}}
    try:
        result = os.path.join(tmp, "result.zarr")
        t0 = time.perf_counter()
        doc["tiles"] = build_result(result, args.size, args.tile_size, args.occupancy, args.seed)
        doc["build_seconds"] = time.perf_counter() - t0
        print(f"built {args.size} x {args.size} result in {doc['build_seconds']:.1f} s: {doc['tiles']}", flush=True)
        kinds = [("geotiff", False)] + ([("cog", True)] if args.cog else [])
        for kind, cog in kinds:
            for i in range(args.repeat):
                for name, module in (("before", before), ("after", after)):
                    out = os.path.join(tmp, f"{name}-{kind}.tif")
                    t0 = time.perf_counter()
                    module.export_geotiff(result, out, cog=cog, overwrite=True)
                    seconds = time.perf_counter() - t0
                    doc["times"].setdefault(f"{kind} {name}", []).append(seconds)
                    doc.setdefault("sizes", {})[f"{kind} {name}"] = os.path.getsize(out)
                    print(f"{kind} {name} #{i + 1}: {seconds:.2f} s", flush=True)
            doc.setdefault("identical", {})[kind] = same_pixels(os.path.join(tmp, f"before-{kind}.tif"),
                                                                os.path.join(tmp, f"after-{kind}.tif"))
            if cog and shutil.which("rio"):
                check = subprocess.run(["rio", "cogeo", "validate", "--strict", os.path.join(tmp, "after-cog.tif")],
                                       capture_output=True, text=True, check=False)
                doc["cog_validate"] = (check.stdout + check.stderr).strip().replace(tmp, "<scratch>")
        doc["tilepipe_version"] = tilepipe.__version__
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"export-{args.size}")
    benchlib.write_text(stem + ".json", json.dumps(doc, indent=1, default=str))
    rows = []
    for kind, _ in kinds:
        b, a = min(doc["times"][f"{kind} before"]), min(doc["times"][f"{kind} after"])
        rows.append([kind, f"{b:.2f}", f"{a:.2f}", f"{b / a:.1f}x", f"{doc['sizes'][f'{kind} before'] / 1e6:.1f}",
                     f"{doc['sizes'][f'{kind} after'] / 1e6:.1f}", str(doc["identical"][kind])])
    t = doc["tiles"]
    text = "\n".join([
        f"# Export of a {args.size:,} x {args.size:,} sparse result (before = {args.before})",
        "",
        f"Tiles of {args.tile_size}: {t['tiles']} in all, {t['computed']} computed, {t['empty_border']} border, "
        f"{t['free']} free. Best of {args.repeat}, before and after alternating, one process; "
        f"{doc['machine']['cpus']} CPUs.",
        "",
        markdown_table(["export", "before s", "after s", "speed-up", "before MB", "after MB", "same pixels"], rows),
        "",
        f"COG check: {doc.get('cog_validate', 'not run')}",
        "",
    ])
    benchlib.write_text(stem + ".md", text)
    print(text)
    return 0 if all(doc["identical"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
