"""Band stacks as input: a list of single-band rasters, a VRT, a STAC item's assets.

The reference is always rasterio reading the bands itself, never tilepipe's reader.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine

import tilepipe
from tilepipe.errors import InputError, StoreError, WorkflowError
from tilepipe.workflow import InputSpec, load_workflow

from helpers import assert_one_clear_line, dense_scene, run_tilepipe, write_geotiff

#: The order the tests stack rgb1.tif's bands in: not the file's, so a reader that ignores it fails.
ORDER = (3, 1, 2)


def rasterio_reference(paths: list[Path], nodata: list[float | None]) -> np.ndarray:
    """Each file's band 1 read by rasterio, nodata set to 0, stacked ``(y, x, band)`` in order."""
    bands = []
    for path, nd in zip(paths, nodata, strict=True):
        with rasterio.open(path) as src:
            band = src.read(1)
        bands.append(np.where(band == nd, 0, band) if nd is not None else band)
    return np.stack(bands, axis=-1)


@pytest.fixture()
def split_rgb(shared_data: Path, tmp_path: Path) -> tuple[list[Path], list[float | None]]:
    """rgb1.tif split into one file per band, in ``ORDER``; the second file's nodata is 255, not 0.

    Returns the files and each one's nodata.
    """
    with rasterio.open(shared_data / "rgb1.tif") as src:
        profile = {"crs": src.crs, "transform": src.transform}
        data = src.read()
    paths, nodata = [], []
    for i, band in enumerate(ORDER):
        values = data[band - 1]
        nd = 0.0
        if i == 1:  # another nodata: the collar is 255 here, and real zeros stay (absent entries either way)
            values = np.where(values == 0, 255, values).astype(np.uint8)
            nd = 255.0
        path = tmp_path / "bands" / f"B{band}.tif"
        path.parent.mkdir(exist_ok=True)
        write_geotiff(path, values[None], nodata=nd, **profile)
        paths.append(path)
        nodata.append(nd)
    return paths, nodata


def test_list_of_rasters_equals_rasterio(split_rgb: tuple[list[Path], list[float | None]], tmp_path: Path) -> None:
    paths, nodata = split_rgb
    scene = tilepipe.ingest([str(p) for p in paths], tmp_path / "s.zarr", tile_size=128, halo=2)
    assert scene.info.bands == 3 and scene.info.shape == (400, 400)
    assert scene.info.nodata is None  # the bands' nodata differ: no one value to record
    ref = rasterio_reference(paths, nodata)
    np.testing.assert_array_equal(dense_scene(tmp_path / "s.zarr"), ref)
    with rasterio.open(paths[0]) as src:
        assert scene.info.crs_wkt == src.crs.to_wkt()
        assert scene.info.transform == tuple(src.transform)[:6]
    # Every file of the stack is part of the identity, with its content hash.
    files = scene.info.source["files"]
    assert [f["path"] for f in files] == [str(p) for p in paths]
    assert all(len(f["sha256"]) == 64 for f in files)
    assert scene.info.source["nodata"] == nodata


def test_stack_identity_covers_every_file(split_rgb: tuple[list[Path], list[float | None]],
                                          tmp_path: Path) -> None:
    paths, _ = split_rgb
    listed = [str(p) for p in paths]
    tilepipe.ingest(listed, tmp_path / "s.zarr", tile_size=128, halo=2)
    again = tilepipe.ingest(listed, tmp_path / "s.zarr", tile_size=128, halo=2)  # same files: reused
    assert again.attrs.get("complete")
    with rasterio.open(paths[2], "r+") as dst:  # one pixel of the last band changes
        block = dst.read(1)
        block[200, 200] = block[200, 200] % 250 + 1
        dst.write(block, 1)
    with pytest.raises(StoreError, match="before one of its files changed"):
        tilepipe.ingest(listed, tmp_path / "s.zarr", tile_size=128, halo=2)
    with pytest.raises(StoreError, match="another source"):  # another order is another scene
        tilepipe.ingest(listed[::-1], tmp_path / "s.zarr", tile_size=128, halo=2)


