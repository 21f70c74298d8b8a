"""Before a run on a remote cluster: can every worker open what the run needs?

Paths on a shared filesystem or URLs that look fine from the client may be
missing on a worker (another mount, missing credentials). Asking each worker
first turns a failure deep inside a task into one line that names the worker
and the path.
"""

from __future__ import annotations

import os
from typing import Any

from tilepipe.errors import ClusterError
from tilepipe.location import Location

__all__ = ["check_workers", "probe_paths"]


def _exists(path: str) -> tuple[bool, str]:
    location = Location.of(path)
    if not location.is_local:
        try:
            return location.exists(), "not found"
        except Exception as exc:  # noqa: BLE001 - any failure is a reason the worker cannot open it
            return False, f"{type(exc).__name__}: {exc}"
    if not os.path.exists(location.path):
        return False, "no such file or folder"
    if not os.access(location.path, os.R_OK):
        return False, "not readable"
    return True, ""


def _writable_parent(path: str) -> tuple[bool, str]:
    location = Location.of(path)
    if not location.is_local:
        return True, ""  # object stores have no folders to create; the write itself will tell
    parent = os.path.dirname(location.path)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK):
        return False, f"cannot write in {parent}"
    return True, ""


def probe_paths(inputs: list[str], outputs: list[str], start_tensorflow: bool = False) -> list[str]:
    """Problems this process has opening ``inputs`` and writing ``outputs`` (runs on each worker).

    With ``start_tensorflow``, also import TensorFlow here, ready for the model tasks.
    """
    problems = []
    if start_tensorflow:
        try:
            from tilepipe.model import start_tensorflow as start  # noqa: PLC0415 - TensorFlow starts on the workers, not here

            start()
        except ImportError as exc:
            problems.append(f"cannot import TensorFlow ({exc})")
    for path in inputs:
        ok, why = _exists(path)
        if not ok:
            problems.append(f"cannot open {path} ({why})")
    for path in outputs:
        ok, why = _writable_parent(path)
        if not ok:
            problems.append(f"cannot write {path} ({why})")
    return problems


def check_workers(client: Any, *, inputs: list[str], outputs: list[str], start_tensorflow: bool = False) -> None:
    """Raise :class:`ClusterError` naming each worker that cannot open an input or write an output."""
    answers: dict[str, list[str]] = client.run(probe_paths, inputs, outputs, start_tensorflow)
    if not answers:
        raise ClusterError(f"the Dask scheduler at {client.scheduler.address} has no workers")
    bad = [f"worker {worker}: {'; '.join(problems)}" for worker, problems in sorted(answers.items()) if problems]
    if bad:
        raise ClusterError(" | ".join(bad))
