"""Quiet for API users: the worker processes tilepipe starts show no TensorFlow start-up lines.

A spawned worker re-imports the caller's main module, so a script that does ``import keras``
at its top starts TensorFlow in every worker before any tilepipe code runs there. Each script
here hides its *own* TensorFlow lines (that is the user's business, left alone by tilepipe),
so what is left on its stderr comes from the workers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

#: Lines TensorFlow, absl, oneDNN and CUDA print as TensorFlow starts.
NOISE = ("oneDNN", "cuda", "absl", "TF-TRT", "This TensorFlow binary", "E0000", "W0000", "I0000")

#: The user's side: its own TensorFlow start is hushed by the script itself, in its main process only.
PRELUDE = '''
import contextlib, os, sys

@contextlib.contextmanager
def hushed():
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)

if __name__ == "__main__":
    with hushed():
        import keras
else:  # a worker re-importing this script: its TensorFlow lines are tilepipe's to hide
    import keras

import numpy as np
import tilepipe
'''

RUN = PRELUDE + '''
def main(folder):
    with hushed():
        model = keras.Sequential([keras.Input((None, None, 1)), keras.layers.Conv2D(2, 3, padding="same")])
        model.save(f"{folder}/m.keras")
    rng = np.random.default_rng(0)
    rows, cols = np.divmod(rng.choice(64 * 64, 60, replace=False), 64)
    values = rng.random(60).astype("float32") + 1
    tilepipe.ingest((np.stack([rows, cols], axis=1), values, (64, 64)), f"{folder}/scene.zarr", tile_size=16,
                    model=f"{folder}/m.keras")
    report = tilepipe.run(f"{folder}/scene.zarr", f"{folder}/m.keras", f"{folder}/result.zarr", n_workers=2)
    dense = np.zeros((1, 64, 64, 1), np.float32)
    np.add.at(dense[0, :, :, 0], (rows, cols), values)
    with hushed():
        reference = np.moveaxis(np.asarray(model(dense))[0], -1, 0)
    got = tilepipe.open_result(f"{folder}/result.zarr").read()
    print(f"computed {report.computed} workers {len(report.tiles_per_worker)} "
          f"error {np.abs(got - reference).max() / np.abs(reference).max():.3g}")

if __name__ == "__main__":
    main(sys.argv[1])
'''

FAIL = PRELUDE + '''
import zipfile

from tilepipe.api import connect

def say():
    print("a plain line from a worker", file=sys.stderr, flush=True)

def main(folder):
    with zipfile.ZipFile(f"{folder}/broken.keras", "w") as z:
        z.writestr("config.json", "not a model")
    rng = np.random.default_rng(0)
    points = np.stack(np.divmod(rng.choice(32 * 32, 20, replace=False), 32), axis=1)
    tilepipe.ingest((points, np.ones(20, np.float32), (32, 32)), f"{folder}/scene.zarr", tile_size=16, halo=1)
    with connect(n_workers=1) as client:
        client.run(say)
        tilepipe.run(f"{folder}/scene.zarr", f"{folder}/broken.keras", f"{folder}/result.zarr", client=client)

if __name__ == "__main__":
    main(sys.argv[1])
'''


def _script(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    """Run ``text`` as a user's script, in a plain environment (no tilepipe or TensorFlow settings)."""
    (tmp_path / "script.py").write_text(text)
    drop = ("DASK_SCHEDULER_ADDRESS", "TF_CPP_MIN_LOG_LEVEL", "TILEPIPE_TF_VERBOSE")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return subprocess.run([sys.executable, str(tmp_path / "script.py"), str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=300, check=False, cwd=tmp_path)


def _noise(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if any(word in line for word in NOISE)]


@pytest.mark.cluster
def test_api_run_on_the_embedded_cluster_prints_no_tensorflow_lines(tmp_path: Path) -> None:
    proc = _script(tmp_path, RUN)
    assert proc.returncode == 0, proc.stderr
    assert _noise(proc.stderr) == [], proc.stderr
    words = proc.stdout.split()
    assert int(words[words.index("computed") + 1]) > 0
    assert float(words[words.index("error") + 1]) <= 1e-5


@pytest.mark.cluster
def test_worker_errors_and_plain_lines_are_still_shown(tmp_path: Path) -> None:
    proc = _script(tmp_path, FAIL)
    assert proc.returncode == 1
    assert "a plain line from a worker" in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("tilepipe.errors.ModelError: ") and "broken.keras: cannot load the model" in last, last
    assert _noise(proc.stderr) == [], proc.stderr


def test_processes_started_in_the_block_lose_only_tensorflow_lines(capfd: pytest.CaptureFixture[str]) -> None:
    from tilepipe.logs import without_tensorflow_lines

    before = os.fstat(2)
    child = (
        "import sys\n"
        "sys.stderr.write('WARNING: All log messages before absl::InitializeLog() is called are written to "
        "STDERR\\n')\n"
        "sys.stderr.write('I0000 00:00:1796227892.912074   21332 port.cc:153] oneDNN custom operations are on.\\n')\n"
        "sys.stderr.write('E0000 00:00:1796227895.846464   21332 cuda_platform.cc:52] failed call to cuInit\\n')\n"
        "sys.stderr.write('2024-01-01 12:00:00.123456: I tensorflow/core/util/port.cc:113] oneDNN custom\\n')\n"
        "sys.stderr.write('To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
        "with the appropriate compiler flags.\\n')\n"
        "sys.stderr.write('a line of the child\\n')\n"
    )
    with without_tensorflow_lines():
        proc = subprocess.Popen([sys.executable, "-c", child])
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)  # this process's stderr is its own again
    proc.wait(timeout=60)
    err = ""
    deadline = time.monotonic() + 10
    while "a line of the child" not in err and time.monotonic() < deadline:
        time.sleep(0.05)
        err += capfd.readouterr().err
    assert err == "a line of the child\n"