def write_vrt(path: Path, sources: list[Path], nodata: list[float | None], like: Path) -> None:
    """A VRT written by hand: band i is band 1 of ``sources[i]`` (relative to the VRT), with its nodata."""
    with rasterio.open(like) as src:
        width, height, crs, t = src.width, src.height, src.crs.to_wkt(), src.transform
    bands = []
    for i, (source, nd) in enumerate(zip(sources, nodata, strict=True)):
        nd_xml = f"<NoDataValue>{nd}</NoDataValue>" if nd is not None else ""
        rel = source.relative_to(path.parent).as_posix()
        bands.append(
            f'<VRTRasterBand dataType="Byte" band="{i + 1}">{nd_xml}<SimpleSource>'
            f'<SourceFilename relativeToVRT="1">{rel}</SourceFilename><SourceBand>1</SourceBand>'
            f"</SimpleSource></VRTRasterBand>"
        )
    path.write_text(
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>{crs.replace("<", "&lt;")}</SRS>'
        f"<GeoTransform>{t.c}, {t.a}, {t.b}, {t.f}, {t.d}, {t.e}</GeoTransform>{''.join(bands)}</VRTDataset>"
    )


def test_vrt_equals_rasterio_and_its_identity_covers_its_sources(
    split_rgb: tuple[list[Path], list[float | None]], tmp_path: Path
) -> None:
    paths, nodata = split_rgb
    vrt = tmp_path / "bands" / "stack.vrt"
    write_vrt(vrt, paths, nodata, paths[0])
    scene = tilepipe.ingest(str(vrt), tmp_path / "v.zarr", tile_size=128, halo=2)
    np.testing.assert_array_equal(dense_scene(tmp_path / "v.zarr"), rasterio_reference(paths, nodata))
    assert [f["path"] for f in scene.info.source["files"]] == [str(vrt), *map(str, paths)]
    with rasterio.open(paths[1], "r+") as dst:  # a file the VRT references changes; the VRT does not
        block = dst.read(1)
        block[100, 100] = block[100, 100] % 250 + 1
        dst.write(block, 1)
    with pytest.raises(StoreError, match="before one of its files changed"):
        tilepipe.ingest(str(vrt), tmp_path / "v.zarr", tile_size=128, halo=2)


def test_stac_item_assets_in_the_order_named(split_rgb: tuple[list[Path], list[float | None]],
                                             tmp_path: Path) -> None:
    pystac = pytest.importorskip("pystac")
    import datetime

    paths, nodata = split_rgb
    item = pystac.Item("scene-1", geometry=None, bbox=None, datetime=datetime.datetime(2024, 5, 1), properties={})
    for path in paths:
        item.add_asset(path.stem, pystac.Asset(href=f"./bands/{path.name}", media_type=pystac.MediaType.GEOTIFF))
    item_path = tmp_path / "item.json"
    item.save_object(include_self_link=False, dest_href=str(item_path))
    keys = [p.stem for p in paths][::-1]  # the workflow's order, not the item's
    scene = tilepipe.ingest(str(item_path), tmp_path / "st.zarr", tile_size=128, halo=2, assets=keys)
    ref = rasterio_reference(paths[::-1], nodata[::-1])
    np.testing.assert_array_equal(dense_scene(tmp_path / "st.zarr"), ref)
    assert scene.info.source["paths"] == [str(p) for p in paths[::-1]]
    with pytest.raises(InputError, match="no asset 'B9' in the item"):
        tilepipe.ingest(str(item_path), tmp_path / "x.zarr", assets=["B9"])
    with pytest.raises(InputError, match="name the asset keys"):
        tilepipe.ingest(str(item_path), tmp_path / "x.zarr")
    with pytest.raises(InputError, match="not valid with a band stack"):
        tilepipe.ingest(str(item_path), tmp_path / "x.zarr", assets=keys, bands=[1])
    assert not (tmp_path / "x.zarr").exists()


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        ({"shape": (10, 12)}, ["shape 10 x 12 (not 12 x 12)"]),
        ({"crs": "EPSG:4326"}, ["CRS EPSG:4326 (not EPSG:32618)"]),
        ({"transform": Affine(10.0, 0.0, 500_010.0, 0.0, -10.0, 4_600_000.0)}, ["transform (10, 0, 500010,"]),
    ],
)
def test_other_grids_are_refused(tmp_path: Path, change: dict[str, Any], needles: list[str]) -> None:
    grid: dict[str, Any] = {"crs": "EPSG:32618", "transform": Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_600_000.0)}
    ones = np.ones((1, 12, 12), np.float32)
    write_geotiff(tmp_path / "a.tif", ones, **grid)
    shape = change.pop("shape", (12, 12))
    write_geotiff(tmp_path / "b.tif", np.ones((1, *shape), np.float32), **{**grid, **change})
    with pytest.raises(InputError) as err:
        tilepipe.ingest([str(tmp_path / "a.tif"), str(tmp_path / "b.tif")], tmp_path / "s.zarr", tile_size=16)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'b.tif'}: not on the grid of {tmp_path / 'a.tif'}")
    assert "nothing is resampled" in message
    for needle in needles:
        assert needle in message
    assert not (tmp_path / "s.zarr").exists()


