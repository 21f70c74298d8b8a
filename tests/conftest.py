"""Shared pytest setup."""

import os

# Quiet TensorFlow's C++ start-up chatter; set before any test imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# --- Fixtures shared by the pipeline, conv_sparse and real-raster tests ---------------------------

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

#: Where the shared real GeoTIFFs live: ``../shared/data`` from the repository root. Never copied in.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

#: The exactness bound (float32 round-off): max |tiled - whole| / max |whole| at every pixel.
EXACT_TOLERANCE = 1e-5


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of shared real rasters; skips the test where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test rasters not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def dask_client() -> Iterator[object]:
    """One small local cluster (2 single-threaded worker processes) for every test that runs tiles.

    Starting a cluster costs seconds, so tests share it and pass ``client=`` explicitly.
    """
    import logging
    import warnings

    from distributed import Client, LocalCluster

    with warnings.catch_warnings():
        # The scheduler's HTTP server falls back to a free port when 8787 is taken: harmless.
        warnings.filterwarnings("ignore", message="Port .* is already in use")
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


_WORST_ERROR: dict[str, float] = {}


@pytest.fixture(scope="session")
def assert_exact(request: pytest.FixtureRequest) -> Iterator[Callable[..., float]]:
    """A checker ``assert_exact(got, ref, what="", floor=0.0)`` for "tiled == whole scene".

    Asserts equal shapes, finite values and max |got - ref| / max(max |ref|, floor) <= 1e-5
    (``floor``: the scale of the model's intermediate values, for outputs far smaller than
    them, whose float32 round-off is that of the intermediates), and
    records the worst relative error among the checks that pass. Run with ``-s`` to have the
    worst one written at the end of the session (otherwise nothing is printed).
    """

    def check(got: np.ndarray, ref: np.ndarray, what: str = "", floor: float = 0.0) -> float:
        got = np.asarray(got)
        ref = np.asarray(ref)
        assert got.shape == ref.shape, f"{what}: shape {got.shape} != reference {ref.shape}"
        assert np.all(np.isfinite(got)), f"{what}: non-finite values in the result"
        scale = max(float(np.max(np.abs(ref))) if ref.size else 0.0, floor, 1e-30)
        err = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) / scale if ref.size else 0.0
        if err <= EXACT_TOLERANCE and err > _WORST_ERROR.get("value", -1.0):
            _WORST_ERROR["value"] = err
            _WORST_ERROR["where"] = what
        assert err <= EXACT_TOLERANCE, f"{what}: max|err|/max|ref| = {err:.3g} > {EXACT_TOLERANCE}"
        return err

    yield check
    if _WORST_ERROR and request.config.getoption("capture") == "no":
        worst, where = _WORST_ERROR["value"], _WORST_ERROR["where"]
        print(f"\n[tilepipe] worst relative error in exactness checks: {worst:.3g} ({where})")
