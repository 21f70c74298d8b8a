"""STAC items as band stacks: a local item JSON and the asset keys to stack, read with ``pystac``.

``pystac`` is optional (``pip install 'tilepipe[stac]'``); it is imported only when an item is read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from tilepipe.errors import InputError
from tilepipe.location import Location

__all__ = ["stac_asset_paths"]


def stac_asset_paths(item_path: str, assets: Sequence[str]) -> tuple[str, ...]:
    """The rasters of a STAC item's ``assets``, in the order given; relative hrefs resolve against the item."""
    if not assets:
        raise InputError(f"{item_path}: expected at least one asset key")
    if len(set(assets)) != len(assets):
        raise InputError(f"{item_path}: expected distinct asset keys, got {', '.join(assets)}")
    try:
        import pystac  # noqa: PLC0415 - optional: needed only for STAC items
    except ImportError:
        raise InputError(f"{item_path}: reading a STAC item needs pystac (pip install 'tilepipe[stac]')") from None
    location = Location.of(item_path)
    if location.is_local and not os.path.exists(location.path):
        raise InputError(f"{item_path}: no such file")
    why = None
    try:
        item = pystac.Item.from_file(location.path if location.is_local else item_path)
    except Exception as exc:  # noqa: BLE001 - JSON, schema and I/O errors all mean "not a readable item"
        why = " ".join(str(exc).split())[:200] or type(exc).__name__
    if why is not None:  # unchained: pystac's and json's exceptions say nothing more than why
        raise InputError(f"{item_path}: not a readable STAC item: {why}")
    missing = [key for key in assets if key not in item.assets]
    if missing:
        raise InputError(f"{item_path}: no asset {missing[0]!r} in the item (it has: {', '.join(item.assets)})")
    hrefs = []
    for key in assets:
        href = item.assets[key].get_absolute_href()
        if not href:
            raise InputError(f"{item_path}: asset {key!r} has no href")
        hrefs.append(href)
    return tuple(hrefs)
