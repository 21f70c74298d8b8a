"""Progress bars, the same everywhere: ingest, run and export."""

from __future__ import annotations

from typing import Any

__all__ = ["progress_bar"]


class _Silent:
    """A bar that shows nothing, so callers never test for one."""

    def update(self, n: int = 1) -> None:
        """Do nothing."""

    def close(self) -> None:
        """Do nothing."""


def progress_bar(total: int, desc: str, unit: str, *, enabled: bool, initial: int = 0) -> Any:
    """A tqdm bar on stderr of ``total`` units (``initial`` already done), or a silent stand-in."""
    if not enabled:
        return _Silent()
    from tqdm import tqdm  # noqa: PLC0415 - tqdm is only needed when a bar is shown

    return tqdm(total=total, desc=desc, unit=unit, initial=initial)