def test_cli_refuses_a_stack_on_two_grids_in_one_line(tmp_path: Path) -> None:
    t = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_600_000.0)
    write_geotiff(tmp_path / "B04.tif", np.ones((1, 20, 20), np.uint16), crs="EPSG:32618", transform=t)
    write_geotiff(tmp_path / "B08.tif", np.ones((1, 20, 20), np.uint16), crs="EPSG:32618",
                  transform=Affine(20.0, 0.0, 500_000.0, 0.0, -20.0, 4_600_000.0))
    proc = run_tilepipe("ingest", str(tmp_path / "B04.tif"), str(tmp_path / "B08.tif"), str(tmp_path / "s.zarr"),
                        "--tile-size", "16")
    assert_one_clear_line(proc, "B08.tif: not on the grid of", "B04.tif", "transform (20, 0, 500000, 0, -20,",
                          "(not (10, 0, 500000, 0, -10,")
    assert not (tmp_path / "s.zarr").exists()
    write_geotiff(tmp_path / "B03.tif", np.ones((1, 20, 20), np.uint16), crs="EPSG:32618", transform=t)
    ok = run_tilepipe("ingest", str(tmp_path / "B04.tif"), str(tmp_path / "B03.tif"), str(tmp_path / "s.zarr"),
                      "--tile-size", "16")
    assert ok.returncode == 0, ok.stderr
    assert "20 x 20 x 2 uint16" in ok.stdout


def test_the_same_file_twice_in_a_stack_is_refused_like_a_band_twice(tmp_path: Path) -> None:
    # As `bands: [1, 1]` and repeated STAC asset keys are: a file named twice is a slip, not a wish for copies.
    t = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_600_000.0)
    for name in ("B1", "B3"):
        write_geotiff(tmp_path / f"{name}.tif", np.ones((1, 20, 20), np.uint16), crs="EPSG:32618", transform=t)
    b1, b3, store = str(tmp_path / "B1.tif"), str(tmp_path / "B3.tif"), str(tmp_path / "s.zarr")
    proc = run_tilepipe("ingest", b1, b1, b3, store, "--tile-size", "16")
    assert_one_clear_line(proc, f"{b1}: expected distinct rasters in a band stack, got the same file twice",
                          "rasters 1 and 2")
    proc = run_tilepipe("ingest", b1, store, "--bands", "1,1")
    assert_one_clear_line(proc, f"{b1}: expected distinct band indexes, got 1, 1")
    # However it is spelled: relative, with "..", or through a link.
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.tif").symlink_to(tmp_path / "B1.tif")
    for other in ("B1.tif", "sub/../B1.tif", str(tmp_path / "link.tif")):
        proc = run_tilepipe("ingest", b3, b1, other, store, "--tile-size", "16", cwd=tmp_path)
        assert_one_clear_line(proc, f"{other}: expected distinct rasters", "rasters 2 and 3")
    with pytest.raises(InputError, match="expected distinct band indexes, got 1, 1"):
        tilepipe.ingest(b1, store, bands=[1, 1])
    assert not Path(store).exists()
    with pytest.raises(WorkflowError) as err:
        load_workflow(write(tmp_path, "input: {path: [B1.tif, B3.tif, ./B1.tif]}\n"))
    assert str(err.value) == (f"{tmp_path / 'wf.yaml'}: input.path: expected distinct rasters in a band stack, "
                              "got './B1.tif' twice")


def test_two_asset_keys_of_one_file_are_refused(tmp_path: Path) -> None:
    pystac = pytest.importorskip("pystac")
    import datetime

    write_geotiff(tmp_path / "B1.tif", np.ones((1, 20, 20), np.uint16), crs="EPSG:32618",
                  transform=Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_600_000.0))
    item = pystac.Item("scene-1", geometry=None, bbox=None, datetime=datetime.datetime(2024, 5, 1), properties={})
    for key in ("red", "also_red"):
        item.add_asset(key, pystac.Asset(href="./B1.tif", media_type=pystac.MediaType.GEOTIFF))
    item_path = tmp_path / "item.json"
    item.save_object(include_self_link=False, dest_href=str(item_path))
    with pytest.raises(InputError, match="expected distinct asset keys, got red, red"):
        tilepipe.ingest(str(item_path), tmp_path / "s.zarr", assets=["red", "red"])
    with pytest.raises(InputError, match=r"B1.tif: expected distinct rasters in a band stack, .*rasters 1 and 2"):
        tilepipe.ingest(str(item_path), tmp_path / "s.zarr", assets=["red", "also_red"])
    assert not (tmp_path / "s.zarr").exists()


