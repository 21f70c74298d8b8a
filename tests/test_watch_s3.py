"""``tilepipe watch s3://bucket/prefix``: end to end against moto's S3 server on 127.0.0.1.

The watcher lists the bucket, downloads each settled scene into its local work
folder, runs it there and uploads the outputs to ``s3://``; the result must equal the
whole-scene model, and a second pass must run nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import conv, moto_s3, patches, reference, run_tilepipe, sequential, write_geotiff

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

BUCKET = "scenes"
CRS, TRANSFORM = "EPSG:32618", (10.0, 0.0, 500000.0, 0.0, -10.0, 4600000.0)


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server in its own process; the environment points s3fs (and botocore) at it."""
    with moto_s3(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


def _fs() -> Any:
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True)


def test_s3_inbox_and_outputs_end_to_end(tmp_path: Path, s3_endpoint: str, assert_exact: Any) -> None:
    import rasterio

    from tilepipe.store.result import ResultStore

    fs = _fs()
    fs.mkdir(BUCKET)
    keras_model = sequential(1, conv(3, 3, padding="same", activation="relu"), conv(1, 3, padding="same"), seed=4)
    keras_model.save(tmp_path / "model.keras")
    dense = {}
    for n, stem in enumerate(("north", "south")):
        dense[stem] = patches((80, 72, 1), [(3, 40, 3, 40), (45, 78, 30, 70)], seed=n)
        local = tmp_path / f"{stem}.tif"
        write_geotiff(local, dense[stem].transpose(2, 0, 1), crs=CRS, transform=TRANSFORM, nodata=0)
        fs.put_file(str(local), f"{BUCKET}/inbox/{stem}.tif")
    fs.pipe_file(f"{BUCKET}/inbox/upload.tif.part", b"an upload in progress")
    workflow = tmp_path / "watch.yaml"
    workflow.write_text(
        "model: {path: model.keras}\ntiling: {tile_size: 32}\n"
        f"output: {{zarr: s3://{BUCKET}/out/{{scene}}.zarr, geotiff: s3://{BUCKET}/out/{{scene}}.tif}}\n"
        "cluster: {n_workers: 1}\n", encoding="utf-8")
    ledger = str(tmp_path / "state" / "ledger.sqlite")

    args = ("watch", f"s3://{BUCKET}/inbox", "--workflow", str(workflow), "--ledger", ledger, "--settle", "0")
    first = run_tilepipe(*args, "--once")
    assert first.returncode == 0, first.stderr[-3000:]
    assert sorted(line.split("@")[0] for line in first.stdout.splitlines()) == ["north", "south"], first.stdout

    for stem in ("north", "south"):
        ref = reference(keras_model, dense[stem])
        fs.get(f"{BUCKET}/out/{stem}.zarr", str(tmp_path / "got" / f"{stem}.zarr"), recursive=True)
        store = ResultStore.open(tmp_path / "got" / f"{stem}.zarr")
        assert store.complete
        assert_exact(store.read(), ref, f"s3 {stem}.zarr")
        fs.get_file(f"{BUCKET}/out/{stem}.tif", str(tmp_path / "got" / f"{stem}.tif"))
        with rasterio.open(tmp_path / "got" / f"{stem}.tif") as src:
            assert_exact(src.read(), ref, f"s3 {stem}.tif")
    assert fs.exists(f"{BUCKET}/out/.tilepipe-watch/done")  # the markers other machines look for

    again = run_tilepipe(*args, "--once")
    assert again.returncode == 0 and again.stdout == "", again.stdout
    status = run_tilepipe(*args, "--status", "--json")
    rows = json.loads(status.stdout)["scenes"]
    assert [(r["name"], r["status"], r["attempts"]) for r in rows] == [("north.tif", "done", 1),
                                                                        ("south.tif", "done", 1)]
    assert all(r["identity"].startswith("etag:") and r["location"].startswith("s3://") for r in rows)
    assert all(r["result"] == f"s3://{BUCKET}/out/{Path(r['name']).stem}.zarr" for r in rows)
    assert not list((tmp_path / "state").glob(".tilepipe-watch/work/*")), "staged copies are removed once done"
    assert np.isfinite(rows[0]["wall"])
