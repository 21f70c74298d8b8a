"""Workflow files: YAML parsed at the door into frozen, typed specs.

A workflow names a scene, a model, how to tile, where results go and which Dask
cluster does the work. :func:`load_workflow` turns the file into a
:class:`Workflow` or raises one :class:`~tilepipe.errors.WorkflowError` whose
message names the file, the key path and what was expected::

    workflows/x.yaml: tiling.tile_size: expected an integer > 0, got -5

Nothing downstream re-checks a dict. Conventions of the file format:

- ``null`` means the same as leaving the key out (its default, or "missing").
- Unknown keys are errors, so a typo never silently becomes a default.
- Local paths are resolved against the workflow file's folder, ``~`` expands;
  URLs with a scheme (``s3://``, ``gs://``, ``file://``, ``memory://``) are
  kept exactly as written. Existence is not checked here: a path may only make
  sense on the workers.
- Shapes and sizes are ``(row, col)``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Any, TypeGuard

import yaml

from tilepipe.errors import WorkflowError
from tilepipe.export.products import Classes, Scale, Threshold
from tilepipe.geometry.grid import DEFAULT_TILE_SIZE, parse_tile_size
from tilepipe.location import has_scheme
from tilepipe.model.loader import is_model_file
from tilepipe.sources.kinds import is_scene_store, is_stac_item

__all__ = [
    "BUILTIN_MODELS",
    "SYNTHETIC_DTYPES",
    "ClusterSpec",
    "InputSpec",
    "ModelSpec",
    "OutputSpec",
    "PRODUCT_KEYS",
    "ProductSpec",
    "SCENE_PLACEHOLDER",
    "SceneWorkflow",
    "SyntheticSpec",
    "TilingSpec",
    "Workflow",
    "load_scene_workflow",
    "load_workflow",
    "parse_scene_workflow",
    "parse_workflow",
]

#: Models tilepipe builds itself, usable as ``model: {builtin: <name>}``.
BUILTIN_MODELS: tuple[str, ...] = ("demo", "unet")
#: Pixel types a synthetic scene can have.
SYNTHETIC_DTYPES: tuple[str, ...] = ("uint8", "uint16", "int16", "float32")
#: Products of the float result a workflow's output may ask for, each a GeoTIFF of its own.
PRODUCT_KEYS: tuple[str, ...] = ("classes", "threshold", "scale")
#: What a scene workflow's output paths hold where the scene file's stem goes.
SCENE_PLACEHOLDER = "{scene}"


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True, slots=True)
class SyntheticSpec:
    """A generated sparse demo scene.

    ``shape`` is ``(rows, cols)`` in pixels; ``occupancy`` is the fraction of
    tiles that hold data, in ``(0, 1]``.
    """

    shape: tuple[int, int]
    bands: int = 4
    occupancy: float = 0.03
    seed: int = 0
    dtype: str = "float32"


@dataclass(frozen=True, slots=True)
class InputSpec:
    """The scene: exactly one of ``path``, ``stack`` or ``synthetic``.

    ``path`` is one raster (GeoTIFF, VRT, anything rasterio opens), a scene
    store (``.zarr``) or a local STAC item (``.json``, with ``assets``: the
    asset keys to stack, in order). ``stack`` holds the rasters of a band
    stack (``input.path`` given as a list), on one grid, stacked in order.
    ``nodata`` ``None`` means "as each band says"; ``bands`` are 1-based band
    indexes of a single raster, ``None`` meaning all bands. ``mask``: honour a
    raster's mask (an internal or ``.msk`` mask, an alpha band), where it has one:
    its masked pixels are absent, as nodata pixels are.
    """

    path: str | None
    nodata: float | None = None
    bands: tuple[int, ...] | None = None
    synthetic: SyntheticSpec | None = None
    stack: tuple[str, ...] | None = None
    assets: tuple[str, ...] | None = None
    mask: bool = True

    @property
    def raster(self) -> str | tuple[str, ...] | None:
        """What ingest reads: the raster or STAC item path, the stack's paths, or None (synthetic)."""
        return self.stack if self.stack is not None else self.path

    @property
    def scene_store(self) -> str | None:
        """``path`` where it names a scene store (used as it is, not ingested), else None."""
        return self.path if self.path is not None and is_scene_store(self.path) else None

    @property
    def paths(self) -> tuple[str, ...]:
        """Every path the input names (for overlap checks)."""
        return self.stack if self.stack is not None else (self.path,) if self.path is not None else ()


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """The model: exactly one of ``path`` (a Keras v3 ``.keras`` file) or ``builtin``."""

    path: str | None
    builtin: str | None = None


