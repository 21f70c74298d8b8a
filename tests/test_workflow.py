"""Tests for tilepipe.workflow: YAML files into frozen specs, and one clear error otherwise."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from tilepipe.errors import TilepipeError, WorkflowError
from tilepipe.workflow import (
    ClusterSpec,
    InputSpec,
    ModelSpec,
    OutputSpec,
    SceneWorkflow,
    SyntheticSpec,
    TilingSpec,
    Workflow,
    load_scene_workflow,
    load_workflow,
    parse_workflow,
)

MINIMAL: dict[str, Any] = {
    "input": {"path": "scene.tif"},
    "model": {"path": "model.keras"},
    "output": {"zarr": "out/result.zarr"},
}

DEMO_YAML = """\
input: {synthetic: {shape: [8192, 8192], bands: 4, occupancy: 0.03, seed: 0}}
model: {builtin: demo}
tiling: {tile_size: 1024, halo: auto}
output: {zarr: ../out/demo/result.zarr, geotiff: ../out/demo/result.tif, quicklook: ../out/demo/quicklook.png}
cluster: {address: null}
"""


def write(tmp_path: Path, content: str | dict[str, Any], name: str = "x.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content), encoding="utf-8")
    return path


def with_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """MINIMAL with dotted keys set (``"tiling.halo": 3``), or removed when the value is ``...``."""
    data = copy.deepcopy(MINIMAL)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = data
        for name in parents:
            node = node.setdefault(name, {})
        if value is ...:
            node.pop(last, None)
        else:
            node[last] = value
    return data


# --------------------------------------------------------------------------- valid files


def test_minimal_workflow_gets_defaults(tmp_path: Path) -> None:
    wf = load_workflow(write(tmp_path, MINIMAL))

    assert wf == Workflow(
        source=str(tmp_path / "x.yaml"),
        input=InputSpec(path=str(tmp_path / "scene.tif"), nodata=None, bands=None, synthetic=None),
        model=ModelSpec(path=str(tmp_path / "model.keras"), builtin=None),
        tiling=TilingSpec(tile_size=(1024, 1024), halo=None),
        output=OutputSpec(
            zarr=str(tmp_path / "out/result.zarr"),
            scene=str(tmp_path / "out/result.scene.zarr"),
            geotiff=None,
            cog=False,
            quicklook=None,
        ),
        cluster=ClusterSpec(
            address=None, n_workers=None, threads_per_worker=None, gpu=False, batch_size=None
        ),
    )


def test_full_workflow(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
input:
  path: /data/scene.tif
  nodata: -9999
  bands: [3, 1, 2]
model:
  path: models/unet.keras
tiling:
  tile_size: [512, 256]
  halo: 16
output:
  zarr: out/result.zarr
  scene: stores/scene.zarr
  geotiff: out/result.tif
  cog: true
  quicklook: out/result.png
cluster:
  n_workers: 4
  threads_per_worker: 2
  gpu: true
  batch_size: 8
""",
    )
    wf = load_workflow(path)

    assert wf.input == InputSpec(path="/data/scene.tif", nodata=-9999.0, bands=(3, 1, 2))
    assert isinstance(wf.input.nodata, float)
    assert wf.model == ModelSpec(path=str(tmp_path / "models/unet.keras"))
    assert wf.tiling == TilingSpec(tile_size=(512, 256), halo=16)
    assert wf.output == OutputSpec(
        zarr=str(tmp_path / "out/result.zarr"),
        scene=str(tmp_path / "stores/scene.zarr"),
        geotiff=str(tmp_path / "out/result.tif"),
        cog=True,
        quicklook=str(tmp_path / "out/result.png"),
    )
    assert wf.cluster == ClusterSpec(n_workers=4, threads_per_worker=2, gpu=True, batch_size=8)


def test_demo_workflow(tmp_path: Path) -> None:
    wf = load_workflow(write(tmp_path, DEMO_YAML, "workflows/demo.yaml"))

    out = tmp_path / "out" / "demo"
    assert wf.input == InputSpec(
        path=None,
        synthetic=SyntheticSpec(shape=(8192, 8192), bands=4, occupancy=0.03, seed=0, dtype="float32"),
    )
    assert wf.model == ModelSpec(path=None, builtin="demo")
    assert wf.tiling == TilingSpec(tile_size=(1024, 1024), halo=None)
    assert wf.output == OutputSpec(
        zarr=str(out / "result.zarr"),
        scene=str(out / "result.scene.zarr"),
        geotiff=str(out / "result.tif"),
        quicklook=str(out / "quicklook.png"),
    )
    assert wf.cluster == ClusterSpec()


