"""Where data lives: local paths, file:// URLs and remote URLs, decided in one place."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

import tilepipe
from tilepipe.errors import StoreError
from tilepipe.location import Location, existing_output, has_scheme

from helpers import sparse_scene


def test_local_paths_and_file_urls_are_local() -> None:
    here = Location.of("data/x.tif")
    assert here.is_local and here.path == os.path.abspath("data/x.tif") and here.scheme == "file"
    url = Location.of("file:///tmp/a%20b/scene.zarr")
    assert url.is_local and url.path == "/tmp/a b/scene.zarr" and url.target == "/tmp/a b/scene.zarr"
    assert str(url) == "file:///tmp/a%20b/scene.zarr"  # messages show what the user wrote
    assert Location.of("~/x").path == os.path.join(os.path.expanduser("~"), "x")


def test_urls_are_remote() -> None:
    s3 = Location.of("s3://bucket/scenes/a.zarr")
    assert not s3.is_local and s3.scheme == "s3" and s3.target == "s3://bucket/scenes/a.zarr"
    assert str(s3.parent) == "s3://bucket/scenes" and s3.name == "a.zarr"
    assert str(s3.join("data", "c")) == "s3://bucket/scenes/a.zarr/data/c"
    with pytest.raises(ValueError, match="Expected a local path"):
        _ = s3.path
    assert has_scheme("tcp://127.0.0.1:8786") and has_scheme("memory://x") and not has_scheme("C_drive/x")


def test_parent_exists_and_overlaps(tmp_path: Path) -> None:
    f = tmp_path / "a" / "b.tif"
    f.parent.mkdir()
    f.write_bytes(b"x")
    loc = Location.of(f)
    assert loc.exists() and loc.parent.path == str(f.parent) and loc.name == "b.tif"
    assert not Location.of(tmp_path / "nope").exists()
    assert loc.overlaps(Location.of(tmp_path)) and Location.of(tmp_path).overlaps(loc)
    assert loc.overlaps(Location.of(f"file://{f}"))
    assert not Location.of(tmp_path / "a" / "b.tif.zarr").overlaps(loc)
    assert not loc.overlaps(Location.of("s3://bucket/a/b.tif"))


def test_existing_output_policy(tmp_path: Path) -> None:
    out = Location.of(tmp_path / "out.zarr")
    assert existing_output(out, overwrite=False, reusable=lambda: True, holds="x") == "create"
    (tmp_path / "out.zarr").mkdir()
    assert existing_output(out, overwrite=False, reusable=lambda: True, holds="x") == "reuse"
    assert existing_output(out, overwrite=True, reusable=lambda: True, holds="x") == "replace"
    with pytest.raises(StoreError, match=r"out\.zarr: already exists and holds another run; pass overwrite=True"):
        existing_output(out, overwrite=False, reusable=lambda: False, holds="another run")


def test_ingest_and_run_with_file_urls(tmp_path: Path, dask_client: Any) -> None:
    # Was: zarr's "store was opened in read-only mode" and a traceback for a file:// store URL.
    rng = np.random.default_rng(3)
    data = sparse_scene(rng, (2, 40, 30), 0.1, high=200, dtype="uint8")
    tif = tmp_path / "in.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=30, height=40, count=2, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 4000000, 10, 10)) as dst:
        dst.write(data)
    scene = tilepipe.ingest(f"file://{tif}", f"file://{tmp_path}/scene.zarr", tile_size=16, halo=2)
    assert scene.info.shape == (40, 30) and (tmp_path / "scene.zarr" / "zarr.json").is_file()
    dense = np.moveaxis(data, 0, -1)
    nnz = scene.index()
    for r in range(nnz.shape[0]):
        for c in range(nnz.shape[1]):
            tile = scene.info.grid.tile(r, c)
            assert nnz[r, c] == np.count_nonzero(dense[tile.window.slices])
