"""Publishing a file: written privately beside its name, moved onto it only once whole.

Shared by the GeoTIFF export and the quicklook. The private folder beside the output,
``.<name>.XXXXXXXX.partial``, is on the same file system (the final move is an atomic
rename) and records the process writing it, so the next export of the same name removes
the folders of writers that were killed, and only those.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil

from tilepipe.errors import InputError, StoreError

__all__ = ["check_output", "failure_reason", "native_stderr", "publish"]

#: The file in a staging folder that names the process writing there: "<pid> <host>".
_OWNER_FILE = "pid"

#: Held while one export collects what native code prints on fd 2 (a process-wide resource).
_NATIVE_STDERR = threading.Lock()

_log = logging.getLogger("tilepipe.export")


@contextlib.contextmanager
def publish(out: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a private path to write to; move it onto ``out`` only if the block succeeds.

    The private path lies in a hidden folder beside ``out``, ``.<name>.XXXXXXXX.partial``
    (same file system, so the final move is an atomic rename), which records the pid and
    host of the process writing it. On any failure, interrupts included, the folder and
    everything GDAL may have put in it (sidecars, COG temporaries) are deleted, and an
    existing ``out`` is left as it was. A process killed outright cannot clean up: the
    next ``publish`` of the same name removes such folders whose owner is gone, and only
    those, so concurrent writers keep theirs.

    The block must prove the file whole before it ends (reopen it, read it back):
    ``publish`` only checks that a file is there.

    Parameters
    ----------
    out : Path
        The file to create.
    overwrite : bool
        Whether an existing ``out`` may be replaced.

    Raises
    ------
    InputError
        ``out`` exists and ``overwrite`` is false, ``out`` is a folder or another
        non-regular file (a device, a pipe), or its folder does not exist.
    StoreError
        The folder cannot be written to.
    """
    check_output(out, overwrite=overwrite)
    parent = out.parent
    _remove_dead_staging(out)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=parent))
    except OSError as exc:
        raise StoreError(f"{out}: cannot write in {parent}: {exc.strerror or exc}") from exc
    try:
        try:
            (staging / _OWNER_FILE).write_text(f"{os.getpid()} {socket.gethostname()}\n", encoding="utf-8")
            # The file goes in a folder of its own, so no output name can clash with the pid file.
            (staging / "work").mkdir()
        except OSError as exc:
            raise StoreError(f"{out}: cannot write in {parent}: {exc.strerror or exc}") from exc
        partial = staging / "work" / out.name
        yield partial
        if not partial.is_file():
            raise StoreError(f"{out}: nothing was written")
        if overwrite:
            os.replace(partial, out)
        else:
            _move_without_clobbering(partial, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_output(out: Path, *, overwrite: bool) -> None:
    """Refuse an output name that cannot become the file, before any work is done.

    Raises
    ------
    InputError
        ``out`` is a folder or another non-regular file (a device, a pipe), exists and
        ``overwrite`` is false, or its folder does not exist.
    """
    if out.is_dir():
        raise InputError(f"{out}: is a folder, expected a file name")
    if out.exists() and not out.is_file():
        raise InputError(f"{out}: is not a regular file (a device, pipe or socket); expected a file name")
    if out.exists() and not overwrite:
        raise InputError(f"{out}: already exists; pass overwrite=True (--overwrite) to replace it")
    if not out.parent.is_dir():
        raise InputError(f"{out}: the folder {out.parent} does not exist")


def _remove_dead_staging(out: Path) -> None:
    """Delete the staging folders of ``out`` whose writer was killed (SIGKILL, power cut, OOM)."""
    # tempfile.mkdtemp puts letters, digits and "_" between the prefix and the suffix.
    pattern = re.compile(re.escape(f".{out.name}.") + r"[a-z0-9_]+\.partial")
    try:
        names = [entry.name for entry in os.scandir(out.parent) if pattern.fullmatch(entry.name)]
    except OSError:
        return  # an unreadable folder: publish itself will say what is wrong
    for name in names:
        staging = out.parent / name
        if staging.is_dir() and not staging.is_symlink() and _owner_is_gone(staging):
            shutil.rmtree(staging, ignore_errors=True)


def _owner_is_gone(staging: Path) -> bool:
    """Whether the process that made ``staging`` is dead; False wherever that cannot be told."""
    record = staging / _OWNER_FILE
    try:
        pid_text, host = record.read_text(encoding="utf-8").split()
        pid = int(pid_text)
        written = record.stat().st_mtime
    except (OSError, ValueError):
        return False  # no record yet (its writer is between mkdtemp and writing it), or a foreign one
    if host != socket.gethostname():
        return False  # a writer on another machine sharing this folder: its pid means nothing here
    try:
        process = psutil.Process(pid)
        # A killed child its parent has not reaped yet is a zombie: dead all the same. A pid
        # taken by a process that started after the record was written is someone else's.
        return bool(process.status() == psutil.STATUS_ZOMBIE or process.create_time() > written + 1.0)
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:  # AccessDenied: the process exists
        return False


@contextlib.contextmanager
def native_stderr() -> Iterator[list[str]]:
    """Collect what native code prints onto file descriptor 2 inside the block.

    libtiff, inside GDAL, prints some write errors ("_tiffWriteProc: No space left on
    device.") straight onto fd 2 instead of raising them: they would reach the terminal
    as chatter around the one error line, and never reach the error message. Writes
    through ``sys.stderr`` (progress bars, warnings) still reach the terminal: it points
    there meanwhile; a logging handler that holds the old stream object is collected too.
    The yielded list holds the lines once the block has ended; they are also logged at
    INFO on ``tilepipe.export``. fd 2 belongs to the process, not the thread: a second
    block running at the same time in another thread collects nothing.
    """
    lines: list[str] = []
    if not _NATIVE_STDERR.acquire(blocking=False):
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
            on_fd2 = python_stderr is not None and python_stderr.fileno() == 2
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
                os.dup2(saved, 2)
                os.close(saved)
                if terminal is not None:
                    sys.stderr = python_stderr
                    terminal.close()
                sink.seek(0)
                lines.extend(line for line in sink.read().decode(errors="replace").splitlines() if line.strip())
                for line in lines:
                    _log.info("GDAL: %s", line)
    finally:
        _NATIVE_STDERR.release()


def failure_reason(exc: BaseException, native: Sequence[str]) -> str:
    """One line saying why a write failed: the operating system's words where there are any."""
    if isinstance(exc, OSError) and exc.strerror:
        return str(exc.strerror)
    if native:
        # "_tiffWriteProc: No space left on device." -> "No space left on device"
        return re.sub(r"^[A-Za-z_]\w*:\s*", "", native[0].strip()).rstrip(".")
    return " ".join(str(exc).split()) or type(exc).__name__


def _move_without_clobbering(src: Path, dst: Path) -> None:
    # A hard link fails if dst appeared while we were writing (another export racing us),
    # where a rename would silently replace it.
    try:
        os.link(src, dst)
    except FileExistsError as exc:
        raise InputError(f"{dst}: already exists; pass overwrite=True (--overwrite) to replace it") from exc
    except OSError:
        # File systems without hard links: a check then a rename is the best there is.
        if dst.exists():
            raise InputError(f"{dst}: already exists; pass overwrite=True (--overwrite) to replace it") from None
        os.replace(src, dst)
