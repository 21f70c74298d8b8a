"""Packing one tile's values into one self-contained byte string.

A tile is the haloed window of a scene, ``(rows, cols, bands)`` in that order.
It is packed either as sparse COO (sorted flat indices into the window plus
values) or, when it is so full that coordinates would cost more than the values
themselves, as the dense window. Either way the reader gets the same
:class:`TileData` and the same dense tile; the choice is a storage detail.

Layout (little endian)::

    header  8 x uint64: magic, version, encoding, rows, cols, bands, nnz, index itemsize
    sparse: nnz flat indices (uint32 or uint64), then nnz values (scene dtype)
    dense:  rows * cols * bands values (scene dtype), C order
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tilepipe.errors import StoreError

__all__ = ["TileData", "decode_tile", "encode_tile"]

_MAGIC = 0x31545054  # "TPT1"
_VERSION = 1
_SPARSE = 0
_DENSE = 1
_HEADER = np.dtype("<u8")


@dataclass(frozen=True, slots=True)
class TileData:
    """The values of one tile window, ``shape = (rows, cols, bands)``.

    ``flat`` holds sorted flat indices (C order over ``shape``) of the stored
    entries and ``values`` their values; for a dense-packed tile ``flat`` is
    None and ``values`` is the whole window.
    """

    shape: tuple[int, int, int]
    values: np.ndarray
    flat: np.ndarray | None = None

    @property
    def nnz(self) -> int:
        """Number of non-zero entries."""
        if self.flat is None:
            return int(np.count_nonzero(self.values))
        return int(self.flat.size)

    @property
    def is_dense(self) -> bool:
        """Whether the tile was stored dense."""
        return self.flat is None

    def coords(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(rows, cols, bands, values)`` of the non-zero entries, window-local."""
        if self.flat is None:
            r, c, b = np.nonzero(self.values)
            return r, c, b, self.values[r, c, b]
        r, c, b = np.unravel_index(self.flat, self.shape)
        return r, c, b, self.values

    def to_dense(self, dtype: np.dtype | type = np.float32) -> np.ndarray:
        """The dense window as ``(rows, cols, bands)``."""
        if self.flat is None:
            return self.values.astype(dtype, copy=False)
        out = np.zeros(self.shape, dtype=dtype)
        out.reshape(-1)[self.flat] = self.values
        return out


def encode_tile(shape: tuple[int, int, int], flat: np.ndarray, values: np.ndarray) -> bytes:
    """Pack a tile given as sorted flat indices and values.

    Parameters
    ----------
    shape
        ``(rows, cols, bands)`` of the window.
    flat
        Sorted, unique flat indices (C order over ``shape``) of the entries.
    values
        Their values, in the scene's dtype.
    """
    size = int(np.prod(shape, dtype=np.int64))
    index_dtype = np.dtype("<u4") if size < 2**32 else np.dtype("<u8")
    values = np.ascontiguousarray(values)
    sparse_cost = flat.size * (index_dtype.itemsize + values.itemsize)
    dense_cost = size * values.itemsize
    if sparse_cost < dense_cost:
        header = np.array(
            [_MAGIC, _VERSION, _SPARSE, *shape, flat.size, index_dtype.itemsize], dtype=_HEADER
        )
        return header.tobytes() + flat.astype(index_dtype).tobytes() + values.tobytes()
    dense = np.zeros(size, dtype=values.dtype)
    dense[flat] = values
    header = np.array([_MAGIC, _VERSION, _DENSE, *shape, flat.size, 0], dtype=_HEADER)
    return header.tobytes() + dense.tobytes()


def decode_tile(blob: bytes, dtype: np.dtype | str) -> TileData:
    """Unpack a tile written by :func:`encode_tile`; ``dtype`` is the scene's value dtype."""
    dtype = np.dtype(dtype)
    if len(blob) < 8 * _HEADER.itemsize:
        raise StoreError(f"expected a tilepipe tile of at least 64 bytes, got {len(blob)} bytes")
    header = np.frombuffer(blob, dtype=_HEADER, count=8)
    magic, version, encoding, rows, cols, bands, nnz, itemsize = (int(v) for v in header)
    if magic != _MAGIC or version != _VERSION:
        raise StoreError("expected a tilepipe tile (magic TPT1, version 1), got other bytes")
    shape = (rows, cols, bands)
    offset = 8 * _HEADER.itemsize
    if encoding == _SPARSE:
        index_dtype = np.dtype(f"<u{itemsize}")
        flat = np.frombuffer(blob, dtype=index_dtype, count=nnz, offset=offset).astype(np.int64)
        values = np.frombuffer(blob, dtype=dtype, count=nnz, offset=offset + nnz * itemsize)
        return TileData(shape, values, flat)
    if encoding == _DENSE:
        values = np.frombuffer(blob, dtype=dtype, count=rows * cols * bands, offset=offset)
        return TileData(shape, values.reshape(shape))
    raise StoreError(f"expected tile encoding 0 (sparse) or 1 (dense), got {encoding}")
