"""Publishing a file: written privately beside its name, moved onto it only once whole.

Shared by the GeoTIFF export and the quicklook. The private folder beside the output,
``.<name>.XXXXXXXX.partial``, is on the same file system (the final move is an atomic
rename) and records the process writing it (a :class:`~tilepipe.store.lock.LockHolder`, as a
store's lock does), so the next export of the same name removes the folders of writers that
were killed, and only those: judged dead as a stale lock is, by :meth:`LockHolder.is_gone`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from tilepipe.errors import InputError, StoreError
from tilepipe.location import already_exists
from tilepipe.logs import native_stderr
from tilepipe.store.lock import LockHolder

__all__ = ["check_output", "failure_reason", "gdal_messages", "publish"]

#: The file in a staging folder that names the process writing there: a LockHolder's JSON.
_OWNER_FILE = "pid"

_log = logging.getLogger("tilepipe.export")


@contextlib.contextmanager
def publish(out: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a private path to write to; move it onto ``out`` only if the block succeeds.

    The private path lies in a hidden folder beside ``out``, ``.<name>.XXXXXXXX.partial``
    (same file system, so the final move is an atomic rename), which records the process
    writing it (pid, host, pid namespace, start time). On any failure, interrupts included,
    the folder and everything GDAL may have put in it (sidecars, COG temporaries) are
    deleted, and an existing ``out`` is left as it was. A process killed outright cannot clean up: the
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
            (staging / _OWNER_FILE).write_text(LockHolder.me().to_json(), encoding="utf-8")
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
        raise InputError(already_exists(out))
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
    """Whether the process that made ``staging`` is dead, judged as a store's stale lock is
    (:meth:`LockHolder.is_gone`); False wherever that cannot be told."""
    try:
        holder = LockHolder.parse((staging / _OWNER_FILE).read_text(encoding="utf-8"))
    except OSError:
        return False  # no record yet (its writer is between mkdtemp and writing it)
    return holder is not None and holder.is_gone()  # None: a foreign or half-written record


@contextlib.contextmanager
def gdal_messages() -> Iterator[list[str]]:
    """What GDAL prints onto file descriptor 2 inside the block, collected
    (:func:`tilepipe.logs.native_stderr`) and logged at INFO on ``tilepipe.export``.

    libtiff, inside GDAL, prints some write errors ("_tiffWriteProc: No space left on
    device.") straight onto fd 2 instead of raising them: they would reach the terminal
    as chatter around the one error line, and never reach the error message
    (:func:`failure_reason` reads them). The yielded list holds the lines once the block
    has ended.
    """
    lines: list[str] = []
    try:
        with native_stderr() as lines:
            yield lines
    finally:
        for line in lines:
            _log.info("GDAL: %s", line)


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
        raise InputError(already_exists(dst)) from exc
    except OSError:
        # File systems without hard links: a check then a rename is the best there is.
        if dst.exists():
            raise InputError(already_exists(dst)) from None
        os.replace(src, dst)