def test_synthetic_defaults(tmp_path: Path) -> None:
    data = with_changes({"input.path": ..., "input.synthetic": {"shape": [100, 200]}})
    wf = load_workflow(write(tmp_path, data))

    assert wf.input.path is None
    assert wf.input.synthetic == SyntheticSpec(
        shape=(100, 200), bands=4, occupancy=0.03, seed=0, dtype="float32"
    )


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_synthetic_dtypes(tmp_path: Path, dtype: str) -> None:
    data = with_changes(
        {"input.path": ..., "input.synthetic": {"shape": [8, 8], "dtype": dtype, "occupancy": 1}}
    )
    synthetic = load_workflow(write(tmp_path, data)).input.synthetic

    assert synthetic is not None
    assert synthetic.dtype == dtype
    assert synthetic.occupancy == 1.0
    assert isinstance(synthetic.occupancy, float)


def test_relative_paths_resolve_against_the_workflow_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    data = with_changes({"input.path": "../data/scene.tif", "output.zarr": "./out/../res.zarr"})
    write(tmp_path, data, "flows/x.yaml")

    wf = load_workflow("flows/x.yaml")  # a relative workflow path, resolved against the cwd

    assert wf.source == os.path.join("flows", "x.yaml")
    assert wf.input.path == str(tmp_path / "data" / "scene.tif")
    assert wf.model.path == str(tmp_path / "flows" / "model.keras")
    assert wf.output.zarr == str(tmp_path / "flows" / "res.zarr")
    assert wf.output.scene == str(tmp_path / "flows" / "res.scene.zarr")


def test_home_expands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    wf = load_workflow(write(tmp_path, with_changes({"model.path": "~/models/m.keras"})))

    assert wf.model.path == str(tmp_path / "home" / "models" / "m.keras")


@pytest.mark.parametrize(
    "url",
    [
        "s3://bucket/scenes/a.tif",
        "gs://bucket/a.zarr",
        "file:///data/a.tif",
        "memory://scene.zarr",
        "https://h/a.tif",
    ],
)
def test_urls_are_kept_unchanged(tmp_path: Path, url: str) -> None:
    wf = load_workflow(write(tmp_path, with_changes({"input.path": url})))

    assert wf.input.path == url


def test_url_outputs_and_default_scene_next_to_them(tmp_path: Path) -> None:
    data = with_changes(
        {
            "model.path": "s3://models/unet.keras",
            "output.zarr": "s3://bucket/runs/result.zarr/",
            "output.geotiff": "gs://b/r.tif",
        }
    )
    wf = load_workflow(write(tmp_path, data))

    assert wf.model.path == "s3://models/unet.keras"
    assert wf.output.zarr == "s3://bucket/runs/result.zarr/"
    assert wf.output.scene == "s3://bucket/runs/result.scene.zarr"
    assert wf.output.geotiff == "gs://b/r.tif"


def test_memory_url_default_scene(tmp_path: Path) -> None:
    wf = load_workflow(write(tmp_path, with_changes({"output.zarr": "memory://result.zarr"})))

    assert wf.output.scene == "memory://result.scene.zarr"


@pytest.mark.parametrize(
    ("given", "expected"), [(0, 0.0), (-3.5, -3.5), ("nan", math.nan), ("NaN", math.nan), (".nan", math.nan)]
)
def test_nodata(tmp_path: Path, given: object, expected: float) -> None:
    text = yaml.safe_dump(MINIMAL).replace("path: scene.tif", f"path: scene.tif\n  nodata: {given}")
    nodata = load_workflow(write(tmp_path, text)).input.nodata

    assert isinstance(nodata, float)
    assert nodata == expected or (math.isnan(nodata) and math.isnan(expected))


def test_null_means_absent(tmp_path: Path) -> None:
    data = with_changes(
        {
            "input.nodata": None,
            "input.bands": None,
            "tiling": None,
            "output.geotiff": None,
            "cluster.gpu": None,
        }
    )
    wf = load_workflow(write(tmp_path, data))

    assert wf.input.nodata is None
    assert wf.input.bands is None
    assert wf.tiling == TilingSpec()
    assert wf.output.geotiff is None
    assert wf.cluster.gpu is False


