"""Small helpers shared by the scene and result stores: opening, creating and removing groups."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from typing import Any

import zarr
from zarr.core.dtype import VariableLengthBytes

from tilepipe.errors import StoreError, WrongStoreKindError
from tilepipe.location import Location

__all__ = ["FORMAT_VERSION", "create_group", "open_group", "quiet_vlen", "remove_store", "store_exists",
           "vlen_bytes_dtype"]

FORMAT_VERSION = 1


def store_exists(location: Location) -> bool:
    """Whether a Zarr group already exists at ``location``."""
    if location.is_local:
        return os.path.exists(os.path.join(location.path, "zarr.json"))
    try:
        zarr.open_group(location.target, mode="r")
    except Exception:  # noqa: BLE001 - any failure to open means "not there" for this check
        return False
    return True


def remove_store(location: Location) -> None:
    """Delete a store (local folders; remote stores are emptied by zarr)."""
    if not location.is_local:
        zarr.open_group(location.target, mode="w")
        return
    path = location.path
    for _ in range(10):  # a writer that was still finishing may add a file as we go
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.isdir(path):
            return
        time.sleep(0.05)
    shutil.rmtree(path)


def create_group(location: Location) -> zarr.Group:
    """A new, empty Zarr v3 group at ``location`` (replacing whatever is there)."""
    try:
        return zarr.open_group(location.target, mode="w", zarr_format=3)
    except OSError as exc:
        raise StoreError(f"{location}: cannot create the store: {exc.strerror or exc}") from exc


def open_group(location: Location, mode: str, *, kind: str) -> tuple[zarr.Group, dict[str, Any]]:
    """Open a tilepipe group of ``kind`` ("scene" or "result") and return it with its attrs."""
    try:
        group = zarr.open_group(location.target, mode=mode)  # type: ignore[arg-type]
    except FileNotFoundError as exc:
        raise StoreError(f"{location}: no such {kind} store") from exc
    except Exception as exc:
        raise StoreError(f"{location}: cannot open as a Zarr v3 {kind} store: {exc}") from exc
    attrs = dict(group.attrs).get("tilepipe")
    if not isinstance(attrs, dict) or attrs.get("kind") != kind:
        found = attrs.get("kind") if isinstance(attrs, dict) else None
        what = f"a tilepipe {found} store" if found else "not a tilepipe store"
        raise WrongStoreKindError(f"{location}: expected a tilepipe {kind} store, found {what}", found)
    if attrs.get("format_version") != FORMAT_VERSION:
        raise StoreError(
            f"{location}: store format {attrs.get('format_version')} is not the supported {FORMAT_VERSION}"
        )
    return group, attrs


@contextlib.contextmanager
def quiet_vlen() -> Iterator[None]:
    """Hide zarr's note that variable-length bytes have no v3 spec yet (see :mod:`tilepipe.store.scene`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
        yield


def vlen_bytes_dtype() -> Any:
    """Zarr's variable-length bytes dtype."""
    with quiet_vlen():
        return VariableLengthBytes()
