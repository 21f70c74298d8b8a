"""Where rectangles stop paying: the model on a tile's whole window against the same tile by rectangles.

For the demo model (halo 3) and the built-in U-Net (halo 48), one busy 1024-px tile is computed
(a) whole and (b) from ``k`` rectangles of one block each (the window of a 32-px block grown by the
footprint), batched as ``compute_tiles`` batches them, warm, best of 3. The crossover is the
fraction of the window that the rectangles' windows cover where (b) costs as much as (a):
``tilepipe.execute.compute.PIECE_OVERHEAD`` is the overhead of one piece, in pixels.

    python benchmarks/crossover.py            # about a minute; results/crossover.json
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def best(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> int:
    from tilepipe.demo import build_demo_model, build_unet_model
    from tilepipe.execute.compute import BLOCK
    from tilepipe.model.receptive import footprint_of
    from tilepipe.model.runner import CompiledModel

    rows = []
    for name, model in (("demo", build_demo_model(4)), ("unet", build_unet_model(4))):
        fp = footprint_of(model)
        fn = CompiledModel(model)
        step = fp.rows.step
        window = 1024 + 2 * fp.halo
        window = -(-window // step) * step
        piece = -(-(BLOCK + 2 * fp.halo) // step) * step
        whole = np.zeros((1, window, window, 4), np.float32)
        fn(whole), fn(whole)  # traced
        t_whole = best(lambda: fn(whole))  # noqa: B023 - used at once
        batch = np.zeros((8, piece, piece, 4), np.float32)
        fn(batch), fn(batch)
        t_batch = best(lambda: fn(batch))  # noqa: B023
        per_piece = t_batch / 8
        crossover = (t_whole / per_piece) * piece * piece / (window * window)
        # The piece's cost beyond its pixels, in pixels at the whole window's cost per pixel.
        overhead = per_piece / (t_whole / (window * window)) - piece * piece
        rows.append({"model": name, "halo": fp.halo, "window": window, "piece": piece, "whole_s": t_whole,
                     "per_piece_s": per_piece, "pieces_for_whole": t_whole / per_piece,
                     "crossover_fraction": crossover, "overhead_pixels": overhead})
        print(f"{name}: window {window}^2 {t_whole * 1e3:.1f} ms; piece {piece}^2 {per_piece * 1e3:.2f} ms "
              f"(batches of 8); rectangles cost as much as the whole window at {crossover:.2f} of its pixels; "
              f"a piece's overhead is {overhead:.0f} px")
    out = Path(__file__).with_name("results") / "crossover.json"
    out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