def test_remote_cluster_address(tmp_path: Path) -> None:
    data = with_changes({"cluster.address": "tls://10.0.0.1:8786", "cluster.gpu": True})
    cluster = load_workflow(write(tmp_path, data)).cluster

    assert cluster == ClusterSpec(address="tls://10.0.0.1:8786", gpu=True)


@given(
    rows=st.integers(min_value=1, max_value=2**31),
    cols=st.integers(min_value=1, max_value=2**31),
    halo=st.integers(min_value=0, max_value=2**20),
)
def test_tiling_round_trips(rows: int, cols: int, halo: int) -> None:
    data = with_changes({"tiling": {"tile_size": [rows, cols], "halo": halo}})
    wf = parse_workflow(data, source=Path("x.yaml"), base_dir=Path("/w"))

    assert wf.tiling == TilingSpec(tile_size=(rows, cols), halo=halo)


def test_parse_workflow_with_relative_base_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    wf = parse_workflow(MINIMAL, source=Path("in-memory.yaml"), base_dir=Path("flows"))

    assert wf.source == "in-memory.yaml"
    assert wf.input.path == str(tmp_path / "flows" / "scene.tif")


def test_specs_are_frozen_and_picklable(tmp_path: Path) -> None:
    wf = load_workflow(write(tmp_path, DEMO_YAML))

    with pytest.raises(dataclasses.FrozenInstanceError):
        wf.tiling.tile_size = (1, 1)  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(wf)) == wf


# --------------------------------------------------------------------------- overrides