@dataclass(frozen=True, slots=True)
class TilingSpec:
    """How to cut the scene: ``tile_size`` is ``(rows, cols)`` in pixels.

    ``halo`` is ``None`` for "derive it from the model", else the halo in
    pixels to ingest with. It must be at least what the model needs: ingest
    refuses a smaller one (:class:`~tilepipe.errors.InputError`) and keeps a
    larger one (wider windows, same result). When the input is an existing
    scene store, neither field is used: the store keeps the tiling it was
    ingested with.
    """

    tile_size: tuple[int, int] = (DEFAULT_TILE_SIZE, DEFAULT_TILE_SIZE)
    halo: int | None = None


@dataclass(frozen=True, slots=True)
class ProductSpec:
    """A GeoTIFF derived from the float result: where it goes and what it holds."""

    path: str
    product: Classes | Threshold | Scale


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """Where results go: the result store, the scene store and optional exports.

    ``geotiff`` is the float result; ``classes``, ``threshold`` and ``scale`` are
    products of it, each a GeoTIFF of its own (``cog`` applies to every GeoTIFF).
    ``band_names`` (one per output band) name the bands in the store and the GeoTIFFs.
    """

    zarr: str
    scene: str
    geotiff: str | None = None
    cog: bool = False
    quicklook: str | None = None
    band_names: tuple[str, ...] | None = None
    classes: ProductSpec | None = None
    threshold: ProductSpec | None = None
    scale: ProductSpec | None = None
    bounds: tuple[float, float, float, float] | None = None  # the GeoTIFFs' region, in the result's CRS
    window: tuple[int, int, int, int] | None = None  # the GeoTIFFs' region: row, col, height, width

    @property
    def products(self) -> tuple[tuple[str, ProductSpec], ...]:
        """``(key, spec)`` of every product asked for, in file order: classes, threshold, scale."""
        found = ((name, getattr(self, name)) for name in PRODUCT_KEYS)
        return tuple((name, spec) for name, spec in found if spec is not None)

    def with_paths(self, move: Callable[[str, str], str]) -> OutputSpec:
        """A copy with every path ``p`` of key ``k`` (``zarr``, ``classes``, ...) replaced by ``move(k, p)``."""
        def opt(key: str, where: str | None) -> str | None:
            return None if where is None else move(key, where)

        def product(key: str, spec: ProductSpec | None) -> ProductSpec | None:
            return None if spec is None else replace(spec, path=move(key, spec.path))

        return replace(self, zarr=move("zarr", self.zarr), scene=move("scene", self.scene),
                       geotiff=opt("geotiff", self.geotiff), quicklook=opt("quicklook", self.quicklook),
                       classes=product("classes", self.classes), threshold=product("threshold", self.threshold),
                       scale=product("scale", self.scale))


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """Which Dask cluster runs the work.

    ``address`` ``None`` means an embedded ``LocalCluster`` (sized by
    ``n_workers`` and ``threads_per_worker`` when given); else the address of an
    existing scheduler. ``batch_size`` is tiles per model call.
    """

    address: str | None = None
    n_workers: int | None = None
    threads_per_worker: int | None = None
    gpu: bool = False
    batch_size: int | None = None


class _Unset(Enum):
    UNSET = "unset"


_UNSET = _Unset.UNSET


