"""The Python API in one place: ingest, run, export, inspect.

Calls that share a cluster take one ``client``: :func:`connect` opens (or joins) it, as every
caller in tilepipe does; calls that share a model file take one :class:`ModelFile`, hashed once.
"""

from __future__ import annotations

import os
from typing import Any

from tilepipe.errors import WrongStoreKindError
from tilepipe.execute.cluster import connect
from tilepipe.execute.ingest import ingest
from tilepipe.execute.models import ModelFile
from tilepipe.execute.run import RunReport, run_model
from tilepipe.sources.georef import crs_name
from tilepipe.store import STATUS_COMPUTED, STATUS_EMPTY, STATUS_FREE, STATUS_NOT_DONE, ResultStore, SceneStore

__all__ = ["ModelFile", "RunReport", "connect", "info", "ingest", "open_result", "open_scene", "run"]


def run(
    scene: str | os.PathLike[str] | SceneStore,
    model: Any,
    result: str | os.PathLike[str],
    *,
    client: Any = None,
    gpu: bool = False,
    batch_size: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
    n_workers: int | None = None,
) -> RunReport:
    """Run a Keras model over a scene store into a dense, georeferenced result store.

    Parameters
    ----------
    scene
        A scene store (path, URL or :class:`SceneStore`) made by :func:`ingest`.
    model
        A ``.keras`` path (workers load it; on a remote cluster it must be a
        path they can open), a :class:`ModelFile` (a path hashed already, by
        ``ModelFile.of(path)``: calls that share one hash the file once) or a
        ``keras.Model`` (saved to a temporary file for the run).
    result
        Where the result store goes. An incomplete store of the same run is
        resumed; a complete one is left alone (``report.up_to_date``).
    client
        A ``distributed.Client``; None starts an embedded ``LocalCluster``
        for this call (or uses ``DASK_SCHEDULER_ADDRESS`` when set).
    gpu
        Annotate model tasks with ``resources={"GPU": 1}`` (and give an embedded cluster's worker that resource).
    batch_size
        Tiles of the same shape per model call (default 8).
    n_workers
        Worker processes of an embedded cluster (default: one per core, one with ``gpu``).
    """
    scene_path = scene.path if isinstance(scene, SceneStore) else os.fspath(scene)
    with connect(client=client, n_workers=n_workers, gpu=gpu) as active:
        return run_model(scene_path, model, os.fspath(result), client=active, gpu=gpu,
                         batch_size=batch_size, overwrite=overwrite, progress=progress)


def open_scene(path: str | os.PathLike[str]) -> SceneStore:
    """Open a complete scene store."""
    return SceneStore.open(path)


def open_result(path: str | os.PathLike[str]) -> ResultStore:
    """Open a result store (complete or not)."""
    return ResultStore.open(path, mode="r")


def info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Describe a scene or result store as a JSON-ready dict."""
    path = os.fspath(path)
    try:
        scene = SceneStore.open(path, require_complete=False)
    except WrongStoreKindError as exc:
        if exc.found != "result":
            raise
        return _result_info(path)
    nnz = scene.index()
    si = scene.info
    return {
        "kind": "scene",
        "path": path,
        "complete": bool(scene.attrs.get("complete")),
        "shape": list(si.shape),
        "bands": si.bands,
        "dtype": si.dtype,
        "nodata": si.nodata,
        "crs": _crs_name(si.crs_wkt),
        "transform": list(si.transform),
        "tile_size": list(si.tile_size),
        "halo": si.halo,
        "tile_grid": list(si.grid.grid_shape),
        "tiles_total": int(nnz.size),
        "tiles_occupied": int((nnz > 0).sum()),
        "occupancy": float((nnz > 0).mean()) if nnz.size else 0.0,
        "nonzero_entries": int(scene.attrs.get("nnz_total", 0)),
        "source": si.source,
    }


def _result_info(path: str) -> dict[str, Any]:
    res = ResultStore.open(path, mode="r")
    ri = res.info
    status = res.status()
    return {
        "kind": "result",
        "path": path,
        "complete": ri.complete,
        "shape": list(ri.shape),
        "crs": _crs_name(ri.crs_wkt),
        "transform": list(ri.transform),
        "tile_size": list(ri.tile_size),
        "fill_values": list(res.fill_values),
        "format_version": ri.format_version,
        "status": {
            "todo": int((status == STATUS_NOT_DONE).sum()),
            "computed": int((status == STATUS_COMPUTED).sum()),
            "empty": int((status == STATUS_EMPTY).sum()),
            "free": int((status == STATUS_FREE).sum()),
        },
        "provenance": {**ri.provenance, "identity": ri.identity},
        "report": ri.report,
    }


def _crs_name(wkt: str | None) -> str | None:
    """The CRS's short name (:func:`tilepipe.sources.crs_name`); None, not "none", where there is no CRS."""
    return crs_name(wkt) if wkt else None