def test_overrides_replace_only_what_is_given(tmp_path: Path) -> None:
    wf = load_workflow(write(tmp_path, with_changes({"cluster": {"n_workers": 2, "batch_size": 4}})))

    gpu = wf.with_overrides(gpu=True)
    assert gpu.cluster == ClusterSpec(n_workers=2, gpu=True, batch_size=4)
    assert gpu.input == wf.input
    assert wf.cluster.gpu is False  # the original is untouched

    remote = wf.with_overrides(address="tcp://sched:8786")
    assert remote.cluster == ClusterSpec(address="tcp://sched:8786", batch_size=4)

    embedded = remote.with_overrides(address=None, n_workers=3, batch_size=None)
    assert embedded.cluster == ClusterSpec(n_workers=3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"address": "sched:8786"},
            "cluster.address: expected a scheduler address like 'tcp://host:8786', got 'sched:8786'",
        ),
        ({"batch_size": 0}, "cluster.batch_size: expected an integer > 0, got 0"),
        ({"address": "tcp://h:1", "n_workers": 2}, "cluster.n_workers: only valid for the embedded cluster"),
    ],
)
def test_bad_overrides(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    path = write(tmp_path, MINIMAL)
    wf = load_workflow(path)

    with pytest.raises(WorkflowError) as info:
        wf.with_overrides(**overrides)
    assert str(info.value).startswith(f"{path} (with overrides): {message}")


# --------------------------------------------------------------------------- errors


BAD: list[tuple[dict[str, Any], str]] = [
    # required keys and sections
    ({"model": ...}, "model: missing required key 'model'"),
    ({"input": ...}, "input: missing required key 'input'"),
    ({"output.zarr": ...}, "output.zarr: missing required key 'zarr'"),
    ({"model": "model.keras"}, "model: expected a mapping with keys: path, builtin; got 'model.keras'"),
    ({"tiling": [1024]}, "tiling: expected a mapping with keys: tile_size, halo; got [1024]"),
    # unknown keys
    ({"tiling.tile_sise": 3}, "tiling.tile_sise: unknown key (expected one of: tile_size, halo)"),
    ({"outputs": {}}, "outputs: unknown key (expected one of: input, model, tiling, output, cluster)"),
    (
        {"input.synthetic": {"shape": [8, 8], "occupation": 0.1}, "input.path": ...},
        "input.synthetic.occupation: unknown key",
    ),
    # exactly one of
    (
        {"input.synthetic": {"shape": [8, 8]}},
        "input: expected exactly one of 'path' or 'synthetic', got both",
    ),
    ({"input.path": ...}, "input: expected exactly one of 'path' or 'synthetic', got neither"),
    ({"model.builtin": "demo"}, "model: expected exactly one of 'path' or 'builtin', got both"),
    ({"model.path": None}, "model: expected exactly one of 'path' or 'builtin', got neither"),
    # input
    ({"input.path": 5}, "input.path: expected a path or URL, got 5"),
    ({"input.path": ""}, "input.path: expected a path or URL, got ''"),
    ({"input.nodata": "none"}, "input.nodata: expected a number or 'nan', got 'none'"),
    ({"input.nodata": True}, "input.nodata: expected a number or 'nan', got true"),
    ({"input.bands": 1}, "input.bands: expected a non-empty list of 1-based band indexes, got 1"),
    ({"input.bands": []}, "input.bands: expected a non-empty list of 1-based band indexes, got []"),
    ({"input.bands": [1, 0]}, "input.bands[1]: expected an integer > 0, got 0"),
    ({"input.bands": [1, 2, 1]}, "input.bands: expected distinct band indexes, got [1, 2, 1]"),
    (
        {"input.path": ..., "input.nodata": 0, "input.synthetic": {"shape": [8, 8]}},
        "input.nodata: only valid with 'input.path'",
    ),
    # synthetic
    ({"input.path": ..., "input.synthetic": {}}, "input.synthetic.shape: missing required key 'shape'"),
    (
        {"input.path": ..., "input.synthetic": {"shape": [8]}},
        "input.synthetic.shape: expected [rows, cols] of integers > 0, got [8]",
    ),
    (
        {"input.path": ..., "input.synthetic": {"shape": [8, -1]}},
        "input.synthetic.shape[1]: expected an integer > 0, got -1",
    ),
    (
        {"input.path": ..., "input.synthetic": {"shape": [8, 8], "bands": 0}},
        "input.synthetic.bands: expected an integer > 0, got 0",
    ),
    (
        {"input.path": ..., "input.synthetic": {"shape": [8, 8], "occupancy": 0}},
        "input.synthetic.occupancy: expected a fraction 0 < x <= 1, got 0.0",
    ),
    (
        {"input.path": ..., "input.synthetic": {"shape": [8, 8], "occupancy": 1.5}},
        "input.synthetic.occupancy: expected a fraction 0 < x <= 1, got 1.5",
    ),
    (
        {"input.path": ..., "input.synthetic": {"shape": [8, 8], "occupancy": "3%"}},
        "input.synthetic.occupancy: expected a number, got '3%'",
    ),
    (
        {"input.path": ..., "input.synthetic": {"shape": [8, 8], "seed": -1}},
        "input.synthetic.seed: expected an integer >= 0, got -1",
    ),
    (
        {"input.path": ..., "input.synthetic": {"shape": [8, 8], "seed": 1.5}},
        "input.synthetic.seed: expected an integer >= 0, got 1.5",
    ),
    (
        {"input.path": ..., "input.synthetic": {"shape": [8, 8], "dtype": "float64"}},
        "input.synthetic.dtype: expected one of: uint8, uint16, int16, float32, got 'float64'",
    ),
    # model
    ({"model.path": "model.h5"}, "model.path: expected a Keras v3 .keras file, got 'model.h5'"),
    ({"model.path": ..., "model.builtin": "resnet"}, "model.builtin: expected one of: demo, unet, got 'resnet'"),
    # tiling
    ({"tiling.tile_size": -5}, "tiling.tile_size: expected an integer > 0, got -5"),
    ({"tiling.tile_size": 0}, "tiling.tile_size: expected an integer > 0, got 0"),
    (
        {"tiling.tile_size": True},
        "tiling.tile_size: expected an integer > 0 or [rows, cols] of integers > 0, got true",
    ),
    (
        {"tiling.tile_size": 512.0},
        "tiling.tile_size: expected an integer > 0 or [rows, cols] of integers > 0, got 512.0",
    ),
    (
        {"tiling.tile_size": [512, 0]},
        "tiling.tile_size: expected an integer > 0 or [rows, cols] of integers > 0, got [512, 0]",
    ),
    (
        {"tiling.tile_size": [1, 2, 3]},
        "tiling.tile_size: expected an integer > 0 or [rows, cols] of integers > 0, got [1, 2, 3]",
    ),
    (
        {"tiling.tile_size": "1024"},
        "tiling.tile_size: expected an integer > 0 or [rows, cols] of integers > 0, got '1024'",
    ),
    ({"tiling.halo": -1}, "tiling.halo: expected 'auto' or an integer >= 0, got -1"),
    ({"tiling.halo": "big"}, "tiling.halo: expected 'auto' or an integer >= 0, got 'big'"),
    ({"tiling.halo": False}, "tiling.halo: expected 'auto' or an integer >= 0, got false"),
    # output
    ({"output.zarr": ["a", "b"]}, "output.zarr: expected a path or URL, got ['a', 'b']"),
    ({"output.cog": "yes"}, "output.cog: expected true or false, got 'yes'"),
    ({"output.cog": True}, "output.cog: only valid with 'output.geotiff'"),
    ({"output.scene": "out/result.zarr"}, "output.scene: expected a location other than output.zarr"),
    (
        {"output.quicklook": "out/q.png", "output.geotiff": "out/q.png"},
        "output.quicklook: expected a location other than output.geotiff",
    ),
    # cluster
    ({"cluster.gpu": "yes please"}, "cluster.gpu: expected true or false, got 'yes please'"),
    ({"cluster.gpu": 1}, "cluster.gpu: expected true or false, got 1"),
    (
        {"cluster.address": "localhost:8786"},
        "cluster.address: expected a scheduler address like 'tcp://host:8786', got 'localhost:8786'",
    ),
    (
        {"cluster.address": "tcp://h:8786", "cluster.n_workers": 2},
        "cluster.n_workers: only valid for the embedded cluster",
    ),
    ({"cluster.n_workers": 0}, "cluster.n_workers: expected an integer > 0, got 0"),
    ({"cluster.threads_per_worker": "4"}, "cluster.threads_per_worker: expected an integer > 0, got '4'"),
    ({"cluster.batch_size": True}, "cluster.batch_size: expected an integer > 0, got true"),
]


@pytest.mark.parametrize(("changes", "message"), BAD, ids=[message.split(":")[0] for _, message in BAD])
def test_bad_workflow(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    path = write(tmp_path, with_changes(changes))

    with pytest.raises(WorkflowError) as info:
        load_workflow(path)

    error = info.value
    assert isinstance(error, ValueError)
    assert isinstance(error, TilepipeError)
    assert str(error).startswith(f"{path}: {message}")
    assert "\n" not in str(error)


def test_message_names_the_file_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, with_changes({"tiling.tile_size": -5}), "workflows/x.yaml")

    with pytest.raises(
        WorkflowError, match=r"^workflows/x\.yaml: tiling\.tile_size: expected an integer > 0, got -5$"
    ):
        load_workflow(Path("workflows/x.yaml"))


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(
        WorkflowError, match=r"nope\.yaml: cannot read workflow file: No such file or directory"
    ) as info:
        load_workflow(path)
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(WorkflowError, match="cannot read workflow file"):
        load_workflow(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_bytes(b"input: \xff\xfe\n")
    with pytest.raises(WorkflowError, match=r"x\.yaml: cannot read workflow file: not UTF-8 text"):
        load_workflow(path)


def test_invalid_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "input: {path: a.tif\nmodel: [\n")
    with pytest.raises(WorkflowError) as info:
        load_workflow(path)
    message = str(info.value)
    assert message.startswith(f"{path}: invalid YAML: ")
    assert "line " in message and "column " in message
    assert isinstance(info.value.__cause__, yaml.YAMLError)


def test_yaml_tags_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "input: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(WorkflowError, match="invalid YAML"):
        load_workflow(path)


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing here\n")
    with pytest.raises(WorkflowError, match=r"x\.yaml: expected a workflow mapping, got an empty file"):
        load_workflow(path)


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- input\n- model\n")
    with pytest.raises(WorkflowError) as info:
        load_workflow(path)
    assert str(info.value) == (
        f"{path}: expected a workflow mapping with keys: input, model, tiling, output, cluster; got ['input', 'model']"
    )


def test_parse_workflow_accepts_python_tuples() -> None:
    data = with_changes({"tiling.tile_size": (256, 128), "input.bands": (2, 1)})
    wf = parse_workflow(data, source=Path("api"), base_dir=Path("/w"))

    assert wf.tiling.tile_size == (256, 128)
    assert wf.input.bands == (2, 1)


# --------------------------------------------------------------------------- scene workflows (tilepipe watch)


def test_scene_workflow_binds_each_scene(tmp_path: Path) -> None:
    # The contract's own spelling: {scene} inside a YAML flow mapping, which plain YAML refuses.
    path = write(tmp_path, "model: {path: model.keras}\ntiling: {tile_size: 256}\n"
                           "output: {zarr: out/{scene}.zarr, geotiff: out/{scene}.tif, quicklook: 'ql/{scene}.png'}\n")
    swf = load_scene_workflow(path)
    assert isinstance(swf, SceneWorkflow)
    assert swf.output.zarr == str(tmp_path / "out" / "{scene}.zarr")
    assert swf.output.scene == str(tmp_path / "out" / "{scene}.scene.zarr")
    wf = swf.bind("/inbox/T31UDQ_2026.tif")
    assert isinstance(wf, Workflow)
    assert wf.input == InputSpec(path="/inbox/T31UDQ_2026.tif")
    assert wf.output == OutputSpec(zarr=str(tmp_path / "out" / "T31UDQ_2026.zarr"),
                                   scene=str(tmp_path / "out" / "T31UDQ_2026.scene.zarr"),
                                   geotiff=str(tmp_path / "out" / "T31UDQ_2026.tif"),
                                   quicklook=str(tmp_path / "ql" / "T31UDQ_2026.png"))
    assert wf.tiling.tile_size == (256, 256) and wf.model == swf.model and wf.source == str(path)
    assert swf.bind("s3://b/in/x.tif", name="y").output.zarr.endswith("/out/y.zarr")
    url = write(tmp_path, "model: {path: m.keras}\noutput: {zarr: 's3://bucket/out/{scene}/result.zarr'}\n", "u.yaml")
    assert load_scene_workflow(url).bind("/i/a.tif").output.zarr == "s3://bucket/out/a/result.zarr"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("input: {path: a.tif}\nmodel: {path: m.keras}\noutput: {zarr: 'o/{scene}.zarr'}\n",
         r"x\.yaml: input: not used when watching"),
        ("model: {path: m.keras}\noutput: {zarr: o/result.zarr}\n",
         r"x\.yaml: output\.zarr: expected a path holding \{scene\}.*got 'o/result.zarr'"),
        ("model: {path: m.keras}\noutput: {zarr: 'o/{scene}.zarr', geotiff: o/one.tif}\n",
         r"x\.yaml: output\.geotiff: expected a path holding \{scene\}"),
        ("model: {path: m.keras}\noutput: {zarr: 'o/{name}.zarr'}\n",
         r"x\.yaml: output\.zarr: expected no placeholder but \{scene\}, got '\{name\}'"),
        ("model: {path: m.keras}\n", r"x\.yaml: output: missing required key 'output'"),
    ],
)
def test_scene_workflow_errors_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(WorkflowError, match=message):
        load_scene_workflow(write(tmp_path, text))