@dataclass(frozen=True, slots=True)
class Workflow:
    """A parsed workflow file. ``source`` is the file it came from, for messages."""

    source: str
    input: InputSpec
    model: ModelSpec
    tiling: TilingSpec
    output: OutputSpec
    cluster: ClusterSpec

    def with_overrides(
        self,
        *,
        address: str | _Unset | None = _UNSET,
        n_workers: int | _Unset | None = _UNSET,
        threads_per_worker: int | _Unset | None = _UNSET,
        gpu: bool | _Unset = _UNSET,
        batch_size: int | _Unset | None = _UNSET,
    ) -> Workflow:
        """A copy with cluster settings replaced, e.g. from CLI flags.

        Arguments left out keep the file's value; ``None`` resets to the default.
        Values are checked as if they were in the file. A new ``address`` drops the
        file's embedded-only ``n_workers`` and ``threads_per_worker``.
        """
        merged: dict[str, object] = asdict(self.cluster)
        if address is not _UNSET and address is not None:
            merged["n_workers"] = merged["threads_per_worker"] = None
        given = {
            "address": address,
            "n_workers": n_workers,
            "threads_per_worker": threads_per_worker,
            "gpu": gpu,
            "batch_size": batch_size,
        }
        merged.update({name: value for name, value in given.items() if value is not _UNSET})
        try:
            cluster = _parse_cluster(merged)
        except _Invalid as exc:
            # _Invalid only carries the message: chaining it would add noise, not cause.
            raise exc.error(f"{self.source} (with overrides)") from None
        return replace(self, cluster=cluster)


@dataclass(frozen=True, slots=True)
class SceneWorkflow:
    """A workflow run on every scene of a watched inbox: no input; ``{scene}`` in output paths.

    :meth:`bind` makes the ordinary :class:`Workflow` of one scene file.
    """

    source: str
    model: ModelSpec
    tiling: TilingSpec
    output: OutputSpec
    cluster: ClusterSpec

    def bind(self, scene: str, *, name: str | None = None) -> Workflow:
        """The workflow of the scene at ``scene`` (a path), ``{scene}`` replaced by ``name``
        (default: the file's stem)."""
        stem = name if name is not None else PurePosixPath(scene.replace(os.sep, "/")).stem

        output = self.output.with_paths(lambda _key, where: where.replace(SCENE_PLACEHOLDER, stem))
        return Workflow(self.source, InputSpec(path=scene), self.model, self.tiling, output, self.cluster)


# --------------------------------------------------------------------------- entry points


def load_workflow(path: str | os.PathLike[str]) -> Workflow:
    """Read and parse the workflow file at ``path``.

    Raises
    ------
    WorkflowError
        If the file cannot be read, is not YAML, or does not describe a valid
        workflow. The message names the file and the offending key.
    """
    source = Path(path)
    return parse_workflow(_read_yaml(source), source=source, base_dir=source.parent.absolute())


def load_scene_workflow(path: str | os.PathLike[str]) -> SceneWorkflow:
    """Read and parse the scene workflow file at ``path`` (what ``tilepipe watch`` runs).

    Raises
    ------
    WorkflowError
        As :func:`load_workflow`; also where the file has an ``input`` section
        or an output path without ``{scene}``.
    """
    source = Path(path)
    # `{scene}` inside a flow mapping (`output: {zarr: out/{scene}.zarr}`) is not valid YAML: a
    # stand-in goes through the parser instead, and is put back in every string.
    data = _restore(_read_yaml(source, stand_in=_SCENE_STAND_IN), _SCENE_STAND_IN)
    return parse_scene_workflow(data, source=source, base_dir=source.parent.absolute())


_SCENE_STAND_IN = "__tilepipe_scene_placeholder__"


def _restore(value: object, stand_in: str) -> object:
    """``value`` with ``stand_in`` replaced by ``{scene}`` in every string, keys included."""
    if isinstance(value, str):
        return value.replace(stand_in, SCENE_PLACEHOLDER)
    if isinstance(value, Mapping):
        return {_restore(k, stand_in): _restore(v, stand_in) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v, stand_in) for v in value]
    return value


