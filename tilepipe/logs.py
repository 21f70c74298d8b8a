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
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

__all__ = ["NOTICE", "current_log_file", "native_stderr", "route_process_logs", "to_file", "without_tensorflow_lines"]

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


# fd 2 belongs to the process, not the thread: one block collects from it at a time.
_FD2 = threading.Lock()


@contextlib.contextmanager
def native_stderr(*, python_too: bool = False) -> Iterator[list[str]]:
    """Collect what is printed onto file descriptor 2 inside the block: the lines of native code
    (libtiff's "_tiffWriteProc: No space left on device.", absl's notes while TensorFlow starts),
    which no Python handler sees. The one place tilepipe takes fd 2 over for a while.

    The yielded list holds the non-blank lines once the block has ended, by an exception too.
    Writes through ``sys.stderr`` (progress bars, warnings) still reach the terminal meanwhile
    (it points there; a logging handler that holds the old stream object is collected too),
    unless ``python_too``: then they are collected as well. A block entered while another is
    open, in another thread, collects nothing. Where the process has no fd 2, nothing is collected.
    """
    lines: list[str] = []
    if not _FD2.acquire(blocking=False):
        yield lines
        return
    try:
        python_stderr = sys.stderr
        if python_stderr is not None:
            python_stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 at all (a daemon): nothing to collect from
            yield lines
            return
        terminal = None
        try:
            on_fd2 = not python_too and python_stderr is not None and python_stderr.fileno() == 2
        except (OSError, ValueError):  # io.UnsupportedOperation: no file descriptor (notebooks, capture)
            on_fd2 = False
        if on_fd2:
            terminal = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="backslashreplace")
            sys.stderr = terminal
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield lines
            finally:
                if python_too and sys.stderr is not None:
                    with contextlib.suppress(OSError, ValueError):
                        sys.stderr.flush()  # what Python wrote in the block lands in the sink, not after it
                os.dup2(saved, 2)
                os.close(saved)
                if terminal is not None:
                    sys.stderr = python_stderr
                    terminal.close()
                sink.seek(0)
                lines.extend(line for line in sink.read().decode(errors="replace").splitlines() if line.strip())
    finally:
        _FD2.release()


#: TensorFlow's native log lines: absl's (``I0000 00:00:1796227892.912074   21332 port.cc:153] oneDNN ...``),
#: TensorFlow's own before it used absl (``2024-01-01 12:00:00.000000: I tensorflow/...``), and the plain
#: lines around them (absl's note before its first line, cpu_feature_guard's second line).
_TF_LINE = re.compile(
    rb"[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\] "
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] \S+:\d+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|To enable the following instructions: .* rebuild TensorFlow "
)

# One window at a time: a second one opened inside the first would restore the first's pipe as stderr.
_WINDOW = threading.Lock()


@contextlib.contextmanager
def without_tensorflow_lines() -> Iterator[None]:
    """Start processes in this block whose stderr reaches ours without TensorFlow's native log lines.

    A worker process that imports TensorFlow before any tilepipe code runs in it (a spawned
    worker re-imports the caller's main module, and a script that does ``import keras`` at
    its top imports TensorFlow there) prints absl's oneDNN, cudart and cuInit lines on fd 2
    whatever ``TF_CPP_MIN_LOG_LEVEL`` says. So, for the block only, this process's fd 2 is a
    pipe, which every process started in the block inherits as its stderr for its whole
    life; a thread copies what comes through to the real stderr, every line but TensorFlow's
    (those go to the CLI's log file, where there is one). This process's own stderr is
    restored when the block ends; what it wrote meanwhile was copied too.
    ``TILEPIPE_TF_VERBOSE=1`` leaves stderr alone.
    """
    if os.environ.get("TILEPIPE_TF_VERBOSE"):
        yield
        return
    with _WINDOW:
        if sys.stderr is not None:
            sys.stderr.flush()
        read_end, write_end = os.pipe()
        real = os.dup(2)
        threading.Thread(target=_copy_lines, args=(read_end, real, current_log_file()),
                         name="tilepipe-worker-stderr", daemon=True).start()
        os.dup2(write_end, 2)
        os.close(write_end)
        try:
            yield
        finally:
            if sys.stderr is not None:
                with contextlib.suppress(OSError, ValueError):
                    sys.stderr.flush()
            os.dup2(real, 2)  # the pipe's write end now lives in the processes started in the block only


def _copy_lines(read_end: int, real: int, log_file: str | None) -> None:
    """Copy lines from the pipe to the real stderr until every writer has ended; TensorFlow's to ``log_file``."""
    with contextlib.ExitStack() as stack:
        pipe = stack.enter_context(os.fdopen(read_end, "rb"))
        stderr = stack.enter_context(os.fdopen(real, "wb", buffering=0))
        log = None
        if log_file is not None:
            with contextlib.suppress(OSError):  # no log file: TensorFlow's lines are dropped, the rest still copied
                log = stack.enter_context(open(log_file, "ab", buffering=0))
        for line in pipe:
            target = log if _TF_LINE.match(line) else stderr
            # A failed write is dropped, never the reading: a process whose stderr pipe is full would block.
            if target is not None:
                with contextlib.suppress(OSError, ValueError):
                    target.write(line)
