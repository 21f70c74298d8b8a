"""Small helpers shared by the scene and result stores."""

from __future__ import annotations

import os
import shutil
import time
import warnings
from typing import Any

import zarr

from tilepipe.errors import StoreError

__all__ = ["is_url", "local_path", "open_group", "remove_store", "store_exists", "vlen_bytes_dtype"]

FORMAT_VERSION = 1


def local_path(path: str) -> str:
    """``file://`` URLs as plain paths (zarr's fsspec store would not create their folders)."""
    if path.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(path).path)
    return path


def is_url(path: str) -> bool:
    """Whether ``path`` is a URL with a scheme (``s3://``, ``file://``, ...)."""
    return "://" in path


def store_exists(path: str) -> bool:
    """Whether a Zarr group already exists at ``path``."""
    path = local_path(path)
    if not is_url(path):
        return os.path.exists(os.path.join(path, "zarr.json"))
    try:
        zarr.open_group(path, mode="r")
    except Exception:  # noqa: BLE001 - any failure to open means "not there" for this check
        return False
    return True


def remove_store(path: str) -> None:
    """Delete a store (local folders only; remote stores are emptied by zarr)."""
    path = local_path(path)
    if not is_url(path):
        for _ in range(10):  # a writer that was still finishing may add a file as we go
            if not os.path.isdir(path):
                return
            shutil.rmtree(path, ignore_errors=True)
            time.sleep(0.05)
        if os.path.isdir(path):
            shutil.rmtree(path)
        return
    zarr.open_group(path, mode="w")


def open_group(path: str, mode: str, *, kind: str) -> tuple[zarr.Group, dict[str, Any]]:
    """Open a tilepipe group of ``kind`` ("scene" or "result") and return it with its attrs."""
    path = local_path(path)
    try:
        group = zarr.open_group(path, mode=mode)  # type: ignore[arg-type]
    except FileNotFoundError as exc:
        raise StoreError(f"{path}: no such {kind} store") from exc
    except Exception as exc:
        raise StoreError(f"{path}: cannot open as a Zarr v3 {kind} store: {exc}") from exc
    attrs = dict(group.attrs).get("tilepipe")
    if not isinstance(attrs, dict) or attrs.get("kind") != kind:
        found = attrs.get("kind") if isinstance(attrs, dict) else None
        what = f"a tilepipe {found} store" if found else "not a tilepipe store"
        raise StoreError(f"{path}: expected a tilepipe {kind} store, found {what}")
    if attrs.get("format_version") != FORMAT_VERSION:
        raise StoreError(
            f"{path}: store format {attrs.get('format_version')} is not the supported {FORMAT_VERSION}"
        )
    return group, attrs


def vlen_bytes_dtype() -> Any:
    """Zarr's variable-length bytes dtype (it warns that v3 has no spec for it yet)."""
    from zarr.core.dtype import VariableLengthBytes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return VariableLengthBytes()
