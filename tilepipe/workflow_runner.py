"""Running a workflow file end to end: ingest, run, export, as calls of the public API.

One cluster (:func:`tilepipe.api.connect`) and one model file (:class:`tilepipe.api.ModelFile`,
hashed once) serve :func:`tilepipe.api.ingest` and :func:`tilepipe.api.run`; the exports are
:func:`tilepipe.export.export_geotiff` and :func:`tilepipe.export.quicklook`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tilepipe import api
from tilepipe.api import ModelFile, RunReport
from tilepipe.demo import DEMO_CRS, DEMO_TRANSFORM, builtin_model_path
from tilepipe.execute.cluster import worker_count
from tilepipe.export import export_geotiff, quicklook, record_band_names
from tilepipe.location import Location, existing_output, refuse_overlaps
from tilepipe.sources import probe_stack, synthetic_scene
from tilepipe.store import ResultStore
from tilepipe.workflow import Workflow, load_workflow

__all__ = ["WorkflowOutcome", "run_workflow"]


@dataclass(frozen=True, slots=True)
class WorkflowOutcome:
    """What a workflow run produced."""

    report: RunReport
    scene: str
    result: str
    geotiff: str | None
    quicklook: str | None
    wall_seconds: float
    dashboard: str | None
    products: tuple[str, ...] = ()


def run_workflow(
    workflow: Workflow | str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: bool = False,
    echo: Callable[[str], Any] | None = None,
    client: Any = None,
    published: Workflow | None = None,
) -> WorkflowOutcome:
    """Run a workflow: ingest its input (unless already a scene store), run the model, export.

    ``echo`` receives progress lines for people (the CLI passes ``click.echo``). ``client``: a
    ``distributed.Client`` to run on (kept open, e.g. a watcher's warm one) instead of the
    workflow's cluster. ``published``: the same workflow with the paths its outputs will be
    moved to (a watcher stages a scene's run, then publishes it): the result store and its
    exports record those places, so that ``verify`` finds the scene store where it is read.

    Raises :class:`InputError` before anything is written or removed where an
    output is, contains or lies inside an input (``input.path``, ``model.path``)
    or another output.
    """
    say = echo or (lambda _line: None)
    wf = workflow if isinstance(workflow, Workflow) else load_workflow(workflow)
    _refuse_overlaps(wf)
    t0 = time.perf_counter()
    # Hashed here, once for ingest and run; an unreadable file is a clear error before any cluster starts.
    model = ModelFile.of(wf.model.path) if wf.model.path is not None else None
    with api.connect(wf.cluster.address, client=client, n_workers=wf.cluster.n_workers,
                     threads_per_worker=wf.cluster.threads_per_worker, gpu=wf.cluster.gpu) as active:
        dashboard = getattr(active, "dashboard_link", None) if _has_dashboard(active) else None
        say(f"cluster: {active.scheduler.address} ({worker_count(active)} workers)"
            + (f", dashboard {dashboard}" if dashboard else ""))
        model = model or ModelFile.of(_builtin_model(wf, active))
        scene_path = _scene(wf, model, active, overwrite, progress, say)
        say(f"run: {model.path} over {scene_path} -> {wf.output.zarr}")
        report = api.run(scene_path, model, wf.output.zarr, client=active, gpu=wf.cluster.gpu,
                         batch_size=wf.cluster.batch_size, overwrite=overwrite, progress=progress)
    fresh = not report.up_to_date
    if published is not None:
        staged_scene = scene_path == wf.output.scene
        final_scene = Location.of(published.output.scene if staged_scene else scene_path)
        ResultStore.open(wf.output.zarr).record_places(
            scene_store=final_scene.path if final_scene.is_local else final_scene.text,
            result=published.output.zarr)
    names = wf.output.band_names
    if names is not None:
        record_band_names(wf.output.zarr, names)  # the store names its bands; every export reads them there
    region: dict[str, Any] = {"bounds": wf.output.bounds, "window": wf.output.window}
    geotiff = _export(wf.output.geotiff, fresh, overwrite, say,
                      lambda out, ow: export_geotiff(wf.output.zarr, out, cog=wf.output.cog, overwrite=ow,
                                                     progress=progress, **region))
    products = tuple(derived.path for _, derived in wf.output.products)
    for _, derived in wf.output.products:
        _export(derived.path, fresh, overwrite, say,
                lambda out, ow, derived=derived: export_geotiff(wf.output.zarr, out, cog=wf.output.cog, overwrite=ow,
                                                                progress=progress, product=derived.product,
                                                                **region))
    look = _export(wf.output.quicklook, fresh, overwrite, say,
                   lambda out, ow: quicklook(wf.output.zarr, out, overwrite=ow))
    return WorkflowOutcome(report, scene_path, wf.output.zarr, geotiff, look, time.perf_counter() - t0, dashboard,
                           products)


def _scene(wf: Workflow, model: ModelFile, client: Any, overwrite: bool, progress: bool,
           say: Callable[[str], Any]) -> str:
    """The scene store the run reads: the input where it is one, else the input ingested (on ``client``)."""
    src = wf.input
    if src.scene_store is not None:
        say(f"scene: using the scene store {src.scene_store}")
        return src.scene_store
    scene_path = wf.output.scene
    if src.synthetic is not None:
        spec = src.synthetic
        say(f"scene: generating a synthetic {spec.shape[0]} x {spec.shape[1]} x {spec.bands} scene "
            f"({spec.occupancy:.0%} of tiles occupied)")
        coo = synthetic_scene(spec.shape, bands=spec.bands, occupancy=spec.occupancy,
                              tile_size=wf.tiling.tile_size, seed=spec.seed, dtype=spec.dtype)
        api.ingest(coo, scene_path, tile_size=wf.tiling.tile_size, halo=wf.tiling.halo, model=model,
                   crs=DEMO_CRS, transform=DEMO_TRANSFORM, overwrite=overwrite, progress=progress, client=client)
        return scene_path
    assert src.raster is not None
    shown = ", ".join(src.stack) if src.stack is not None else src.path
    if src.assets is not None:
        shown = f"{shown} (assets {', '.join(src.assets)})"
    say(f"ingest: {shown} -> {scene_path}")
    api.ingest(list(src.raster) if src.stack is not None else src.raster, scene_path,
               tile_size=wf.tiling.tile_size, halo=wf.tiling.halo, model=model, nodata=src.nodata,
               mask=src.mask, bands=src.bands, assets=src.assets, overwrite=overwrite, client=client,
               progress=progress)
    return scene_path


def _refuse_overlaps(wf: Workflow) -> None:
    """No output may be, contain or lie inside an input or another output: ``--overwrite`` would destroy it."""
    ingests = wf.input.scene_store is None  # a scene store input is used as it is
    outputs = [wf.output.zarr, wf.output.scene if ingests else None, wf.output.geotiff, wf.output.quicklook,
               *(spec.path for _, spec in wf.output.products)]
    refuse_overlaps(outputs, [*wf.input.paths, wf.model.path])


def _export(out: str | None, fresh: bool, overwrite: bool, say: Callable[[str], Any], write: Any) -> str | None:
    """Write an export unless an existing one is of this very result (a rerun that computed nothing)."""
    if out is None:
        return None
    decision = existing_output(Location.of(out), overwrite=overwrite, reusable=lambda: not fresh,
                               holds="an export of an earlier result")
    if decision == "reuse":
        say(f"export: {out} is up to date")
        return out
    say(f"export: {out}")
    write(out, decision == "replace")
    return out


def _builtin_model(wf: Workflow, client: Any) -> str:
    """Build the built-in model on a worker (which has TensorFlow) into the output folder."""
    output = Location.of(wf.output.zarr)
    folder = output.parent.path if output.is_local else "."
    bands = wf.input.synthetic.bands if wf.input.synthetic is not None else _raster_bands(wf)
    return str(client.submit(builtin_model_path, wf.model.builtin, folder, bands, pure=False).result())


def _raster_bands(wf: Workflow) -> int:
    src = wf.input
    if src.bands:
        return len(src.bands)
    if src.scene_store is not None:
        return api.open_scene(src.scene_store).info.bands
    assert src.raster is not None
    return probe_stack(src.raster, assets=src.assets).bands


def _has_dashboard(client: Any) -> bool:
    try:
        return bool(client.scheduler_info().get("services", {}).get("dashboard"))
    except Exception:  # noqa: BLE001 - a missing dashboard is not an error
        return False
