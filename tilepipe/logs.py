"""Where log records go when tilepipe runs as a command: a file, not the terminal.

The terminal of ``tilepipe`` shows tilepipe's own lines, progress bars and, on
failure, one ``Error:`` line. Everything else (distributed's records, among them a
worker's "Compute Failed" with its traceback, warnings of the libraries, GDAL's
notes) goes to a log file, which the error line names. ``--verbose`` keeps it on the
terminal too. As a library, tilepipe leaves logging to its caller:
:func:`to_file` is called by the CLI only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time

__all__ = ["NOTICE", "current_log_file", "route_process_logs", "to_file"]

_STATE: dict[str, str | None] = {"path": None}

#: Loggers whose records go to the file in every process tilepipe starts.
_LOGGERS = ("distributed", "dask", "tornado", "asyncio", "tilepipe", "py.warnings", "rasterio", "tensorflow", "absl")


def _default_path() -> str:
    folder = os.environ.get("TILEPIPE_LOG_DIR") or os.path.join(tempfile.gettempdir(), "tilepipe-logs")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"tilepipe-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")


def route_process_logs(path: str | None, *, verbose: bool = False, level: int = logging.INFO) -> None:
    """In this process, send library log records and warnings to ``path`` (and stderr only with ``verbose``).

    Runs in the CLI's process and, through ``Client.run``, in each worker of an
    embedded cluster. Idempotent.
    """
    with contextlib.suppress(ImportError):
        import distributed  # noqa: F401, PLC0415 - its logging set-up runs on import: it must come before ours
    handlers: list[logging.Handler] = []
    if path is not None:
        to_log = logging.FileHandler(path, encoding="utf-8", delay=True)
        to_log.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"))
        handlers.append(to_log)
    if verbose:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.captureWarnings(True)
    for name in ("", *_LOGGERS):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            if isinstance(old, (logging.StreamHandler, logging.FileHandler)):
                logger.removeHandler(old)
        if name:
            logger.propagate = True
    root = logging.getLogger()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    if not handlers:
        root.addHandler(logging.NullHandler())


#: Records for the person at the terminal (a setting tilepipe changed for them): shown by the CLI.
NOTICE = "tilepipe.notice"


def to_file(*, verbose: bool = False) -> str:
    """Route this process's log records to a new log file (the CLI's choice); returns its path.

    Records of the :data:`NOTICE` logger are also shown on stderr, as plain lines.
    """
    path = _default_path()
    _STATE["path"] = path
    route_process_logs(path, verbose=verbose)
    notice = logging.getLogger(NOTICE)
    for old in list(notice.handlers):
        notice.removeHandler(old)
    if not verbose:  # verbose shows every record already
        shown = logging.StreamHandler(sys.stderr)
        shown.setFormatter(logging.Formatter("%(message)s"))
        notice.addHandler(shown)
    return path


def current_log_file() -> str | None:
    """The log file the CLI chose, or None when tilepipe runs as a library."""
    return _STATE["path"]
