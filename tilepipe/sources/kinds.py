"""What an input path names, told from the name alone: a scene store, a STAC item or a raster.

Decided here and nowhere else, and without opening anything: a workflow file is parsed
(and its outputs checked against its inputs) before GDAL, Zarr or any cluster is loaded.
"""

from __future__ import annotations

__all__ = ["SCENE_STORE_SUFFIX", "STAC_ITEM_SUFFIX", "is_scene_store", "is_stac_item"]

#: The suffix of a scene store given as an input: it is read as it is, not ingested.
SCENE_STORE_SUFFIX = ".zarr"
#: The suffix of a local STAC item (its assets, named by key, are the bands).
STAC_ITEM_SUFFIX = ".json"


def is_scene_store(path: str) -> bool:
    """Whether input ``path`` (a path or URL) names a scene store (``.zarr``, a trailing ``/`` allowed)."""
    return path.rstrip("/").endswith(SCENE_STORE_SUFFIX)


def is_stac_item(path: str) -> bool:
    """Whether input ``path`` names a STAC item (a ``.json`` file, any case) rather than a raster."""
    return path.lower().endswith(STAC_ITEM_SUFFIX)
