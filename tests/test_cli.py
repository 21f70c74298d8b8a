"""The `tilepipe` command, run as a user runs it: a real process, real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tilepipe.cli import cli

from helpers import assert_one_clear_line, run_tilepipe, write_geotiff

SUBCOMMANDS = ["ingest", "run", "export", "info", "quicklook"]


def test_the_group_lists_its_subcommands_without_main() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    listed = result.output.split("Commands:")[1].split()
    assert all(name in listed for name in SUBCOMMANDS)


def test_importing_the_cli_loads_no_subcommand() -> None:
    code = "import sys, tilepipe.cli; print(sorted(m for m in sys.modules if m.startswith('tilepipe.cli.')))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == "[]"


def test_console_script_help_lists_the_subcommands() -> None:
    proc = run_tilepipe("--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: tilepipe ")
    assert all(f"\n  {name} " in proc.stdout for name in SUBCOMMANDS)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help(name: str) -> None:
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0
    assert f"Usage: cli {name}" in result.output or f"Usage: tilepipe {name}" in result.output
    assert "--help" in result.output


def test_bad_inputs_end_in_one_line_and_leave_nothing(tmp_path: Path) -> None:
    (tmp_path / "not_a_tiff.tif").write_text("hello")
    assert_one_clear_line(run_tilepipe("ingest", str(tmp_path / "missing.tif"), str(tmp_path / "a.zarr")),
                          "missing.tif")
    assert_one_clear_line(run_tilepipe("ingest", str(tmp_path / "not_a_tiff.tif"), str(tmp_path / "b.zarr")),
                          "not_a_tiff.tif")
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()
    (tmp_path / "model.h5").write_bytes(b"\x89HDF")
    (tmp_path / "bad_model.yaml").write_text(
        "input: {synthetic: {shape: [64, 64]}}\nmodel: {path: model.h5}\noutput: {zarr: out/r.zarr}\n")
    assert_one_clear_line(run_tilepipe("run", str(tmp_path / "bad_model.yaml")),
                          "bad_model.yaml", "model.path", ".keras")
    (tmp_path / "no_model.yaml").write_text("input: {synthetic: {shape: [64, 64]}}\noutput: {zarr: out/r.zarr}\n")
    assert_one_clear_line(run_tilepipe("run", str(tmp_path / "no_model.yaml")), "no_model.yaml", "model")
    (tmp_path / "bad_tile.yaml").write_text(
        "input: {synthetic: {shape: [64, 64]}}\nmodel: {builtin: demo}\ntiling: {tile_size: 0}\n"
        "output: {zarr: out/r.zarr}\n")
    assert_one_clear_line(run_tilepipe("run", str(tmp_path / "bad_tile.yaml")), "bad_tile.yaml", "tiling.tile_size")
    (tmp_path / "wrong_type.yaml").write_text(
        "input: {synthetic: {shape: [64, 64]}}\nmodel: {builtin: demo}\ncluster: {gpu: 'yes please'}\n"
        "output: {zarr: out/r.zarr}\n")
    assert_one_clear_line(run_tilepipe("run", str(tmp_path / "wrong_type.yaml")), "wrong_type.yaml", "cluster.gpu")
    assert_one_clear_line(run_tilepipe("run", str(tmp_path / "absent.yaml")), "absent.yaml")
    assert not (tmp_path / "out").exists()


def test_corrupt_geotiff_is_refused_not_zero_filled(shared_data: Path, tmp_path: Path) -> None:
    proc = run_tilepipe("ingest", str(shared_data / "corrupt.tif"), str(tmp_path / "c.zarr"), "--tile-size", "256")
    assert_one_clear_line(proc, "corrupt.tif", "read failed")
    assert not (tmp_path / "c.zarr").exists()


def test_workflow_end_to_end_equals_the_dense_model(tmp_path: Path) -> None:
    """`tilepipe run` on a synthetic scene; the reference densifies the same points independently."""
    import rasterio

    from tilepipe.model._tf import keras
    from tilepipe.sources import synthetic_scene

    (tmp_path / "wf.yaml").write_text(
        "input: {synthetic: {shape: [700, 900], bands: 2, occupancy: 0.3, seed: 4}}\n"
        "model: {builtin: demo}\n"
        "tiling: {tile_size: 128}\n"
        "output: {zarr: out/result.zarr, geotiff: out/result.tif, quicklook: out/look.png}\n"
        "cluster: {n_workers: 2}\n"
    )
    proc = run_tilepipe("run", str(tmp_path / "wf.yaml"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    summary = proc.stdout
    assert "tiles total 48 / computed" in summary and "Mpx/s" in summary

    coo = synthetic_scene((700, 900), bands=2, occupancy=0.3, tile_size=(128, 128), seed=4)
    dense = np.zeros(coo.shape, dtype=np.float32)
    dense[coo.rows, coo.cols, coo.bands] = coo.values
    model = keras.saving.load_model(next((tmp_path / "out").glob("demo_model_*.keras")), safe_mode=True)
    reference = np.asarray(model(dense[None]))[0, :, :, 0]
    with rasterio.open(tmp_path / "out/result.tif") as src:
        got = src.read(1)
        assert src.crs.to_epsg() == 32618
        assert src.transform.a == 10.0
    assert np.abs(got - reference).max() / np.abs(reference).max() <= 1e-5
    assert (tmp_path / "out/look.png").stat().st_size > 0

    again = run_tilepipe("run", str(tmp_path / "wf.yaml"), "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stdout

    info = run_tilepipe("info", str(tmp_path / "out/result.zarr"))
    assert info.returncode == 0
    assert "computed:" in info.stdout and "model_sha256" in info.stdout and "megapixels_per_second" in info.stdout


def test_ingest_info_export_quicklook_commands(tmp_path: Path) -> None:
    from rasterio.transform import from_origin

    data = np.zeros((1, 300, 260), dtype=np.uint8)
    data[0, 40:60, 30:90] = 7
    write_geotiff(tmp_path / "s.tif", data, crs="EPSG:4326", transform=from_origin(10, 50, 0.01, 0.01), nodata=0)
    ingest = run_tilepipe("ingest", str(tmp_path / "s.tif"), str(tmp_path / "s.zarr"), "--tile-size", "128")
    assert ingest.returncode == 0, ingest.stderr
    assert "3 x 3 tiles" in ingest.stdout
    info = run_tilepipe("info", str(tmp_path / "s.zarr"), "--json")
    assert info.returncode == 0
    import json

    d = json.loads(info.stdout)
    assert d["kind"] == "scene" and d["shape"] == [300, 260] and d["crs"] == "EPSG:4326"
    assert d["tiles_total"] == 9 and d["nonzero_entries"] == 20 * 60
    again = run_tilepipe("ingest", str(tmp_path / "s.tif"), str(tmp_path / "s.zarr"), "--tile-size", "64")
    assert_one_clear_line(again, "s.zarr", "--overwrite")
    export = run_tilepipe("export", str(tmp_path / "missing.zarr"), str(tmp_path / "x.tif"))
    assert_one_clear_line(export, "missing.zarr")
    assert not (tmp_path / "x.tif").exists()