def test_ordinary_workflows_still_need_input(tmp_path: Path) -> None:
    path = write(tmp_path, "model: {path: m.keras}\noutput: {zarr: 'o/{scene}.zarr'}\n")
    with pytest.raises(WorkflowError, match=r"x\.yaml: input: missing required key 'input'"):
        load_workflow(path)


def test_output_region_is_parsed_and_checked(tmp_path: Path) -> None:
    from tilepipe.workflow import parse_workflow

    base = {"input": {"path": "in.tif"}, "model": {"path": "m.keras"}}
    wf = parse_workflow({**base, "output": {"zarr": "r.zarr", "geotiff": "r.tif", "window": [1, 2, 3, 4]}},
                        source=tmp_path / "w.yaml", base_dir=tmp_path)
    assert wf.output.window == (1, 2, 3, 4) and wf.output.bounds is None
    wf = parse_workflow({**base, "output": {"zarr": "r.zarr", "geotiff": "r.tif", "bounds": [0, 1.5, 2, 3]}},
                        source=tmp_path / "w.yaml", base_dir=tmp_path)
    assert wf.output.bounds == (0.0, 1.5, 2.0, 3.0)
    for output, needle in (({"window": [1, 2, 3]}, "output.window"), ({"window": [1, 2, 3, -4]}, "output.window[3]"),
                           ({"bounds": [0, 0, 1, "x"]}, "output.bounds[3]"),
                           ({"bounds": [0, 0, 1, 1], "window": [0, 0, 1, 1]}, "not both")):
        with pytest.raises(WorkflowError, match=re.escape(needle)):
            parse_workflow({**base, "output": {"zarr": "r.zarr", "geotiff": "r.tif", **output}},
                           source=tmp_path / "w.yaml", base_dir=tmp_path)
    with pytest.raises(WorkflowError, match=re.escape("only valid with 'output.geotiff'")):
        parse_workflow({**base, "output": {"zarr": "r.zarr", "window": [0, 0, 1, 1]}},
                       source=tmp_path / "w.yaml", base_dir=tmp_path)
