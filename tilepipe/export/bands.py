"""Band names of a result: read from, and recorded into, the result store's band arrays.

A name is the CF ``long_name`` attribute of the band's own Zarr array (``band_1``, ...,
stores of format 3 and later), which ``xarray.open_zarr`` shows and every export uses as the band's
description. Stores of the older one-array format keep the default names.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import zarr

from tilepipe.errors import InputError, StoreError
from tilepipe.store.result import ResultStore

__all__ = ["band_names", "parse_band_names", "record_band_names"]


def _default(band: int) -> str:
    return f"band_{band + 1}"


def parse_band_names(names: Sequence[str] | None, count: int) -> tuple[str, ...] | None:
    """``names`` checked: one distinct, non-empty string per band of the result (None passes)."""
    if names is None:
        return None
    if isinstance(names, (str, bytes)):
        raise InputError(f"band_names: expected a sequence of strings, got {names!r}")
    chosen = tuple(names)
    if len(chosen) != count:
        raise InputError(f"band_names: expected {count} band names, one per band of the result, got {len(chosen)}")
    for name in chosen:
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"band_names: expected non-empty strings, got {name!r}")
    if len(set(chosen)) != len(chosen):
        raise InputError(f"band_names: expected distinct names, got {list(chosen)!r}")
    return chosen


def band_names(store: ResultStore) -> tuple[str, ...]:
    """The name of every band of ``store``: its recorded ``long_name``, else ``band_<n>`` (one-based)."""
    names = []
    for band in range(store.info.shape[0]):
        array, lead = store.data.array(band)
        recorded = array.attrs.get("long_name") if lead == () else None
        names.append(recorded if isinstance(recorded, str) and recorded.strip() else _default(band))
    return tuple(names)


def record_band_names(result: str | os.PathLike[str], names: Sequence[str]) -> None:
    """Record ``names`` (one per band) as the ``long_name`` of each band array of a finished result store.

    Raises
    ------
    InputError
        ``names`` do not fit the store (count, empty or repeated names).
    StoreError
        The store cannot be opened or written, or is of the older one-array format.
    """
    store = ResultStore.open(result, mode="r+")
    try:
        chosen = parse_band_names(names, store.info.shape[0])
    except InputError as exc:  # say which result the names do not fit
        raise InputError(f"{store.path}: {exc}") from None
    assert chosen is not None
    arrays = []
    for band in range(store.info.shape[0]):
        array, lead = store.data.array(band)
        if lead != ():
            raise StoreError(f"{store.path}: band names need a store with one array per band (format 3 or later); "
                             "run the model again to rewrite it")
        arrays.append(array)
    try:
        for array, name in zip(arrays, chosen, strict=True):
            if array.attrs.get("long_name") != name:
                array.update_attributes({"long_name": name})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr notes that consolidated metadata is not in the v3 spec yet
            # Readers that open the store consolidated (xarray) see the names only once re-consolidated.
            zarr.consolidate_metadata(arrays[0].store)
    except Exception as exc:  # zarr and its stores raise many types
        raise StoreError(f"{store.path}: cannot record the band names: {exc}") from exc
