"""Products of a result (class maps, masks, scaled bytes), band names, and constant tiles in exports.

References are independent of the code under test: the float GeoTIFF read back with rasterio
(itself checked against the numpy array written into the store), and numpy's argmax and
comparisons on it. Every COG is checked with rio-cogeo's validator.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import xarray as xr
from rasterio.crs import CRS
from rasterio.transform import Affine

from tilepipe.errors import InputError, WorkflowError
from tilepipe.export import Classes, Scale, Threshold, export_geotiff, record_band_names
from tilepipe.geometry import Window
from tilepipe.store.result import STATUS_COMPUTED, STATUS_FREE, ResultInfo, ResultStore
from tilepipe.workflow import parse_workflow

from helpers import run_tilepipe

cog_validate = pytest.importorskip("rio_cogeo.cogeo").cog_validate
geotiff_module = importlib.import_module("tilepipe.export.geotiff")

TILE = 64
TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0)
FILLS = (0.25, 0.5, 0.125)  # band 1 wins the argmax of the free tiles; bands differ, so not all are skipped


def make_result(path: Path, shape: tuple[int, int, int] = (3, 300, 517), fills: tuple[float, ...] = FILLS,
                seed: int = 3, nan_at: tuple[int, int, int] | None = None, every: int = 3) -> np.ndarray:
    """A complete format-3 result store: tiles on a diagonal stripe computed, the rest free; return its values."""
    bands, rows, cols = shape
    info = ResultInfo(shape=shape, transform=tuple(TRANSFORM)[:6], crs_wkt=CRS.from_epsg(32633).to_wkt(),
                      tile_size=(TILE, TILE), provenance={"run_id": "products"})
    store = ResultStore.create(path, info, fill_values=list(fills))
    rng = np.random.default_rng(seed)
    expected = np.broadcast_to(np.array(fills, np.float32)[:, None, None], shape).copy()
    grid = info.grid_shape
    status = np.full(grid, STATUS_FREE, np.uint8)
    for r in range(grid[0]):
        for c in range(grid[1]):
            if (r + c) % every:
                continue
            status[r, c] = STATUS_COMPUTED
            r0, c0 = r * TILE, c * TILE
            h, w = min(TILE, rows - r0), min(TILE, cols - c0)
            values = rng.random((bands, h, w), dtype=np.float32)
            if nan_at is not None and (r0 <= nan_at[1] < r0 + h) and (c0 <= nan_at[2] < c0 + w):
                values[nan_at[0], nan_at[1] - r0, nan_at[2] - c0] = np.nan
            expected[:, r0 : r0 + h, c0 : c0 + w] = values
            store.write_core(Window(r0, r0 + h, c0, c0 + w), np.moveaxis(values, 0, 2))
    store.write_status(status)
    store.finish(complete=True, report={})
    return expected


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """The store, its values, and its float GeoTIFF read back (the reference for products)."""
    folder = tmp_path_factory.mktemp("products")
    path = folder / "result.zarr"
    expected = make_result(path)
    tif = export_geotiff(path, folder / "float.tif", blocksize=64)
    with rasterio.open(tif) as src:
        floats = src.read()
    return path, expected, floats


def assert_valid_cog(path: Path) -> None:
    valid, errors, _ = cog_validate(str(path), strict=True)
    assert valid, errors


def test_float_export_is_exact_with_constant_blocks_skipped(result: tuple[Path, np.ndarray, np.ndarray]) -> None:
    _, expected, floats = result
    # Bit for bit, free tiles (never read, never written: GDAL's one compressed block) included.
    np.testing.assert_array_equal(floats.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("blocksize", [16, 64, 128])
@pytest.mark.parametrize("window", [64, 192])
def test_float_export_exact_for_any_block_and_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     blocksize: int, window: int) -> None:
    path = tmp_path / "r.zarr"
    expected = make_result(path, shape=(2, 200, 333), fills=(0.75, 0.75))
    monkeypatch.setattr(geotiff_module, "_WINDOW_SIDE", window)
    out = export_geotiff(path, tmp_path / "r.tif", blocksize=blocksize, cog=True)
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read().view(np.uint32), expected.view(np.uint32))
        assert src.nodata is None
        # Free blocks share one compressed block's bytes: every one of them has the same size.
        with rasterio.open(tmp_path / "r.tif") as again:
            assert again.block_shapes[0] == (blocksize, blocksize)
    assert_valid_cog(out)


def test_constant_blocks_are_not_compressed_one_by_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "r.zarr"
    make_result(path, shape=(1, 512, 512), fills=(0.5,), every=8)  # 2 of the 4 x 4 windows hold computed tiles
    writes: list[Any] = []
    real = geotiff_module._write_blocks

    def counting(dst: Any, index: int, pixels: np.ndarray, *args: Any) -> None:
        writes.append(pixels.shape)
        real(dst, index, pixels, *args)

    monkeypatch.setattr(geotiff_module, "_write_blocks", counting)
    monkeypatch.setattr(geotiff_module, "_WINDOW_SIDE", 128)
    export_geotiff(path, tmp_path / "r.tif", blocksize=64)
    # 16 windows of 2 x 2 tiles; those wholly in free tiles are never handed to GDAL.
    busy = {(r // 2, c // 2) for r in range(8) for c in range(8) if (r + c) % 8 == 0}
    assert len(busy) < 16 and len(writes) == len(busy)


def test_classes_are_numpy_argmax_with_colour_table(result: tuple[Path, np.ndarray, np.ndarray],
                                                    tmp_path: Path) -> None:
    path, _, floats = result
    colours = ((255, 0, 0), (0, 255, 0), (0, 0, 255))
    out = export_geotiff(path, tmp_path / "classes.tif", cog=True, blocksize=64,
                         product=Classes(names=("water", "land", "cloud"), colors=colours))
    assert_valid_cog(out)
    with rasterio.open(out) as src:
        got = src.read(1)
        assert src.dtypes == ("uint8",)
        assert src.nodata == 255
        cmap = src.colormap(1)
        tags = src.tags()
        assert src.descriptions == ("class",)
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    np.testing.assert_array_equal(got, np.argmax(floats, axis=0).astype(np.uint8))
    assert {int(v) for v in np.unique(got)} == {0, 1, 2}
    for i, colour in enumerate(colours):
        assert cmap[i] == (*colour, 255)
    assert cmap[255][3] == 0
    assert json.loads(tags["CLASS_NAMES"]) == ["water", "land", "cloud"]


def test_classes_nan_is_nodata_and_many_classes_are_uint16(tmp_path: Path) -> None:
    path = tmp_path / "nan.zarr"
    values = make_result(path, shape=(3, 100, 100), nan_at=(1, 5, 7))
    out = export_geotiff(path, tmp_path / "c.tif", product=Classes())
    with rasterio.open(out) as src:
        got = src.read(1)
        names = json.loads(src.tags()["CLASS_NAMES"])
    assert got[5, 7] == 255
    mask = np.ones(got.shape, bool)
    mask[5, 7] = False
    np.testing.assert_array_equal(got[mask], np.argmax(values, axis=0)[mask])
    assert names == ["band_1", "band_2", "band_3"]
    many = tmp_path / "many.zarr"
    values = make_result(many, shape=(300, 40, 70), fills=tuple(np.linspace(0, 1, 300)))
    out = export_geotiff(many, tmp_path / "many.tif", product=Classes(), cog=True)
    assert_valid_cog(out)
    with rasterio.open(out) as src:
        assert src.dtypes == ("uint16",) and src.nodata == 65535
        np.testing.assert_array_equal(src.read(1), np.argmax(values, axis=0))


def test_threshold_is_numpy_comparison(result: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    path, _, floats = result
    out = export_geotiff(path, tmp_path / "mask.tif", cog=True, blocksize=64, product=Threshold(0.6, band=2))
    assert_valid_cog(out)
    with rasterio.open(out) as src:
        got = src.read(1)
        assert src.dtypes == ("uint8",) and src.nodata == 255
        assert src.descriptions == ("band_3 > 0.6",)
    np.testing.assert_array_equal(got, (floats[2] > np.float32(0.6)).astype(np.uint8))
    assert set(np.unique(got)) == {0, 1}
    with pytest.raises(InputError, match="band of a threshold"):
        export_geotiff(path, tmp_path / "m2.tif", product=Threshold(0.5))
    with pytest.raises(InputError, match="from 0 to 2"):
        export_geotiff(path, tmp_path / "m2.tif", product=Threshold(0.5, band=3))


@pytest.mark.parametrize("nodata", [None, 255])
def test_scale_round_trips_within_half_a_step(result: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path,
                                              nodata: int | None) -> None:
    path, _, floats = result
    out = export_geotiff(path, tmp_path / "u8.tif", cog=True, blocksize=64, product=Scale(nodata=nodata),
                         band_names=["a", "b", "c"])
    assert_valid_cog(out)
    with rasterio.open(out) as src:
        codes = src.read()
        scales, offsets = src.scales, src.offsets
        assert src.dtypes == ("uint8",) * 3
        assert src.nodata == (None if nodata is None else 255)
        assert src.descriptions == ("a", "b", "c")
    back = codes * np.array(scales)[:, None, None] + np.array(offsets)[:, None, None]
    levels = 255 if nodata is None else 254
    assert np.max(np.abs(back - floats)) <= 1 / levels / 2 + 1e-7
    if nodata is None:
        assert np.max(np.abs(back - floats)) <= 1 / 255 / 2 + 1e-7
        assert codes.min() == 0 and codes.max() == 255  # the whole range is used
    else:
        assert codes.max() <= 254


@pytest.mark.parametrize("band", [2, 0])
def test_threshold_equal_to_values_the_band_holds_is_strictly_greater(
    result: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path, band: int
) -> None:
    path, _, floats = result
    # Band 2: its fill value, held by every pixel of every free tile (never read, written as a constant).
    # Band 0: a value of a computed tile. Pixels equal to the threshold are not above it: 0.
    value = FILLS[2] if band == 2 else float(floats[0, 0, 0])
    at = floats[band] == np.float32(value)
    assert at.any()
    out = export_geotiff(path, tmp_path / "mask.tif", blocksize=64, product=Threshold(value, band=band))
    with rasterio.open(out) as src:
        got = src.read(1)
    np.testing.assert_array_equal(got, (floats[band] > np.float32(value)).astype(np.uint8))
    assert not got[at].any() and got.max() == 1


# float = code * scale + offset by hand: nodata 0 moves [min, max] to codes 1 .. 255, so code 0 stands for
# min - step; nodata 255 keeps it at codes 0 .. 254; without nodata [min, max] is codes 0 .. 255.
SCALES = {
    "nodata 0 from 0": (Scale(0.0, 1.0, nodata=0), 1 / 254, -1 / 254),
    "nodata 0 from -1": (Scale(-1.0, 1.0, nodata=0), 2 / 254, -1 - 2 / 254),
    "no nodata from -0.5": (Scale(-0.5, 1.5), 2 / 255, -0.5),
    "nodata 255 from -0.25": (Scale(-0.25, 1.25, nodata=255), 1.5 / 254, -0.25),
}


@pytest.mark.parametrize("case", list(SCALES))
def test_scale_with_an_offset_round_trips_within_half_a_step(result: tuple[Path, np.ndarray, np.ndarray],
                                                            tmp_path: Path, case: str) -> None:
    path, _, floats = result
    product, step, offset = SCALES[case]
    assert product.min <= floats.min() and floats.max() <= product.max  # no value clipped
    out = export_geotiff(path, tmp_path / "u8.tif", blocksize=64, product=product)
    with rasterio.open(out) as src:
        codes = src.read()
        assert src.scales == pytest.approx((step,) * 3, rel=1e-12)
        assert src.offsets == pytest.approx((offset,) * 3, rel=1e-12)
    back = codes * step + offset
    assert np.max(np.abs(back - floats)) <= step / 2 * (1 + 1e-6)
    if product.nodata is not None:
        assert not np.any(codes == product.nodata)  # kept for NaN, which the result does not hold


def test_scale_refuses_nan_without_nodata(tmp_path: Path) -> None:
    path = tmp_path / "nan.zarr"
    make_result(path, shape=(1, 64, 64), fills=(0.5,), nan_at=(0, 3, 3))
    with pytest.raises(InputError, match="NaN"):
        export_geotiff(path, tmp_path / "u8.tif", product=Scale())
    assert not (tmp_path / "u8.tif").exists()
    out = export_geotiff(path, tmp_path / "u8.tif", product=Scale(nodata=0))
    with rasterio.open(out) as src:
        assert src.read(1)[3, 3] == 0 and src.nodata == 0 and src.read(1).min() == 0


def test_band_names_recorded_in_store_and_used_by_exports(tmp_path: Path) -> None:
    path = tmp_path / "named.zarr"
    make_result(path, shape=(2, 64, 64), fills=(0.1, 0.2))
    record_band_names(path, ["water", "land"])
    with rasterio.open(export_geotiff(path, tmp_path / "f.tif")) as src:
        assert src.descriptions == ("water", "land")
    ds = xr.open_zarr(path)
    assert ds["band_1"].attrs["long_name"] == "water" and ds["band_2"].attrs["long_name"] == "land"
    with pytest.raises(InputError, match="2 band names"):
        record_band_names(path, ["one"])
    proc = run_tilepipe("export", str(path), str(tmp_path / "c.tif"), "--classes", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    with rasterio.open(tmp_path / "c.tif") as src:
        assert json.loads(src.tags()["CLASS_NAMES"]) == ["water", "land"]
    proc = run_tilepipe("export", str(path), str(tmp_path / "m.tif"), "--threshold", "0.5", "--no-progress")
    assert proc.returncode != 0 and "band of a threshold" in proc.stderr.strip().splitlines()[-1]


def test_quicklook_title_names_the_recorded_band(tmp_path: Path) -> None:
    # The quicklook names a band as the GeoTIFF export does: its recorded name, else band_N.
    quicklook_module = importlib.import_module("tilepipe.export.quicklook")
    path = tmp_path / "named.zarr"
    make_result(path, shape=(2, 64, 64), fills=(0.1, 0.2))
    store = ResultStore.open(path, mode="r")
    assert quicklook_module._title(store, 1, 1).splitlines()[0] == "named.zarr: band_2 of 2"
    record_band_names(path, ["water", "a very long name for a land cover class"])
    store = ResultStore.open(path, mode="r")
    assert quicklook_module._title(store, 0, 1).splitlines()[0] == "named.zarr: water (band 1 of 2)"
    assert quicklook_module._title(store, 1, 4).splitlines() == [
        "named.zarr: a very long name for a… (band 2 of 2)", "64 x 64 px, shown 1:4 (mean)"]


# ---------------------------------------------------------------- workflow output section


def parse_output(output: dict[str, Any], tmp_path: Path) -> Any:
    data = {"input": {"path": "scene.tif"}, "model": {"builtin": "demo"}, "output": output}
    return parse_workflow(data, source=tmp_path / "wf.yaml", base_dir=tmp_path).output


def test_workflow_products_parse(tmp_path: Path) -> None:
    out = parse_output({"zarr": "r.zarr", "geotiff": "r.tif", "classes": "r_classes.tif",
                        "threshold": {"path": "r_mask.tif", "value": 0.5, "band": 1},
                        "scale": {"path": "r_u8.tif", "min": -1, "max": 1, "nodata": 255},
                        "band_names": ["a", "b"], "cog": True}, tmp_path)
    assert out.geotiff == str(tmp_path / "r.tif") and out.cog
    assert out.classes.path == str(tmp_path / "r_classes.tif") and out.classes.product == Classes()
    assert out.threshold.product == Threshold(0.5, 1)
    assert out.scale.product == Scale(-1.0, 1.0, 255)
    assert out.band_names == ("a", "b")
    assert [name for name, _ in out.products] == ["classes", "threshold", "scale"]
    colours = parse_output({"zarr": "r.zarr", "classes": {"path": "c.tif", "names": ["x", "y"],
                                                          "colors": ["#ff0000", [0, 0, 255]]}}, tmp_path)
    assert colours.classes.product == Classes(("x", "y"), ((255, 0, 0), (0, 0, 255)))


@pytest.mark.parametrize(("output", "message"), [
    ({"threshold": "m.tif"}, "output.threshold: expected a mapping with keys: path, value, band"),
    ({"threshold": {"path": "m.tif"}}, "output.threshold.value: missing required key 'value'"),
    ({"threshold": {"path": "m.tif", "value": "high"}}, "output.threshold.value: expected a number"),
    ({"threshold": {"path": "m.tif", "value": 1, "band": -1}}, "output.threshold.band: expected a zero-based"),
    ({"scale": {"path": "s.tif", "nodata": 7}}, "output.scale.nodata: expected 0 or 255"),
    ({"scale": {"path": "s.tif", "min": 1, "max": 0}}, "output.scale.max: expected a number > output.scale.min"),
    ({"classes": {"path": "c.tif", "colors": ["red"]}}, "output.classes.colors[0]: expected '#rrggbb'"),
    ({"classes": {"path": "c.tif", "shades": 1}}, "output.classes.shades: unknown key"),
    ({"classes": "r.zarr"}, "output.classes: expected a location other than output.zarr"),
    ({"geotiff": "x.tif", "scale": {"path": "x.tif"}}, "output.scale.path: expected a location other than "
                                                       "output.geotiff"),
    ({"band_names": ["a", "a"]}, "output.band_names: expected distinct names"),
    ({"band_names": ["a", "b"], "classes": {"path": "c.tif", "names": ["x"]}},
     "output.classes.names: expected 2 entries"),
])
def test_workflow_product_errors_name_the_key(tmp_path: Path, output: dict[str, Any], message: str) -> None:
    with pytest.raises(WorkflowError) as info:
        parse_output({"zarr": "r.zarr", **output}, tmp_path)
    assert message in str(info.value)
    assert str(info.value).startswith(f"{tmp_path / 'wf.yaml'}: ")