# ------------------------------------------------------------------ the workflow's input section


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "wf.yaml"
    path.write_text(text + "model: {builtin: demo}\noutput: {zarr: out/r.zarr}\n")
    return path


def test_workflow_input_forms(tmp_path: Path) -> None:
    wf = load_workflow(write(tmp_path, "input: {path: [b/B04.tif, b/B03.tif]}\n"))
    assert wf.input == InputSpec(path=None, stack=(str(tmp_path / "b/B04.tif"), str(tmp_path / "b/B03.tif")))
    assert wf.input.raster == wf.input.stack
    wf = load_workflow(write(tmp_path, "input: {path: item.json, assets: [B04, B08], nodata: 0}\n"))
    assert wf.input == InputSpec(path=str(tmp_path / "item.json"), assets=("B04", "B08"), nodata=0.0)
    wf = load_workflow(write(tmp_path, "input: {path: scene.vrt, bands: [2]}\n"))
    assert wf.input == InputSpec(path=str(tmp_path / "scene.vrt"), bands=(2,))


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("{path: []}", "input.path: expected a path, or a non-empty list of raster paths"),
        ("{path: [a.tif, 3]}", "input.path[1]: expected a path or URL, got 3"),
        ("{path: [a.tif, s.zarr]}", "input.path[1]: expected a raster in a band stack"),
        ("{path: [a.tif, b.tif], bands: [1]}", "input.bands: only valid with one path in 'input.path'"),
        ("{path: [a.tif, b.tif], assets: [B1]}", "input.assets: only valid with one path"),
        ("{path: item.json}", "input.assets: missing required key 'assets'"),
        ("{path: a.tif, assets: [B1]}", "input.assets: only valid with a STAC item"),
        ("{path: item.json, assets: []}", "input.assets: expected a non-empty list of STAC asset keys"),
        ("{path: item.json, assets: [B1, 4]}", "input.assets[1]: expected an asset key (a string), got 4"),
        ("{path: item.json, assets: [B1, B1]}", "input.assets: expected distinct STAC asset keys"),
        ("{path: item.json, assets: [B1], bands: [1]}", "input.bands: only valid with a raster"),
        ("{synthetic: {shape: [8, 8]}, assets: [B1]}", "input.assets: only valid with 'input.path'"),
    ],
)
def test_workflow_input_errors_name_the_key(tmp_path: Path, section: str, message: str) -> None:
    with pytest.raises(WorkflowError) as err:
        load_workflow(write(tmp_path, f"input: {section}\n"))
    assert str(err.value).startswith(f"{tmp_path / 'wf.yaml'}: {message}"), str(err.value)


def test_workflow_with_a_band_stack_runs_the_demo_model(tmp_path: Path) -> None:
    """`tilepipe run` on a list of float bands; the reference is scipy on what rasterio reads."""
    from test_demo import demo_reference

    rng = np.random.default_rng(3)
    t = Affine(10.0, 0.0, 300_000.0, 0.0, -10.0, 5_000_000.0)
    names = ["B02", "B03", "B04"]
    for name in names:
        band = np.where(rng.random((90, 70)) < 0.3, rng.random((90, 70)), -9999).astype(np.float32)
        band[:20] = -9999  # a nodata collar
        write_geotiff(tmp_path / f"{name}.tif", band[None], crs="EPSG:32633", transform=t, nodata=-9999)
    (tmp_path / "wf.yaml").write_text(
        "input: {path: [B04.tif, B03.tif, B02.tif]}\nmodel: {builtin: demo}\ntiling: {tile_size: 32}\n"
        "output: {zarr: out/r.zarr, geotiff: out/r.tif}\ncluster: {n_workers: 1, threads_per_worker: 1}\n"
    )
    proc = run_tilepipe("run", str(tmp_path / "wf.yaml"), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    ref_in = rasterio_reference([tmp_path / f"{n}.tif" for n in names[::-1]], [-9999.0] * 3)
    with rasterio.open(tmp_path / "out/r.tif") as src:
        got = src.read(1)
        assert src.crs.to_epsg() == 32633
    reference = demo_reference(ref_in)
    assert np.abs(got - reference).max() <= 1e-5 * np.abs(reference).max()
    shutil.rmtree(tmp_path / "out")
