"""Tests for tilepipe.export: GeoTIFF / COG export and quicklook PNGs of result stores."""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import zarr
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import Compression
from rasterio.transform import Affine

from tilepipe.errors import InputError, StoreError
from tilepipe.export import export_geotiff, quicklook, record_band_names

from helpers import assert_one_clear_line, run_tilepipe

# The package's ``quicklook`` attribute is the function, which hides the module of the same
# name from ``from ... import``: fetch the modules themselves to reach their internals.
geotiff_module = importlib.import_module("tilepipe.export.geotiff")
quicklook_module = importlib.import_module("tilepipe.export.quicklook")

SHAPE = (3, 300, 517)  # (band, y, x); 517 is odd and not a multiple of any block size
CHUNKS = (1, 128, 128)
FILL = -1.5  # non-zero, so an unwritten chunk cannot pass for zeros
TRANSFORM = Affine(10.0, 0.5, 500_000.0, -0.25, -10.0, 4_000_000.0)  # rotated, not just scaled
PROVENANCE: dict[str, Any] = {
    "model_sha256": "ab" * 32,
    "run_id": "run-42",
    "halo": 3,
    "scene": {"path": "/data/scene.zarr", "checksum": "cd" * 8},
    "tile_status": list(range(2000)),  # too long for a tag: left out
}


def make_store(
    path: Path,
    *,
    complete: bool = True,
    shape: tuple[int, int, int] = SHAPE,
    chunks: tuple[int, int, int] = CHUNKS,
    nan_chunk: bool = False,
    values: np.ndarray | None = None,
    kind: str = "result",
) -> np.ndarray:
    """Write a result store by hand, skipping some chunks; return what it must read as."""
    bands, rows, cols = shape
    rng = np.random.default_rng(7)
    written = rng.normal(10.0, 3.0, size=shape).astype(np.float32) if values is None else values
    if nan_chunk:
        written[1, : chunks[1], : chunks[2]] = np.nan  # a written chunk (band 1, tile 0, 0)
    expected = np.full(shape, FILL, dtype=np.float32)
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    data = group.create_array(
        "data",
        shape=shape,
        chunks=chunks,
        dtype="float32",
        fill_value=FILL,
        dimension_names=("band", "y", "x"),
        config={"write_empty_chunks": True},  # a written chunk stays, whatever it holds
    )
    ny, nx = math.ceil(rows / chunks[1]), math.ceil(cols / chunks[2])
    # Status as a run records it: 3 (free: no chunk at all, reads as FILL) or 1 (computed: every band written).
    status = np.ones((ny, nx), np.uint8)
    for i in range(ny):
        for j in range(nx):
            if values is None and (i + j) % 3 == 1:
                status[i, j] = 3
                continue  # unwritten: reads as FILL
            for b in range(bands):
                rs = slice(i * chunks[1], (i + 1) * chunks[1])
                cs = slice(j * chunks[2], (j + 1) * chunks[2])
                data[b, rs, cs] = written[b, rs, cs]
                expected[b, rs, cs] = written[b, rs, cs]
    group.create_array("status", shape=(ny, nx), chunks=(ny, nx), dtype="uint8", fill_value=0)[...] = status
    group.attrs["tilepipe"] = {
        "format_version": 2,
        "kind": kind,
        "shape": list(shape),
        "crs_wkt": CRS.from_epsg(32618).to_wkt(),
        "transform": list(TRANSFORM)[:6],
        "complete": complete,
        "provenance": PROVENANCE,
        "report": {},
    }
    return expected


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, np.ndarray]:
    path = tmp_path / "result.zarr"
    return path, make_store(path, nan_chunk=True)