def _read_yaml(source: Path, *, stand_in: str | None = None) -> object:
    try:
        text = source.read_text(encoding="utf-8")
        if stand_in is not None:
            text = text.replace(SCENE_PLACEHOLDER, stand_in)
    except UnicodeDecodeError as exc:
        raise WorkflowError(f"{source}: cannot read workflow file: not UTF-8 text") from exc
    except OSError as exc:
        raise WorkflowError(f"{source}: cannot read workflow file: {exc.strerror or exc}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WorkflowError(f"{source}: invalid YAML: {_describe_yaml_error(exc)}") from exc


def parse_workflow(data: object, *, source: Path, base_dir: Path) -> Workflow:
    """Parse already-loaded YAML ``data`` into a :class:`Workflow`.

    ``source`` names the file in messages; relative paths resolve against
    ``base_dir`` (made absolute against the current directory if it is not).
    """
    if data is None:
        raise WorkflowError(f"{source}: expected a workflow mapping, got an empty file")
    try:
        top = _Section(data, "", ("input", "model", "tiling", "output", "cluster"))
        return Workflow(
            source=str(source),
            input=_parse_input(top.require("input"), base_dir),
            model=_parse_model(top.require("model"), base_dir),
            tiling=_parse_tiling(top.get("tiling", {})),
            output=_parse_output(top.require("output"), base_dir),
            cluster=_parse_cluster(top.get("cluster", {})),
        )
    except _Invalid as exc:
        raise exc.error(str(source)) from None


def parse_scene_workflow(data: object, *, source: Path, base_dir: Path) -> SceneWorkflow:
    """Parse already-loaded YAML ``data`` into a :class:`SceneWorkflow` (as :func:`parse_workflow`)."""
    if data is None:
        raise WorkflowError(f"{source}: expected a workflow mapping, got an empty file")
    try:
        top = _Section(data, "", ("model", "tiling", "output", "cluster"), why={
            "input": "not used when watching: each scene of the inbox is the input; remove the 'input' section"})
        output = _parse_output(top.require("output"), base_dir)
        _require_placeholders(top.require("output"), output)
        return SceneWorkflow(
            source=str(source),
            model=_parse_model(top.require("model"), base_dir),
            tiling=_parse_tiling(top.get("tiling", {})),
            output=output,
            cluster=_parse_cluster(top.get("cluster", {})),
        )
    except _Invalid as exc:
        raise exc.error(str(source)) from None


def _require_placeholders(section: object, output: OutputSpec) -> None:
    """Every output path of a scene workflow names ``{scene}``, else all scenes would write one place."""
    given = section if isinstance(section, Mapping) else {}
    paths: list[tuple[str, str | None, object]] = [
        (f"output.{name}", getattr(output, name), given.get(name))
        for name in ("zarr", "scene", "geotiff", "quicklook")
    ]
    for name, spec in output.products:
        written = given.get(name)
        key = f"output.{name}.path" if isinstance(written, Mapping) else f"output.{name}"
        paths.append((key, spec.path, written.get("path") if isinstance(written, Mapping) else written))
    for key, where, written in paths:
        if where is None or (key == "output.scene" and given.get("scene") is None):
            continue  # the default scene store derives from output.zarr
        for found in re.findall(r"\{[^{}]*\}", where):
            if found != SCENE_PLACEHOLDER:
                raise _Invalid(key, f"expected no placeholder but {SCENE_PLACEHOLDER}, got {found!r}")
        if SCENE_PLACEHOLDER not in where:
            raise _Invalid(key, f"expected a path holding {SCENE_PLACEHOLDER} (the scene file's "
                                f"stem), got {_show(written)}")


# --------------------------------------------------------------------------- sections


def _parse_input(value: object, base_dir: Path) -> InputSpec:
    sec = _Section(value, "input", ("path", "assets", "nodata", "bands", "mask", "synthetic"))
    sec.exactly_one_of("path", "synthetic")
    if sec.has("synthetic"):
        for name in ("nodata", "bands", "assets", "mask"):
            if sec.has(name):
                raise _Invalid(sec.key_of(name), "only valid with 'input.path', not with 'input.synthetic'")
        return InputSpec(path=None, synthetic=_parse_synthetic(sec.require("synthetic")))
    nodata = sec.get("nodata")
    bands = sec.get("bands")
    spec = InputSpec(
        path=None,
        nodata=None if nodata is None else _nodata(nodata, sec.key_of("nodata")),
        bands=None if bands is None else _bands(bands, sec.key_of("bands")),
        mask=_bool(sec.get("mask", True), sec.key_of("mask")),
    )
    given = sec.require("path")
    if isinstance(given, (list, tuple)):
        for name in ("bands", "assets"):
            if sec.has(name):
                raise _Invalid(sec.key_of(name), "only valid with one path in 'input.path', not with a list "
                                                 "(a band stack: the list names the bands, in order)")
        return replace(spec, stack=_stack(given, sec.key_of("path"), base_dir))
    path = _location(given, sec.key_of("path"), base_dir)
    stac = is_stac_item(path)
    if stac and not sec.has("assets"):
        raise _Invalid(sec.key_of("assets"), "missing required key 'assets' (the STAC item's asset keys to "
                                             "stack, in order, e.g. [B04, B03, B02])")
    if sec.has("assets") and not stac:
        raise _Invalid(sec.key_of("assets"), f"only valid with a STAC item (a .json file) in 'input.path', "
                                             f"got {_show(given)}")
    if stac and sec.has("bands"):
        raise _Invalid(sec.key_of("bands"), "only valid with a raster in 'input.path', not with a STAC item "
                                            "(its assets name the bands, in order)")
    assets = _assets(sec.require("assets"), sec.key_of("assets")) if stac else None
    return replace(spec, path=path, assets=assets)


def _stack(value: list[object] | tuple[object, ...], key: str, base_dir: Path) -> tuple[str, ...]:
    """The rasters of a band stack: a non-empty list of raster paths (no scene stores, no STAC items)."""
    if not value:
        raise _Invalid(key, "expected a path, or a non-empty list of raster paths (a band stack), got []")
    paths = []
    for i, item in enumerate(value):
        path = _location(item, f"{key}[{i}]", base_dir)
        if is_scene_store(path) or is_stac_item(path):
            raise _Invalid(f"{key}[{i}]", f"expected a raster in a band stack (not a scene store or STAC item), "
                                          f"got {_show(item)}")
        if path in paths:
            raise _Invalid(key, f"expected distinct rasters in a band stack, got {_show(item)} twice")
        paths.append(path)
    return tuple(paths)


def _assets(value: object, key: str) -> tuple[str, ...]:
    return _distinct_names(value, key, "STAC asset keys", "an asset key (a string)")


def _parse_synthetic(value: object) -> SyntheticSpec:
    sec = _Section(value, "input.synthetic", ("shape", "bands", "occupancy", "seed", "dtype"))
    default = SyntheticSpec(shape=(1, 1))
    dtype = sec.get("dtype", default.dtype)
    if not isinstance(dtype, str) or dtype not in SYNTHETIC_DTYPES:
        raise _Invalid(
            sec.key_of("dtype"), f"expected one of: {', '.join(SYNTHETIC_DTYPES)}, got {_show(dtype)}"
        )
    occupancy = _number(sec.get("occupancy", default.occupancy), sec.key_of("occupancy"))
    if not 0 < occupancy <= 1:
        raise _Invalid(sec.key_of("occupancy"), f"expected a fraction 0 < x <= 1, got {_show(occupancy)}")
    return SyntheticSpec(
        shape=_shape(sec.require("shape"), sec.key_of("shape")),
        bands=_int(sec.get("bands", default.bands), sec.key_of("bands"), minimum=1),
        occupancy=occupancy,
        seed=_int(sec.get("seed", default.seed), sec.key_of("seed"), minimum=0),
        dtype=dtype,
    )


def _parse_model(value: object, base_dir: Path) -> ModelSpec:
    sec = _Section(value, "model", ("path", "builtin"))
    sec.exactly_one_of("path", "builtin")
    if sec.has("builtin"):
        name = sec.require("builtin")
        if not isinstance(name, str) or name not in BUILTIN_MODELS:
            raise _Invalid(
                sec.key_of("builtin"), f"expected one of: {', '.join(BUILTIN_MODELS)}, got {_show(name)}"
            )
        return ModelSpec(path=None, builtin=name)
    path = _location(sec.require("path"), sec.key_of("path"), base_dir)
    if not is_model_file(path):
        raise _Invalid(
            sec.key_of("path"), f"expected a Keras v3 .keras file, got {_show(sec.require('path'))}"
        )
    return ModelSpec(path=path)


def _parse_tiling(value: object) -> TilingSpec:
    sec = _Section(value, "tiling", ("tile_size", "halo"))
    tile_size = sec.get("tile_size", DEFAULT_TILE_SIZE)
    what = "an integer > 0" if _is_int(tile_size) else "an integer > 0 or [rows, cols] of integers > 0"
    invalid = _Invalid(sec.key_of("tile_size"), f"expected {what}, got {_show(tile_size)}")
    if not isinstance(tile_size, (int, list, tuple)):
        raise invalid
    try:
        size = parse_tile_size(tile_size)
    except ValueError as exc:
        raise invalid from exc
    halo = sec.get("halo", "auto")
    if halo == "auto":
        return TilingSpec(tile_size=size, halo=None)
    return TilingSpec(
        tile_size=size, halo=_int(halo, sec.key_of("halo"), minimum=0, what="'auto' or an integer >= 0")
    )


def _parse_output(value: object, base_dir: Path) -> OutputSpec:
    sec = _Section(value, "output", ("zarr", "scene", "geotiff", "cog", "quicklook", "band_names", "bounds", "window",
                                     *PRODUCT_KEYS))
    zarr = _location(sec.require("zarr"), sec.key_of("zarr"), base_dir)
    locations = {"zarr": zarr, "scene": _default_scene(zarr)}
    for name in ("scene", "geotiff", "quicklook"):
        if sec.has(name):
            locations[name] = _location(sec.get(name), sec.key_of(name), base_dir)
    products = {name: _parse_product(name, sec.get(name), sec.key_of(name), base_dir)
                for name in PRODUCT_KEYS if sec.has(name)}
    keys = {name: sec.key_of(name) for name in locations}
    for name, (spec, key) in products.items():
        locations[name], keys[name] = spec.path, key
    seen: dict[str, str] = {}
    for name, where in locations.items():
        if where in seen:
            raise _Invalid(keys[name], f"expected a location other than output.{seen[where]}, got {_show(where)}")
        seen[where] = name
    cog = _bool(sec.get("cog", False), sec.key_of("cog"))
    if cog and "geotiff" not in locations and not products:
        raise _Invalid(sec.key_of("cog"), f"only valid with 'output.geotiff' or a product ({', '.join(PRODUCT_KEYS)})")
    names = sec.get("band_names")
    band_names = None if names is None else _band_names(names, sec.key_of("band_names"))
    bounds = window = None
    if sec.has("bounds") and sec.has("window"):
        raise _Invalid(sec.key_of("window"), "expected output.bounds or output.window, not both")
    if sec.has("bounds"):
        bounds = _four(sec.get("bounds"), sec.key_of("bounds"), "[minx, miny, maxx, maxy] in the result's CRS",
                       _number)
    if sec.has("window"):
        window = _four(sec.get("window"), sec.key_of("window"), "[row, col, height, width] in result pixels",
                       lambda v, k: _int(v, k, minimum=0))
    if (bounds or window) and "geotiff" not in locations and not products:
        raise _Invalid(sec.key_of("bounds" if bounds else "window"),
                       f"only valid with 'output.geotiff' or a product ({', '.join(PRODUCT_KEYS)})")
    classes = products.get("classes")
    if classes is not None and band_names is not None:
        given = classes[0].product
        assert isinstance(given, Classes)
        for field_name, values in (("names", given.names), ("colors", given.colors)):
            if values is not None and len(values) != len(band_names):
                raise _Invalid(f"output.classes.{field_name}", f"expected {len(band_names)} entries, one per "
                                                               f"output.band_names entry, got {len(values)}")
    return OutputSpec(
        zarr=zarr,
        scene=locations["scene"],
        geotiff=locations.get("geotiff"),
        cog=cog,
        quicklook=locations.get("quicklook"),
        band_names=band_names,
        classes=classes[0] if classes is not None else None,
        threshold=products["threshold"][0] if "threshold" in products else None,
        scale=products["scale"][0] if "scale" in products else None,
        bounds=bounds,  # type: ignore[arg-type]
        window=window,  # type: ignore[arg-type]
    )


def _four(value: object, key: str, what: str, parse: Callable[[object, str], Any]) -> tuple[Any, ...]:
    """Four values (a region's bounds or window), each parsed by ``parse``."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise _Invalid(key, f"expected {what}, got {_show(value)}")
    return tuple(parse(v, f"{key}[{n}]") for n, v in enumerate(value))


def _parse_product(name: str, value: object, key: str, base_dir: Path) -> tuple[ProductSpec, str]:
    """One product: a path alone (defaults), or a mapping with ``path`` and the product's settings.

    Returns the spec and the key path of its location, for messages about clashing paths.
    """
    allowed = {"classes": ("path", "names", "colors"), "threshold": ("path", "value", "band"),
               "scale": ("path", "min", "max", "nodata")}[name]
    if isinstance(value, str) and name != "threshold":
        path = _location(value, key, base_dir)
        return ProductSpec(path, Classes() if name == "classes" else Scale()), key
    if not isinstance(value, Mapping):
        what = "a mapping" if name == "threshold" else "a path or a mapping"
        raise _Invalid(key, f"expected {what} with keys: {', '.join(allowed)}; got {_show(value)}")
    sec = _Section(value, key, allowed)
    path = _location(sec.require("path"), sec.key_of("path"), base_dir)
    product: Classes | Threshold | Scale
    if name == "classes":
        names = sec.get("names")
        colors = sec.get("colors")
        product = Classes(names=None if names is None else _band_names(names, sec.key_of("names")),
                          colors=None if colors is None else _colors(colors, sec.key_of("colors")))
    elif name == "threshold":
        band = sec.get("band")
        product = Threshold(value=_number(sec.require("value"), sec.key_of("value")),
                            band=None if band is None else _int(band, sec.key_of("band"), minimum=0,
                                                                what="a zero-based band index (an integer >= 0)"))
    else:
        default = Scale()
        low = _number(sec.get("min", default.min), sec.key_of("min"))
        high = _number(sec.get("max", default.max), sec.key_of("max"))
        if not low < high:
            raise _Invalid(sec.key_of("max"), f"expected a number > output.scale.min ({low:g}), got {_show(high)}")
        nodata = sec.get("nodata")
        if nodata is not None and (not _is_int(nodata) or nodata not in (0, 255)):
            raise _Invalid(sec.key_of("nodata"), f"expected 0 or 255 (the code kept for NaN), got {_show(nodata)}")
        product = Scale(min=low, max=high, nodata=nodata)
    return ProductSpec(path, product), sec.key_of("path")


def _band_names(value: object, key: str) -> tuple[str, ...]:
    return _distinct_names(value, key, "names", "a name (a non-empty string)")


def _distinct_names(value: object, key: str, what: str, each: str) -> tuple[str, ...]:
    """A non-empty list of distinct, non-blank strings (band names, STAC asset keys)."""
    if not isinstance(value, (list, tuple)) or not value:
        raise _Invalid(key, f"expected a non-empty list of {what}, got {_show(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise _Invalid(f"{key}[{i}]", f"expected {each}, got {_show(item)}")
    if len(set(value)) != len(value):
        raise _Invalid(key, f"expected distinct {what}, got {_show(value)}")
    return tuple(str(v) for v in value)


def _colors(value: object, key: str) -> tuple[tuple[int, int, int], ...]:
    """Colours as ``"#rrggbb"`` or ``[r, g, b]`` of 0-255."""
    if not isinstance(value, (list, tuple)) or not value:
        raise _Invalid(key, f"expected a non-empty list of colours ('#rrggbb' or [r, g, b]), got {_show(value)}")
    colours = []
    for i, item in enumerate(value):
        if isinstance(item, str) and re.fullmatch(r"#[0-9a-fA-F]{6}", item):
            colours.append((int(item[1:3], 16), int(item[3:5], 16), int(item[5:7], 16)))
        elif (isinstance(item, (list, tuple)) and len(item) == 3
              and all(_is_int(v) and 0 <= v <= 255 for v in item)):
            colours.append((int(item[0]), int(item[1]), int(item[2])))
        else:
            raise _Invalid(f"{key}[{i}]", f"expected '#rrggbb' or [r, g, b] of integers 0-255, got {_show(item)}")
    return tuple(colours)


def _parse_cluster(value: object) -> ClusterSpec:
    sec = _Section(value, "cluster", ("address", "n_workers", "threads_per_worker", "gpu", "batch_size"))
    address = sec.get("address")
    if address is not None and not (isinstance(address, str) and has_scheme(address)):
        raise _Invalid(
            sec.key_of("address"),
            f"expected a scheduler address like 'tcp://host:8786', got {_show(address)}",
        )
    if address is not None:
        for name in ("n_workers", "threads_per_worker"):
            if sec.has(name):
                raise _Invalid(
                    sec.key_of(name), "only valid for the embedded cluster (without 'cluster.address')"
                )

    def optional_count(name: str) -> int | None:
        count = sec.get(name)
        return None if count is None else _int(count, sec.key_of(name), minimum=1)

    return ClusterSpec(
        address=address,
        n_workers=optional_count("n_workers"),
        threads_per_worker=optional_count("threads_per_worker"),
        gpu=_bool(sec.get("gpu", False), sec.key_of("gpu")),
        batch_size=optional_count("batch_size"),
    )


# --------------------------------------------------------------------------- values


class _Invalid(Exception):
    """A bad value at ``key``; becomes a WorkflowError once the file name is known."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(key, message)
        self.key = key
        self.message = message

    def error(self, source: str) -> WorkflowError:
        return WorkflowError(
            f"{source}: {self.key}: {self.message}" if self.key else f"{source}: {self.message}"
        )


class _Section:
    """One mapping of the file, with its key path; ``null`` values count as absent."""

    def __init__(self, value: object, key: str, allowed: tuple[str, ...],
                 why: Mapping[str, str] | None = None) -> None:
        if not isinstance(value, Mapping):
            what = "a workflow mapping" if not key else "a mapping"
            raise _Invalid(key, f"expected {what} with keys: {', '.join(allowed)}; got {_show(value)}")
        for name in value:
            if why and name in why:
                raise _Invalid(self._join(key, name), why[name])
            if name not in allowed:
                raise _Invalid(self._join(key, name), f"unknown key (expected one of: {', '.join(allowed)})")
        self.key = key
        self._values = {str(k): v for k, v in value.items() if v is not None}

    @staticmethod
    def _join(key: str, name: object) -> str:
        return f"{key}.{name}" if key else str(name)

    def key_of(self, name: str) -> str:
        return self._join(self.key, name)

    def has(self, name: str) -> bool:
        return name in self._values

    def get(self, name: str, default: object = None) -> object:
        return self._values.get(name, default)

    def require(self, name: str) -> object:
        if name not in self._values:
            raise _Invalid(self.key_of(name), f"missing required key {name!r}")
        return self._values[name]

    def exactly_one_of(self, a: str, b: str) -> None:
        if self.has(a) == self.has(b):
            got = "both" if self.has(a) else "neither"
            raise _Invalid(self.key, f"expected exactly one of '{a}' or '{b}', got {got}")


def _is_int(value: object) -> TypeGuard[int]:
    # YAML's true/false are Python bools, which are ints: never accept them as numbers.
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value: object, key: str, *, minimum: int, what: str | None = None) -> int:
    if _is_int(value) and value >= minimum:
        return value
    bound = "> 0" if minimum == 1 else f">= {minimum}"
    raise _Invalid(key, f"expected {what or f'an integer {bound}'}, got {_show(value)}")


