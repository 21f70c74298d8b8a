"""run_workflow: ingest, run and export as calls of the public API, on one client, with one model file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from helpers import Checker, conv, dense_scene, reference, sequential


class _Counting:
    """A client that counts the model-facts tasks submitted through it (and passes everything on)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.facts = 0

    def submit(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from tilepipe.model.facts import model_facts

        self.facts += fn is model_facts
        return self._client.submit(fn, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


@pytest.mark.cluster
def test_the_model_is_hashed_once_and_its_facts_fetched_once(
    tmp_path: Path, dask_client: Any, assert_exact: Checker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tilepipe.execute import models
    from tilepipe.store import ResultStore
    from tilepipe.workflow_runner import run_workflow

    model = sequential(2, conv(3, 3, padding="same"), conv(1, 5, padding="same", dilation_rate=2), seed=4)
    model.save(tmp_path / "m.keras")
    hashed: list[str] = []

    def counted_sha256(path: str) -> str:
        hashed.append(path)
        return real_sha256(path)

    real_sha256 = models.model_sha256
    monkeypatch.setattr(models, "model_sha256", counted_sha256)
    monkeypatch.setattr(models, "_FACTS", {})  # facts of other tests' models must not answer for this one
    (tmp_path / "wf.yaml").write_text(
        "input: {synthetic: {shape: [70, 90], bands: 2, occupancy: 0.4, seed: 3}}\n"
        "model: {path: m.keras}\n"
        "tiling: {tile_size: 16}\n"
        "output: {zarr: out/result.zarr, scene: out/scene.zarr}\n"
    )
    client = _Counting(dask_client)
    outcome = run_workflow(tmp_path / "wf.yaml", client=client)
    assert hashed == [str(tmp_path / "m.keras")]
    assert client.facts == 1
    assert outcome.report.computed > 0
    got = ResultStore.open(outcome.result).read()
    assert_exact(got, reference(model, dense_scene(outcome.scene)))
