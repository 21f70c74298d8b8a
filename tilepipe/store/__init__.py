"""Zarr v3 stores: the sparse, tiled scene and the dense result.

Loaded lazily: ``tilepipe.store.info`` (what stores say about themselves, no zarr) can be
imported without zarr; the stores themselves load it on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

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
    "remove_partial_writes",
    "remove_store",
]

_HOMES = {
    "STATUS_COMPUTED": "info", "STATUS_EMPTY": "info", "STATUS_FREE": "info", "STATUS_NOT_DONE": "info",
    "ResultInfo": "info", "SceneInfo": "info", "block_size_for": "info",
    "ResultStore": "result", "SceneStore": "scene",
    "TileData": "codec", "decode_tile": "codec", "encode_tile": "codec",
    "remove_partial_writes": "_zarr", "remove_store": "_zarr",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'tilepipe.store' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tilepipe.store.{home}"), name)
