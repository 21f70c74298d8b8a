"""The functions Dask workers run. They take descriptions (paths, tile jobs), never arrays or models.

Each worker process loads a model once (cached by its sha256), with
TensorFlow's thread pools sized to the worker's threads.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from tilepipe.errors import ModelError
from tilepipe.execute.engine import TileJob, compute_tiles, empty_response
from tilepipe.geometry import Footprint
from tilepipe.store.result import STATUS_COMPUTED, STATUS_EMPTY, ResultStore
from tilepipe.store.scene import SceneStore

__all__ = ["RunSpec", "load_worker_model", "run_jobs", "worker_name"]

_MODELS: dict[str, Any] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class RunSpec:
    """Everything a run task needs besides its tiles. Plain and picklable."""

    scene: str
    result: str
    model_path: str
    model_sha256: str
    footprint: Footprint
    bands: int
    batch_size: int  # tiles per model call; 0: fit the GPU's free memory (or a CPU budget)
    run_id: str = ""  # stores opened for one run are reused by its tasks in a worker


def worker_name() -> str:
    """This worker's address, or "local" outside a Dask worker."""
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except ValueError:
        return "local"


def _worker_threads() -> int:
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except ValueError:
        return 0


def load_worker_model(path: str, sha256: str) -> Any:
    """The compiled model for ``sha256``, loaded from ``path`` once per process."""
    with _LOCK:
        model = _MODELS.get(sha256)
        if model is not None:
            return model
        from tilepipe.model._tf import configure_threads

        threads = _worker_threads()
        if threads:
            configure_threads(threads)
        from tilepipe.model.loader import file_sha256, load_keras_model
        from tilepipe.model.runner import CompiledModel

        found = file_sha256(path)
        if found != sha256:
            raise ModelError(f"{path}: the model file changed since the run started (sha256 {found[:12]}...)")
        model = CompiledModel(load_keras_model(path))
        _MODELS[sha256] = model
        return model


_STORES: dict[tuple[str, str, str], tuple[SceneStore, ResultStore]] = {}


def _stores(spec: RunSpec) -> tuple[SceneStore, ResultStore]:
    """The run's scene and result stores, opened once per worker process and run."""
    key = (spec.scene, spec.result, spec.run_id)
    with _LOCK:
        stores = _STORES.get(key) if spec.run_id else None
        if stores is None:
            stores = (SceneStore.open(spec.scene), ResultStore.open(spec.result))
            _STORES[key] = stores
            while len(_STORES) > 4:
                _STORES.pop(next(iter(_STORES)))
        return stores


def run_jobs(spec: RunSpec, jobs: tuple[TileJob, ...]) -> dict[str, Any]:
    """Compute, trim and write a batch of tiles; return their status for the client to record. Idempotent."""
    t0 = time.perf_counter()
    model = load_worker_model(spec.model_path, spec.model_sha256)
    scene, result = _stores(spec)
    busy, data, empties = [], [], []
    for job in jobs:
        tile = None if job.empty else scene.read_tile(job.row, job.col)
        if tile is None:
            empties.append(job)
        else:
            busy.append(job)
            data.append(tile)
    t1 = time.perf_counter()
    batch_size = spec.batch_size
    if not batch_size and busy:
        from tilepipe.model.runner import auto_batch_size, gpu_free_bytes

        batch_size = auto_batch_size(busy[0].need.shape, model.max_channels, gpu_free_bytes())
    cores = compute_tiles(model, busy, data, spec.bands, batch_size=batch_size or 1)
    t2 = time.perf_counter()
    for job, core in zip(busy, cores, strict=True):
        result.write_core(job.out_core, core)
    for job in empties:
        result.write_core(job.out_core, empty_response(model, job, spec.bands, spec.footprint))
    # The status of these tiles is recorded by the client once this task is done: status
    # chunks cover blocks of tiles, and a chunk must have only one writer.
    return {
        "status": [(j.row, j.col, STATUS_COMPUTED) for j in busy] + [(j.row, j.col, STATUS_EMPTY) for j in empties],
        "worker": worker_name(),
        "computed": len(busy),
        "empty": len(empties),
        "read_seconds": t1 - t0,
        "model_seconds": t2 - t1,
        "write_seconds": time.perf_counter() - t2,
    }
