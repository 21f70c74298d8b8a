"""``tilepipe.conv_sparse``: the first call and warm calls on one SparseTensor, in a fresh process.

The first call pays for whatever is compiled per window shape; warm calls show what
stays. The same scene and model as ``bench.py`` (demo model, 4 bands, clustered
points in a fraction of 1024-pixel tiles), given as a ``tf.SparseTensor``.

    python benchmarks/conv_sparse.py                 # 8192 x 8192 x 4, 3 % of tiles
    python benchmarks/conv_sparse.py --naive         # and whole-scene densify + model, same process
    PYTHONPATH=SNAPSHOT python benchmarks/conv_sparse.py   # another state of the library

Prints one JSON line: first-call and warm-call seconds and the tile size used; with
``--naive``, also ``tf.sparse.to_dense`` + one model call on the whole scene, timed in the same
process after conv_sparse's calls (about 20 GB at 8192 x 8192 x 4), the ratio of the two and
``max |conv_sparse - naive| / max |naive|``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=8192)
    p.add_argument("--occupancy", type=float, default=0.03)
    p.add_argument("--tile-size", type=int, default=512, help="conv_sparse's tile (its default is 512)")
    p.add_argument("--warm", type=int, default=3, help="warm calls after the first")
    p.add_argument("--naive", action="store_true", help="also time whole-scene to_dense + model (~20 GB at 8192)")
    args = p.parse_args()

    import tensorflow as tf

    import tilepipe
    from tilepipe.demo import build_demo_model
    from tilepipe.sources import synthetic_scene

    coo = synthetic_scene((args.size, args.size), bands=4, occupancy=args.occupancy, tile_size=(1024, 1024), seed=0)
    indices = np.stack([coo.rows, coo.cols, coo.bands], axis=1).astype(np.int64)
    st = tf.SparseTensor(indices, coo.values.astype(np.float32), (args.size, args.size, 4))
    model = build_demo_model(4)
    model(np.zeros((1, 8, 8, 4), np.float32))  # Keras builds its layers: not conv_sparse's cost

    t = time.perf_counter()
    out = tilepipe.conv_sparse(st, model, tile_size=args.tile_size)
    first = time.perf_counter() - t
    warm = []
    for _ in range(args.warm):
        t = time.perf_counter()
        tilepipe.conv_sparse(st, model, tile_size=args.tile_size)
        warm.append(time.perf_counter() - t)
    answer = {
        "size": args.size, "occupancy": args.occupancy, "tile_size": args.tile_size, "nnz": int(coo.nnz),
        "first_call_seconds": round(first, 3), "warm_call_seconds": [round(w, 3) for w in warm],
        "output_shape": list(out.shape), "tilepipe": os.path.dirname(tilepipe.__file__),
    }
    if args.naive:
        # After conv_sparse's calls, so TensorFlow's runtime is up for both; the model is
        # Keras-built already (above), so this is densify + one call on the whole scene.
        t = time.perf_counter()
        ref = np.asarray(model(tf.sparse.to_dense(st)[None], training=False)[0])
        naive = time.perf_counter() - t
        err = float(np.max(np.abs(np.asarray(out) - ref))) / float(np.max(np.abs(ref)))
        answer.update(naive_seconds=round(naive, 3), naive_over_first_call=round(naive / first, 1),
                      naive_over_best_warm_call=round(naive / min(warm), 1) if warm else None,
                      max_rel_err_vs_naive=err)
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
