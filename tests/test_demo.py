"""The built-in demo model: a detection-density map with fixed weights, checked against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage


def demo_reference(dense: np.ndarray) -> np.ndarray:
    """The demo map worked out here: the band sum ``(y, x, band) -> (y, x)``, averaged over 3 x 3
    three times (zero beyond the border at each pass, as each ``same`` conv pads), then
    sigmoid(10 d - 5), the gain and bias the demo model documents."""
    density = dense.astype(np.float64).sum(axis=-1)
    for _ in range(3):
        density = ndimage.correlate(density, np.full((3, 3), 1 / 9), mode="constant", cval=0.0)
    return 1 / (1 + np.exp(-(10 * density - 5)))


def test_demo_model_is_the_density_map() -> None:
    from tilepipe.demo import build_demo_model
    from tilepipe.model.receptive import footprint_of

    rng = np.random.default_rng(0)
    dense = np.where(rng.random((37, 53, 4)) < 0.4, rng.random((37, 53, 4)), 0).astype(np.float32)
    model = build_demo_model(4)
    got = np.asarray(model(dense[None], training=False))[0, :, :, 0]
    np.testing.assert_allclose(got, demo_reference(dense), rtol=0, atol=1e-5)
    assert footprint_of(model).halo == 3  # three 3x3 convolutions: the demo stays cheap to tile
    zeros = np.asarray(model(np.zeros((1, 8, 8, 4), np.float32)))
    np.testing.assert_allclose(zeros, 1 / (1 + np.exp(5)), rtol=1e-6)  # empty ground: about 0.007


def test_demo_output_spans_zero_to_one_on_the_demo_scene() -> None:
    """On the synthetic demo scene the map is ~0 on empty ground and ~1 in cluster cores."""
    from tilepipe.demo import build_demo_model
    from tilepipe.sources import synthetic_scene

    coo = synthetic_scene((1024, 1024), bands=4, occupancy=1.0, tile_size=(1024, 1024), seed=0)
    dense = np.zeros(coo.shape, np.float32)
    dense[coo.rows, coo.cols, coo.bands] = coo.values
    got = np.asarray(build_demo_model(4)(dense[None], training=False))[0, :, :, 0]
    np.testing.assert_allclose(got, demo_reference(dense), rtol=0, atol=1e-5)
    assert got.min() < 0.01 and got.max() > 0.99
    assert 0.005 < float((got > 0.5).mean()) < 0.5  # hot spots, not a flooded or empty map


# ------------------------------------------------------------------ the quicklook's axes and scale


def axes_of(transform: tuple[float, ...], crs: str | None, covered: tuple[int, int]) -> object:
    import importlib
    from types import SimpleNamespace

    from rasterio.crs import CRS

    quicklook = importlib.import_module("tilepipe.export.quicklook")
    wkt = CRS.from_user_input(crs).to_wkt() if crs else None
    store = SimpleNamespace(info=SimpleNamespace(transform=transform, crs_wkt=wkt))
    return quicklook._axes(store, covered)


def test_quicklook_axes_are_map_coordinates() -> None:
    utm = axes_of((10.0, 0.0, 500_000.0, 0.0, -10.0, 4_600_000.0), "EPSG:32618", (800, 600))
    assert utm.extent == (500_000.0, 506_000.0, 4_592_000.0, 4_600_000.0)  # left, right, bottom, top
    assert utm.xlabel == "x (m), EPSG:32618 (WGS 84 / UTM zone 18N)" and utm.ylabel == "y (m), EPSG:32618"
    geo = axes_of((0.5, 0.0, -180.0, 0.0, -0.5, 90.0), "EPSG:4326", (360, 720))
    assert geo.extent == (-180.0, 180.0, -90.0, 90.0)
    assert geo.xlabel.startswith("longitude (°), EPSG:4326") and geo.ylabel == "latitude (°), EPSG:4326"
    pixels = axes_of((1.0, 0.0, 0.0, 0.0, 1.0, 0.0), None, (40, 60))
    assert (pixels.extent, pixels.xlabel, pixels.ylabel) == ((0.0, 60.0, 40.0, 0.0), "column (px)", "row (px)")


def test_quicklook_shows_probabilities_on_their_whole_scale() -> None:
    import importlib

    limits = importlib.import_module("tilepipe.export.quicklook")._colour_limits
    mostly_empty = np.full((100, 100), 0.007, np.float32)
    mostly_empty[:3, :3] = 0.99  # hot spots far fewer than 2% of the picture
    assert limits(mostly_empty, None, None) == (0.0, 1.0)
    assert limits(mostly_empty, 0.2, None) == (0.2, 1.0)
    assert limits(mostly_empty * 3, None, None) == pytest.approx((0.021, 0.021), abs=1e-3)
