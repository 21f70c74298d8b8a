"""One tile's packing (tilepipe.store.codec): sparse and dense encodings round-trip exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tilepipe.errors import StoreError
from tilepipe.store.codec import TileData, decode_tile, encode_tile

DTYPES = ("uint8", "uint16", "float32")
_HEADER_BYTES = 64


def _entries(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted flat indices and values of the non-zero entries of a ``(rows, cols, bands)`` window."""
    flat = np.flatnonzero(dense)
    return flat, dense.reshape(-1)[flat]


def _random_tile(rng: np.random.Generator, shape: tuple[int, int, int], dtype: str, fill: float) -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        values = rng.normal(scale=1e3, size=shape).astype(dtype)
    else:
        values = rng.integers(1, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)
    values[rng.random(shape) >= fill] = 0
    return values


def _check_round_trip(dense: np.ndarray) -> TileData:
    flat, values = _entries(dense)
    blob = encode_tile(dense.shape, flat, values)
    tile = decode_tile(blob, dense.dtype)
    assert tile.shape == dense.shape
    assert tile.nnz == flat.size
    np.testing.assert_array_equal(tile.to_dense(dense.dtype), dense)
    np.testing.assert_array_equal(tile.to_dense(), dense.astype(np.float32))
    assert tile.to_dense().dtype == np.float32
    r, c, b, v = tile.coords()
    np.testing.assert_array_equal(np.ravel_multi_index((r, c, b), dense.shape), flat)
    np.testing.assert_array_equal(v, values)
    assert v.dtype == dense.dtype
    return tile


@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse_tile_round_trips_and_is_stored_sparse(dtype: str) -> None:
    rng = np.random.default_rng(1)
    dense = _random_tile(rng, (40, 33, 3), dtype, fill=0.02)
    tile = _check_round_trip(dense)
    assert not tile.is_dense
    assert tile.flat is not None
    assert np.all(np.diff(tile.flat) > 0)
    # Coordinates + values only: far smaller than the dense window.
    blob = encode_tile(dense.shape, *_entries(dense))
    assert len(blob) == _HEADER_BYTES + tile.nnz * (4 + dense.itemsize)


@pytest.mark.parametrize("dtype", DTYPES)
def test_full_tile_round_trips_and_is_stored_dense(dtype: str) -> None:
    rng = np.random.default_rng(2)
    dense = _random_tile(rng, (17, 21, 2), dtype, fill=0.9)
    tile = _check_round_trip(dense)
    assert tile.is_dense
    assert tile.flat is None
    blob = encode_tile(dense.shape, *_entries(dense))
    assert len(blob) == _HEADER_BYTES + dense.nbytes


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_tile_round_trips(dtype: str) -> None:
    dense = np.zeros((5, 7, 4), dtype=dtype)
    tile = _check_round_trip(dense)
    assert tile.nnz == 0
    assert not tile.is_dense
    r, c, b, v = tile.coords()
    assert r.size == c.size == b.size == v.size == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_single_value_in_a_one_pixel_tile(dtype: str) -> None:
    dense = np.full((1, 1, 1), 7, dtype=dtype)
    _check_round_trip(dense)


def test_extreme_values_survive() -> None:
    dense = np.zeros((3, 3, 1), dtype=np.float32)
    dense[0, 0, 0] = np.finfo(np.float32).max
    dense[1, 1, 0] = -np.finfo(np.float32).tiny
    dense[2, 2, 0] = np.float32(1e-38)
    _check_round_trip(dense)
    dense16 = np.zeros((3, 3, 2), dtype=np.uint16)
    dense16[1, 2, 1] = 65535
    _check_round_trip(dense16)


def test_encoding_is_deterministic() -> None:
    # Idempotent writes need the same bytes for the same tile.
    rng = np.random.default_rng(3)
    for fill in (0.05, 0.95):
        dense = _random_tile(rng, (9, 11, 3), "uint16", fill)
        assert encode_tile(dense.shape, *_entries(dense)) == encode_tile(dense.shape, *_entries(dense.copy()))


@settings(max_examples=150, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(1, 4)),
    dtype=st.sampled_from(DTYPES),
    fill=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_property(shape: tuple[int, int, int], dtype: str, fill: float, seed: int) -> None:
    dense = _random_tile(np.random.default_rng(seed), shape, dtype, fill)
    tile = _check_round_trip(dense)
    itemsize = np.dtype(dtype).itemsize
    # Dense exactly when coordinates would cost at least as much as the values themselves.
    assert tile.is_dense == (tile.nnz * (4 + itemsize) >= dense.size * itemsize)


# -- what is not a tile -----------------------------------------------------------------------------


def test_short_blob_is_refused() -> None:
    with pytest.raises(StoreError, match="64 bytes"):
        decode_tile(b"\x00" * 10, "uint8")


def test_foreign_bytes_are_refused() -> None:
    blob = bytearray(encode_tile((2, 2, 1), np.array([1]), np.array([5], np.uint8)))
    blob[0] ^= 0xFF
    with pytest.raises(StoreError, match="magic"):
        decode_tile(bytes(blob), "uint8")


def test_unknown_encoding_is_refused() -> None:
    blob = bytearray(encode_tile((2, 2, 1), np.array([1]), np.array([5], np.uint8)))
    header = np.frombuffer(bytes(blob[:64]), dtype="<u8").copy()
    header[2] = 7
    blob[:64] = header.tobytes()
    with pytest.raises(StoreError, match="encoding"):
        decode_tile(bytes(blob), "uint8")


def test_store_error_is_an_os_error() -> None:
    with pytest.raises(OSError):
        decode_tile(b"", "uint8")
