"""README's Python example, run as the script a user would save it as, checked against the dense model."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio

from tilepipe.store import ResultStore

from helpers import Checker

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README's Python API section has no python block"
    return match.group(1)


def test_readme_example_runs_as_a_script_and_is_exact(tmp_path: Path, assert_exact: Checker) -> None:
    script = tmp_path / "example.py"
    script.write_text(_example(), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "DASK_SCHEDULER_ADDRESS"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "tiles total 16" in proc.stdout
    for name in ("result.tif", "result.png", "model.keras"):
        assert (tmp_path / name).is_file()
    # The reference: the script's own scene (its top level, without the __main__ part) densified whole.
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        names = runpy.run_path(str(script), run_name="not_main")
    finally:
        os.chdir(cwd)
    dense = np.zeros((2048, 2048, 2), np.float32)
    dense[tuple(names["indices"].T)] = names["values"]
    ref = np.asarray(names["model"](dense[None]))[0].transpose(2, 0, 1)
    assert_exact(ResultStore.open(tmp_path / "result.zarr", mode="r").read(), ref, "README example")
    with rasterio.open(tmp_path / "result.tif") as src:
        assert_exact(src.read(), ref, "README example GeoTIFF")
        assert src.crs.to_epsg() == 32618
