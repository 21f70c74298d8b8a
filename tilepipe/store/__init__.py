"""Zarr v3 stores: the sparse, tiled scene and the dense result."""

from tilepipe.store.codec import TileData, decode_tile, encode_tile
from tilepipe.store.result import STATUS_COMPUTED, STATUS_EMPTY, STATUS_FREE, STATUS_NOT_DONE, ResultInfo, ResultStore
from tilepipe.store.scene import SceneInfo, SceneStore, block_size_for

__all__ = [
    "STATUS_COMPUTED",
    "STATUS_EMPTY",
    "STATUS_FREE",
    "STATUS_NOT_DONE",
    "ResultInfo",
    "ResultStore",
    "SceneInfo",
    "SceneStore",
    "TileData",
    "block_size_for",
    "decode_tile",
    "encode_tile",
]
