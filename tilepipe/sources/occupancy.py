"""Which tiles and index blocks of a raster may hold data, told by the file's own block table: no pixel is read.

A GDAL sparse GeoTIFF (written with ``SPARSE_OK=TRUE``) leaves out the blocks that hold
only nodata (or zeros): their tile byte count is 0, and GDAL reads them back as the
file's nodata, or 0 where it has none, without touching the file. GDAL says whether a
block is in the file through its ``BLOCK_SIZE_{x}_{y}`` metadata item ("TIFF" domain;
rasterio's ``block_size``), one look-up in the tile tables per block. A tile (or an
index block of tiles) whose haloed window meets only left-out blocks, in every layer of
a stack, holds no entry, so ingest need neither read nor scan it.

Where this cannot be told (a VRT or any other driver), or where a left-out block would
read as data (see :func:`_omitted_blocks_are_absent`), there is no answer: every block
is read, as for a dense file.
"""

from __future__ import annotations

import math

import numpy as np
from rasterio.enums import Interleaving
from rasterio.errors import RasterBlockError

from tilepipe.geometry import Window
from tilepipe.sources.geotiff import GeoTiffSource, open_raster, read_window
from tilepipe.sources.stack import RasterStack, read_stack_entries
from tilepipe.store.info import SceneInfo

__all__ = ["occupied_blocks", "raster_block_occupancy", "raster_tile_occupancy", "read_held_entries"]


def raster_block_occupancy(raster: RasterStack, info: SceneInfo) -> np.ndarray | None:
    """The index blocks of ``info`` that may hold data of ``raster``, without reading a pixel.

    Parameters
    ----------
    raster
        The stack ingest reads (a single raster is a stack of one).
    info
        The scene store's description: its tile grid (cores grown by the halo) and
        its index blocks (``info.block`` tiles a side).

    Returns
    -------
    numpy.ndarray or None
        Booleans ``(rows, cols)`` over the grid of index blocks: True where the block's
        haloed window (the union of its tiles' windows, clipped to the scene) meets a
        block that at least one layer's file holds. None where that cannot be told
        (see :func:`raster_tile_occupancy`): then every block must be read.
    """
    tiles = raster_tile_occupancy(raster, info)
    return None if tiles is None else occupied_blocks(tiles, info.block)


