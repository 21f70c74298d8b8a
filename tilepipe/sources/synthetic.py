"""Synthetic sparse scenes: clustered points, as rasterised detections are."""

from __future__ import annotations

import numpy as np

from tilepipe.sources.coo import CooScene

__all__ = ["synthetic_scene"]


def synthetic_scene(
    shape: tuple[int, int],
    *,
    bands: int = 4,
    occupancy: float = 0.03,
    tile_size: tuple[int, int] = (1024, 1024),
    seed: int = 0,
    dtype: str = "float32",
    points_per_tile: int = 20_000,
) -> CooScene:
    """A scene of ``shape = (rows, cols)`` where ``occupancy`` of the tiles hold clustered points.

    Each occupied tile holds a few Gaussian clusters (sigma 8 to 64 px) of about
    ``points_per_tile`` points in all; every point carries a value in each band
    (uniform in (0, 1] for floats, 1 to the dtype's max for integers). Memory
    is proportional to the points, never to the scene.
    """
    rng = np.random.default_rng(seed)
    rows, cols = shape
    ty, tx = tile_size
    ny, nx = -(-rows // ty), -(-cols // tx)
    n_occ = max(1, round(occupancy * ny * nx))
    chosen = rng.choice(ny * nx, size=min(n_occ, ny * nx), replace=False)
    rr_all: list[np.ndarray] = []
    cc_all: list[np.ndarray] = []
    for tid in np.sort(chosen):
        r0, c0 = (tid // nx) * ty, (tid % nx) * tx
        h, w = min(ty, rows - r0), min(tx, cols - c0)
        n_clusters = int(rng.integers(2, 7))
        for n in rng.multinomial(points_per_tile, np.full(n_clusters, 1 / n_clusters)):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            sigma = rng.uniform(8, 64)
            rr = np.round(rng.normal(cy, sigma, n)).astype(np.int64)
            cc = np.round(rng.normal(cx, sigma, n)).astype(np.int64)
            ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
            rr_all.append(rr[ok] + r0)
            cc_all.append(cc[ok] + c0)
    pix = np.unique(np.concatenate(rr_all) * cols + np.concatenate(cc_all)) if rr_all else np.empty(0, np.int64)
    pr, pc = pix // cols, pix % cols
    n = pix.size
    np_dtype = np.dtype(dtype)
    if np_dtype.kind == "f":
        values = (1.0 - rng.random((n, bands))).astype(np_dtype)
    else:
        values = rng.integers(1, np.iinfo(np_dtype).max, size=(n, bands), endpoint=True).astype(np_dtype)
    return CooScene(
        (rows, cols, bands),
        np.repeat(pr, bands),
        np.repeat(pc, bands),
        np.tile(np.arange(bands, dtype=np.int64), n),
        values.reshape(-1),
    )