def listing(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# ---------------------------------------------------------------- GeoTIFF


def test_geotiff_equals_store_with_georef_tiles_and_tags(
    store: tuple[Path, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, expected = store
    assert np.any(expected == FILL)  # the fill value shows where chunks are unwritten
    # Windows of 3 x 3 blocks of 64: several windows, none aligned with the 128-chunks.
    monkeypatch.setattr(geotiff_module, "_WINDOW_SIDE", 192)
    out = export_geotiff(path, tmp_path / "out.tif", blocksize=64)
    assert out == tmp_path / "out.tif"
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(), expected)  # NaN == NaN here
        assert src.dtypes == ("float32",) * 3
        assert src.crs == CRS.from_epsg(32618)
        assert src.transform == TRANSFORM
        assert src.profile["tiled"] and src.block_shapes == [(64, 64)] * 3
        assert src.compression == Compression.deflate
        assert src.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "3"
        assert src.nodata is None
        assert src.descriptions == ("band_1", "band_2", "band_3")
        tags = src.tags()
    assert tags["TILEPIPE_MODEL_SHA256"] == "ab" * 32
    assert tags["TILEPIPE_RUN_ID"] == "run-42"
    assert tags["TILEPIPE_HALO"] == "3"
    assert tags["TILEPIPE_SCENE_PATH"] == "/data/scene.zarr"
    assert "TILEPIPE_TILE_STATUS" not in tags
    assert listing(tmp_path) == {"result.zarr", "out.tif"}


def test_geotiff_band_subset_in_given_order(store: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, expected = store
    out = export_geotiff(path, tmp_path / "sub.tif", bands=[2, 0], compress="zstd", blocksize=512)
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(), expected[[2, 0]])
        assert src.descriptions == ("band_3", "band_1")
        assert src.compression == Compression.zstd
        assert src.block_shapes == [(512, 512)] * 2


def test_cog_is_valid_with_overviews(store: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, expected = store
    out = export_geotiff(path, tmp_path / "out.cog.tif", cog=True, blocksize=128)
    with rasterio.open(out) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.overviews(1)  # COG driver: down until the image fits one block
        np.testing.assert_array_equal(src.read(), expected)
        assert src.crs == CRS.from_epsg(32618)
        assert src.transform == TRANSFORM
        assert src.compression == Compression.deflate
        assert src.block_shapes == [(128, 128)] * 3
        assert src.descriptions == ("band_1", "band_2", "band_3")
        assert src.tags()["TILEPIPE_RUN_ID"] == "run-42"
    # The first overview halves the size (GDAL rounds down) and averages: it keeps the mean.
    with rasterio.open(out, overview_level=0) as level:
        overview = level.read(3)
    assert overview.shape == (150, 258)
    assert float(overview.mean()) == pytest.approx(float(expected[2].mean()), rel=1e-2)
    assert listing(tmp_path) == {"result.zarr", "out.cog.tif"}  # no staging copy left


def test_incomplete_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "half.zarr"
    make_store(path, complete=False)
    with pytest.raises(StoreError) as info:
        export_geotiff(path, tmp_path / "out.tif")
    assert str(info.value) == (f"{path}: the result is incomplete: its run did not finish; run it again to resume")
    assert listing(tmp_path) == {"half.zarr"}


def test_missing_or_foreign_store_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"nowhere\.zarr"):
        export_geotiff(tmp_path / "nowhere.zarr", tmp_path / "out.tif")
    plain = tmp_path / "plain.zarr"
    zarr.open_group(str(plain), mode="w", zarr_format=3)
    with pytest.raises(StoreError, match="not a tilepipe store"):
        export_geotiff(plain, tmp_path / "out.tif")
    scene = tmp_path / "scene.zarr"
    make_store(scene, kind="scene", shape=(1, 16, 16), chunks=(1, 16, 16))
    with pytest.raises(StoreError, match="scene"):
        export_geotiff(scene, tmp_path / "out.tif")
    assert not (tmp_path / "out.tif").exists()


def test_existing_output_needs_overwrite(store: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, expected = store
    out = tmp_path / "out.tif"
    out.write_bytes(b"precious")
    with pytest.raises(InputError, match=r"out\.tif: already exists"):
        export_geotiff(path, out)
    assert out.read_bytes() == b"precious"
    export_geotiff(path, out, overwrite=True)
    with rasterio.open(out) as src:
        np.testing.assert_array_equal(src.read(), expected)


@pytest.mark.parametrize("cog", [False, True])
def test_failure_leaves_no_partial_file_and_keeps_the_old_one(
    store: tuple[Path, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cog: bool
) -> None:
    path, _ = store
    out = tmp_path / "out.tif"
    out.write_bytes(b"precious")
    before = listing(tmp_path)
    real_read = geotiff_module._read_window
    calls = []

    def failing_read(*args: Any) -> np.ndarray:
        calls.append(args)
        if len(calls) == 3:  # fail mid-way, after GDAL has written part of the file
            raise StoreError("disk on fire")
        return real_read(*args)

    monkeypatch.setattr(geotiff_module, "_read_window", failing_read)
    monkeypatch.setattr(geotiff_module, "_WINDOW_SIDE", 64)
    with pytest.raises(StoreError, match="disk on fire"):
        export_geotiff(path, out, overwrite=True, cog=cog, blocksize=64)
    assert listing(tmp_path) == before
    assert out.read_bytes() == b"precious"


def test_gdal_failure_becomes_store_error(
    store: tuple[Path, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = store

    def broken_copy(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(geotiff_module, "_to_cog", broken_copy)
    with pytest.raises(StoreError, match=r"out\.tif: cannot write the GeoTIFF: .*No space left"):
        export_geotiff(path, tmp_path / "out.tif", cog=True)
    assert listing(tmp_path) == {"result.zarr"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bands": [3]}, "band indices from 0 to 2"),
        ({"bands": []}, "at least one band"),
        ({"blocksize": 100}, "multiple of 16"),
        ({"blocksize": 8}, "from 16 to 4096"),
        ({"compress": "jpeg"}, "compress: expected one of"),
        ({"cog": True, "resampling": "magic"}, "resampling: expected one of"),
    ],
)
def test_bad_arguments(store: tuple[Path, np.ndarray], tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    path, _ = store
    with pytest.raises(InputError, match=message):
        export_geotiff(path, tmp_path / "out.tif", **kwargs)
    assert listing(tmp_path) == {"result.zarr"}


def test_window_action_leaves_out_fills_or_reads() -> None:
    # Blocks of 16 px, (block_row, block_col); block (0, 2) holds a computed tile, every other is free.
    free = np.ones((3, 4), bool)
    free[0, 2] = False
    act = geotiff_module.window_action
    whole = (0, 0, 48, 64)  # every block
    assert act(free, whole, 16, constant_is_skip=True) == "read"
    left = (0, 0, 48, 32)  # blocks (0-2, 0-1): all free
    assert act(free, left, 16, constant_is_skip=True) == "skip"  # GDAL fills it: nothing written, nothing read
    assert act(free, left, 16, constant_is_skip=False) == "fill"  # another band's constant: written, not read
    assert act(free, (0, 32, 16, 16), 16, constant_is_skip=True) == "read"  # the computed block alone
    assert act(free, (16, 32, 32, 32), 16, constant_is_skip=False) == "fill"  # below it: free
    assert act(free, (32, 48, 9, 5), 16, constant_is_skip=True) == "skip"  # an edge window, part of a block
    assert act(free, (0, 40, 16, 5), 16, constant_is_skip=True) == "read"  # part of the computed block


def test_missing_output_folder(store: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = store
    with pytest.raises(InputError, match="does not exist"):
        export_geotiff(path, tmp_path / "no" / "out.tif")


def test_cli_scales_a_result_holding_nan_with_the_nodata_asked_for(
    store: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    path, expected = store  # band 1 holds a chunk of NaN
    out = tmp_path / "scaled.tif"
    refused = run_tilepipe("export", str(path), str(out), "--scale", "--scale-range", "0", "20")
    assert_one_clear_line(refused, f"Error: {path}: the result holds NaN", "give it nodata 0 or 255",
                          "--scale-nodata")
    assert not out.exists()
    proc = run_tilepipe("export", str(path), str(out), "--scale", "--scale-range", "0", "20", "--scale-nodata", "0")
    assert proc.returncode == 0, proc.stderr
    with rasterio.open(out) as src:
        codes, nodata, scales, offsets = src.read(), src.nodata, src.scales, src.offsets
    assert nodata == 0
    nan = np.isnan(expected)
    assert nan.any() and np.array_equal(codes == 0, nan)  # code 0 where NaN, and nowhere else
    # Codes 1-255 span [0, 20]: 254 steps. Decoded with the file's own scale and offset, every value is
    # within half a step of the truth, clipped to the range.
    step = 20 / 254
    assert scales == (pytest.approx(step),) * 3
    decoded = codes * np.asarray(scales)[:, None, None] + np.asarray(offsets)[:, None, None]
    truth = np.clip(expected, 0, 20)
    assert np.abs(decoded - truth)[~nan].max() <= step / 2 + 1e-6
    usage = run_tilepipe("export", str(path), str(tmp_path / "x.tif"), "--scale-nodata", "255")
    assert usage.returncode == 2 and "--scale-nodata goes with --scale" in usage.stderr


def test_band_names_that_do_not_fit_name_the_result(store: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = store
    proc = run_tilepipe("export", str(path), str(tmp_path / "out.tif"), "--band-names", "a,b")
    assert_one_clear_line(proc, f"Error: {path}: band_names: expected 3 band names, one per band of the result, got 2")
    with pytest.raises(InputError) as err:
        record_band_names(path, ["one"])
    assert str(err.value) == f"{path}: band_names: expected 3 band names, one per band of the result, got 1"
    assert listing(tmp_path) == {"result.zarr"}


# ---------------------------------------------------------------- quicklook


@pytest.mark.parametrize("step", [1, 3, 7, 128])
@pytest.mark.parametrize("read_pixels", [1, 40_000, 1 << 22])
def test_block_mean_matches_numpy(step: int, read_pixels: int) -> None:
    rng = np.random.default_rng(1)
    rows, cols = 61, 103
    band = rng.normal(size=(rows, cols)).astype(np.float32)
    band[rng.random((rows, cols)) < 0.2] = np.nan
    band[:10, :10] = np.inf  # non-finite values are ignored, like NaN
    band[-7:, -9:] = np.nan  # a wholly empty block shows as NaN
    ny, nx = math.ceil(rows / step), math.ceil(cols / step)
    padded = np.full((ny * step, nx * step), np.nan)
    padded[:rows, :cols] = np.where(np.isfinite(band), band, np.nan)
    blocks = padded.reshape(ny, step, nx, step)
    counts = np.isfinite(blocks).sum(axis=(1, 3))
    sums = np.nansum(blocks, axis=(1, 3))
    reference = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)

    class Chunked:  # a stand-in for a zarr array: chunks (1, 16, 24)
        shape = (2, rows, cols)
        chunks = (1, 16, 24)

        def __getitem__(self, key: Any) -> np.ndarray:
            return np.stack([band, band])[key]

    got = quicklook_module._block_mean(Chunked(), 1, step, read_pixels=read_pixels)
    assert got.dtype == np.float32 and got.shape == (ny, nx)
    np.testing.assert_allclose(got, reference, rtol=1e-6, atol=1e-6)


def image_region(png: Path, rows: int, cols: int, max_size: int) -> np.ndarray:
    """The RGBA pixels of the PNG that show the band, using the module's own layout."""
    layout = quicklook_module._layout(rows, cols, max_size)
    pixels = np.asarray(Image.open(png).convert("RGBA"))
    assert pixels.shape[:2] == (layout.height, layout.width)
    left, bottom, width, height = layout.image
    top = layout.height - bottom - height
    return pixels[top : top + height, left : left + width]


def test_quicklook_pixels_colours_and_transparency(tmp_path: Path) -> None:
    path = tmp_path / "small.zarr"
    values = np.zeros((1, 40, 60), dtype=np.float32)
    values[0, 20:, :] = 1.0
    values[0, :10, :15] = np.nan
    make_store(path, shape=(1, 40, 60), chunks=(1, 16, 16), values=values)
    png = quicklook(path, tmp_path / "q.png", vmin=0.0, vmax=1.0, max_size=512)
    assert listing(tmp_path) == {"small.zarr", "q.png"}
    region = image_region(png, 40, 60, 512)
    zoom = quicklook_module._layout(40, 60, 512).zoom
    assert zoom > 1  # a small scene is magnified
    shown = region[::zoom, ::zoom]  # one screen pixel per store pixel
    assert shown.shape[:2] == (40, 60)
    import matplotlib

    viridis = matplotlib.colormaps["viridis"]
    low, high = viridis(0.0, bytes=True), viridis(1.0, bytes=True)
    assert (shown[:10, :15, 3] == 0).all()  # NaN: transparent
    np.testing.assert_array_equal(shown[10:20, :], np.broadcast_to(low, (10, 60, 4)))
    np.testing.assert_array_equal(shown[20:, :], np.broadcast_to(high, (20, 60, 4)))
    np.testing.assert_array_equal(shown[:10, 15:], np.broadcast_to(low, (10, 45, 4)))


@pytest.mark.parametrize("max_size", [256, 400, 1024])
def test_quicklook_size_is_bounded(store: tuple[Path, np.ndarray], tmp_path: Path, max_size: int) -> None:
    path, _ = store
    png = quicklook(path, tmp_path / "q.png", band=1, max_size=max_size)
    with Image.open(png) as image:
        assert image.format == "PNG" and image.mode == "RGBA"
        assert max(image.size) <= max_size
    layout = quicklook_module._layout(300, 517, max_size)
    region = image_region(png, 300, 517, max_size)
    # Band 1's first chunk is NaN: its blocks are transparent, the rest opaque.
    ny, nx = layout.sample_shape
    nan_rows = math.ceil(128 / layout.step) * layout.zoom
    nan_cols = math.ceil(128 / layout.step) * layout.zoom
    assert (region[: nan_rows - layout.zoom, : nan_cols - layout.zoom, 3] == 0).all()
    assert (region[nan_rows:, :, 3] == 255).all()
    assert (region[:, nan_cols:, 3] == 255).all()
    assert (ny, nx) == (math.ceil(300 / layout.step), math.ceil(517 / layout.step))


def test_quicklook_on_incomplete_store_and_refusals(tmp_path: Path) -> None:
    path = tmp_path / "half.zarr"
    make_store(path, complete=False)
    png = quicklook(path, tmp_path / "q.png", band=2, cmap="magma")
    assert png.is_file()
    with pytest.raises(InputError, match=r"q\.png: already exists"):
        quicklook(path, png)
    quicklook(path, png, overwrite=True, band=1)
    with pytest.raises(InputError, match="band: expected an index from 0 to 2"):
        quicklook(path, tmp_path / "b.png", band=3)
    with pytest.raises(InputError, match="colour map"):
        quicklook(path, tmp_path / "b.png", cmap="no-such-map")
    with pytest.raises(InputError, match="vmin < vmax"):
        quicklook(path, tmp_path / "b.png", vmin=2.0, vmax=1.0)
    with pytest.raises(InputError, match="at least 256"):
        quicklook(path, tmp_path / "b.png", max_size=100)
    with pytest.raises(StoreError, match="nowhere"):
        quicklook(tmp_path / "nowhere.zarr", tmp_path / "b.png")
    assert listing(tmp_path) == {"half.zarr", "q.png"}


def test_colour_limits() -> None:
    limits = quicklook_module._colour_limits
    sample = np.arange(101, dtype=np.float32)
    sample[0] = np.nan
    p2, p98 = np.percentile(np.arange(1, 101), [2, 98])
    assert limits(sample, None, None) == pytest.approx((p2, p98))
    assert limits(sample, 10.0, None) == pytest.approx((10.0, p98))
    lo, hi = limits(np.full((4, 4), 5.0, dtype=np.float32), None, None)  # constant band
    assert lo < 5.0 < hi
    lo, hi = limits(np.full((4, 4), np.nan, dtype=np.float32), None, None)  # nothing finite
    assert lo < hi
    lo, hi = limits(sample, 200.0, None)  # the given limit stays
    assert lo == 200.0 and hi > 200.0


# --------------------------------------------------------------------------- regions


def test_a_window_exports_the_same_pixels_georeferenced_for_the_region(tmp_path: Path,
                                                                        store: tuple[Path, np.ndarray]) -> None:
    path, expected = store
    whole = export_geotiff(path, tmp_path / "whole.tif")
    proc = run_tilepipe("export", str(path), str(tmp_path / "w.tif"), "--window", "100", "250", "150", "200")
    assert proc.returncode == 0, proc.stderr
    with rasterio.open(whole) as a, rasterio.open(tmp_path / "w.tif") as b:
        assert (b.height, b.width, b.count) == (150, 200, 3)
        np.testing.assert_array_equal(b.read(), a.read()[:, 100:250, 250:450])
        np.testing.assert_array_equal(b.read(), expected[:, 100:250, 250:450])
        assert b.transform.almost_equals(TRANSFORM @ Affine.translation(250, 100))
        assert b.crs == a.crs
    # Through the API, a product of the region equals the product of the whole, cut.
    from tilepipe.export import Threshold

    export_geotiff(path, tmp_path / "t.tif", product=Threshold(10.0, 2), window=(0, 0, 128, 517))
    with rasterio.open(tmp_path / "t.tif") as t:
        np.testing.assert_array_equal(t.read(1), (expected[2, :128] > 10.0).astype(np.uint8))


def test_bounds_export_the_smallest_window_holding_every_pixel_they_touch(tmp_path: Path,
                                                                          store: tuple[Path, np.ndarray]) -> None:
    from rasterio.transform import rowcol

    path, expected = store
    bounds = (502_000.0, 3_998_500.0, 503_500.0, 3_999_400.0)
    proc = run_tilepipe("export", str(path), str(tmp_path / "b.tif"), "--bounds", *map(str, bounds))
    assert proc.returncode == 0, proc.stderr
    with rasterio.open(tmp_path / "b.tif") as b:
        got, region = b.read(), b.transform
    col, row = ~TRANSFORM @ (region.c, region.f)
    r0, c0 = round(row), round(col)
    assert abs(row - r0) < 1e-6 and abs(col - c0) < 1e-6  # the region starts on a pixel of the result
    h, w = got.shape[1:]
    np.testing.assert_array_equal(got, expected[:, r0 : r0 + h, c0 : c0 + w])
    # The pixels the box touches, found by rasterio from points all over it (its edges included).
    eps = 1e-6
    xs, ys = np.meshgrid(np.linspace(bounds[0] + eps, bounds[2] - eps, 400),
                         np.linspace(bounds[1] + eps, bounds[3] - eps, 400))
    rows, cols = rowcol(TRANSFORM, xs.ravel(), ys.ravel())
    rows, cols = np.asarray(rows), np.asarray(cols)
    assert (r0, c0, r0 + h, c0 + w) == (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)


def test_a_region_outside_the_result_is_one_line(tmp_path: Path, store: tuple[Path, np.ndarray]) -> None:
    path, _ = store
    assert_one_clear_line(run_tilepipe("export", str(path), str(tmp_path / "x.tif"), "--window", "250", "0", "100",
                                       "10"), "window 250 0 100 10", "inside the result's 300 x 517 pixels")
    assert_one_clear_line(run_tilepipe("export", str(path), str(tmp_path / "x.tif"), "--bounds", "0", "0", "10",
                                       "10"), "do not overlap the result")
    both = run_tilepipe("export", str(path), str(tmp_path / "x.tif"), "--bounds", "0", "0", "10", "10",
                        "--window", "0", "0", "1", "1")
    assert both.returncode == 2 and "not both" in both.stderr
    assert not (tmp_path / "x.tif").exists()