def raster_tile_occupancy(raster: RasterStack, info: SceneInfo) -> np.ndarray | None:
    """The tiles of ``info`` whose windows may hold data of ``raster``, without reading a pixel.

    Returns
    -------
    numpy.ndarray or None
        Booleans ``(rows, cols)`` over the tile grid: True where the tile's window (its
        core grown by the halo, clipped to the scene) meets a block that at least one
        layer's file holds; a False tile reads as no entries at all. None where that
        cannot be told (a layer that is not a GeoTIFF, or whose left-out blocks would
        read as data). One metadata look-up per file block and band of a band-interleaved
        file (per file block of a pixel-interleaved one); nothing per tile in Python.
    """
    rows, cols = _tile_spans(info)
    occupied = np.zeros((rows[0].size, cols[0].size), dtype=bool)
    for layer in raster.layers:
        held = _held_blocks(layer)
        if held is None:
            return None
        table, (bh, bw) = held
        occupied |= _meets(table, rows[0] // bh, -(-rows[1] // bh), cols[0] // bw, -(-cols[1] // bw))
    return occupied


def occupied_blocks(tiles: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    """Blocks of ``block`` tiles ``(rows, cols)`` that hold an occupied tile: ``tiles`` reduced to the block grid.

    Edge blocks may hold fewer tiles; the result has one element per block, ``(rows, cols)``.
    """
    (ny, nx), (by, bx) = tiles.shape, block
    padded = np.zeros((-(-ny // by) * by, -(-nx // bx) * bx), dtype=bool)
    padded[:ny, :nx] = tiles
    return np.any(padded.reshape(padded.shape[0] // by, by, padded.shape[1] // bx, bx), axis=(1, 3))


def _tile_spans(info: SceneInfo) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Pixel spans ``(starts, stops)`` of every tile's window, rows then cols, half-open.

    As :class:`~tilepipe.geometry.TileGrid` makes them: the core grown by the halo, clipped to the scene.
    """
    spans = []
    for n_tiles, tile, size in zip(info.grid.grid_shape, info.tile_size, info.shape, strict=True):
        index = np.arange(n_tiles, dtype=np.int64)
        spans.append((np.maximum(index * tile - info.halo, 0), np.minimum((index + 1) * tile + info.halo, size)))
    return spans[0], spans[1]


def _meets(table: np.ndarray, r0: np.ndarray, r1: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    """Whether each rectangle ``[r0, r1) x [c0, c1)`` of file blocks holds a True of ``table``, ``(rows, cols)``.

    A summed-area table answers each rectangle in O(1), a band of rows at a time so that
    the temporaries stay small on a grid of millions of tiles.
    """
    area = np.zeros((table.shape[0] + 1, table.shape[1] + 1), dtype=np.int32 if table.size < 2**31 else np.int64)
    area[1:, 1:] = table.cumsum(axis=0).cumsum(axis=1)
    out = np.empty((r0.size, c0.size), dtype=bool)
    step = max(1, _BAND // max(c0.size, 1))
    for i in range(0, r0.size, step):
        a, b = r0[i : i + step, None], r1[i : i + step, None]
        out[i : i + step] = (area[b, c1] - area[a, c1] - area[b, c0] + area[a, c0]) > 0
    return out


#: Tiles answered at once by :func:`_meets`: its temporaries hold this many sums each (16 or 32 MB).
_BAND = 1 << 22


def _held_blocks(layer: GeoTiffSource) -> tuple[np.ndarray, tuple[int, int]] | None:
    """The layer's file blocks that its file holds, ``(rows, cols)`` of blocks, and the block shape ``(rows, cols)``.

    None where the file cannot say (not a GeoTIFF), or where a block it leaves out would read as data.
    """
    with open_raster(layer.path) as src:
        if src.driver != "GTiff" or not _omitted_blocks_are_absent(layer, src):
            return None
        bh, bw = src.block_shapes[layer.bands[0] - 1]
        table = np.zeros((-(-src.height // bh), -(-src.width // bw)), dtype=bool)
        # A pixel-interleaved file holds each block once for all bands; a band-interleaved one, per band.
        bands = layer.bands[:1] if src.interleaving is not Interleaving.band else layer.bands
        for band in bands:
            for i in range(table.shape[0]):
                for j in range(table.shape[1]):
                    if not table[i, j]:
                        table[i, j] = _held(src, band, i, j)
        return table, (bh, bw)


def _held(src, band: int, i: int, j: int) -> bool:  # type: ignore[no-untyped-def]
    """Whether the file holds block ``(i, j)`` (row, col) of ``band``: GDAL has no size for a left-out one."""
    try:
        return bool(src.block_size(band, i, j))
    except RasterBlockError:
        return False


def _omitted_blocks_are_absent(layer: GeoTiffSource, src) -> bool:  # type: ignore[no-untyped-def]
    """Whether a block the file leaves out holds no entry in any chosen band: the one rule for skipping.

    GDAL reads a left-out block as the file's own nodata, or as 0 where the file has none.
    :func:`~tilepipe.sources.geotiff.read_window` counts a value absent where it is zero,
    NaN or its band's nodata, which is the file's unless the caller overrode it. So such a
    block holds no entry unless the file's nodata is a non-zero number that the caller's
    nodata replaced by another (or removed): then every pixel of it is data, and must be read.
    A mask (per-dataset or alpha) only ever removes entries, so it cannot give one to such a block.
    """
    for index, band in enumerate(layer.bands):
        fill = src.nodatavals[band - 1]
        if fill is None or math.isnan(fill):
            continue  # read as 0 or NaN: absent
        read = np.asarray(fill).astype(src.dtypes[band - 1]).astype(layer.dtype)  # as read_window holds it
        nodata = layer.nodata_of(index)
        if read == 0 or (nodata is not None and read == np.asarray(nodata).astype(layer.dtype)):
            continue
        return False
    return True


def read_held_entries(stack: RasterStack, window: Window, datasets: list[object]):  # type: ignore[no-untyped-def]
    """:func:`~tilepipe.sources.stack.read_stack_entries` of ``window``, reading only the file blocks the files hold.

    Only for a raster whose left-out blocks hold no entry (:func:`raster_tile_occupancy`
    gave an answer for it). Each layer's held blocks that meet the window are read, the
    part of each inside it, and nothing else: a tile window that meets a held block by a
    halo's strip reads the strip. Where the held blocks cover at least half of the window,
    the window is read whole, in one call (a dense file's way). Each band's entries are
    its own (zero, NaN and its nodata are absent), so the layers' entries are merged as
    they are: ``(shape, flat, values)`` are the very arrays the whole read gives.
    """
    h, w = window.shape
    pieces = [_held_pieces(layer, window, ds) for layer, ds in zip(stack.layers, datasets, strict=True)]
    if all(sum(p.size for p in held) * 2 >= window.size for held in pieces):
        return read_stack_entries(stack, window, datasets)
    bands = stack.bands
    flats, values = [], []
    offset = 0
    for layer, ds, held in zip(stack.layers, datasets, pieces, strict=True):
        for piece in held:
            data, present = read_window(layer, piece, ds)
            local = np.flatnonzero(present)  # (row, col, band) of the piece, in C order
            pixel, band = np.divmod(local, present.shape[2])
            r, c = np.divmod(pixel, present.shape[1])
            flats.append(((r + (piece.row_start - window.row_start)) * w
                          + (c + (piece.col_start - window.col_start))) * bands + band + offset)
            values.append(data.reshape(-1)[local].astype(stack.dtype, copy=False))
        offset += len(layer.bands)
    if not flats:
        return (h, w, bands), np.zeros(0, np.int64), np.zeros(0, stack.dtype)
    flat, value = np.concatenate(flats).astype(np.int64, copy=False), np.concatenate(values)
    order = np.argsort(flat, kind="stable")
    return (h, w, bands), flat[order], value[order]


def _held_pieces(layer: GeoTiffSource, window: Window, dataset) -> list[Window]:  # type: ignore[no-untyped-def]
    """The parts of ``window`` that lie in a block ``layer``'s file holds, one per such block."""
    bh, bw = dataset.block_shapes[layer.bands[0] - 1]
    bands = layer.bands[:1] if dataset.interleaving is not Interleaving.band else layer.bands
    pieces = []
    for i in range(window.row_start // bh, -(-window.row_stop // bh)):
        for j in range(window.col_start // bw, -(-window.col_stop // bw)):
            if any(_held(dataset, band, i, j) for band in bands):
                pieces.append(Window(max(i * bh, window.row_start), min((i + 1) * bh, window.row_stop),
                                     max(j * bw, window.col_start), min((j + 1) * bw, window.col_stop)))
    return pieces