def _number(value: object, key: str) -> float:
    if (_is_int(value) or isinstance(value, float)) and math.isfinite(value):
        return float(value)
    raise _Invalid(key, f"expected a number, got {_show(value)}")


def _bool(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(key, f"expected true or false, got {_show(value)}")
    return value


def _nodata(value: object, key: str) -> float:
    if isinstance(value, str) and value.strip().lower() == "nan":
        return math.nan
    if _is_int(value) or isinstance(value, float):
        return float(value)  # YAML's .nan and .inf arrive as floats and are valid nodata
    raise _Invalid(key, f"expected a number or 'nan', got {_show(value)}")


def _bands(value: object, key: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise _Invalid(key, f"expected a non-empty list of 1-based band indexes, got {_show(value)}")
    bands = tuple(_int(band, f"{key}[{i}]", minimum=1) for i, band in enumerate(value))
    if len(set(bands)) != len(bands):
        raise _Invalid(key, f"expected distinct band indexes, got {_show(value)}")
    return bands


def _shape(value: object, key: str) -> tuple[int, int]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise _Invalid(key, f"expected [rows, cols] of integers > 0, got {_show(value)}")
    return (_int(value[0], f"{key}[0]", minimum=1), _int(value[1], f"{key}[1]", minimum=1))


def _location(value: object, key: str, base_dir: Path) -> str:
    """A local path made absolute against ``base_dir``, or a URL kept as written."""
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(key, f"expected a path or URL, got {_show(value)}")
    if has_scheme(value):
        return value
    # abspath normalises '..' without touching the disk: the path may only exist on workers.
    return os.path.abspath(Path(base_dir) / Path(value).expanduser())


def _default_scene(zarr: str) -> str:
    """``<stem>.scene.zarr`` next to the result store ``zarr`` (a path or a URL)."""
    if has_scheme(zarr):
        head, _, name = zarr.rstrip("/").rpartition("/")
        return f"{head}/{PurePosixPath(name).stem}.scene.zarr"
    path = Path(zarr)
    return str(path.with_name(f"{path.stem}.scene.zarr"))


def _show(value: object) -> str:
    """``value`` as the file would spell it, kept short for a one-line message."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe_yaml_error(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is None:
        return str(problem)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
