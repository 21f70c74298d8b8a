"""Where a watched scene's outputs go: staged per scene, published whole, owned by one scene name.

Staging, and why
----------------
A scene's run writes into ``<root>/.tilepipe-watch/work/<key>/`` (the outputs' own
folder by default, whatever ``--ledger`` says, so that publishing is a rename on one
file system), not into its final paths. ``<key>`` is an injective function of the
scene's file name and identity (:func:`name_key`), so two files never share a
staging folder, and a run that was killed is found again by the next pass and
resumed by tilepipe's own run (same scene store, same result store identity: only
the tiles not done are computed).

Publishing
----------
Only once the run is complete are its outputs put at their final paths, the result
store last: each by a rename on the outputs' file system (a ``--work-dir`` on another
file system is first copied to a hidden name beside the final path, then renamed),
so a final path holds the old output, nothing, or the whole new one, never a part
that claims to be complete. A folder already at the final path is set aside under a
hidden name first and removed after.

Who owns an output
------------------
The watcher replaces only what it published itself for the same scene name (a file
rewritten under its name is a new version of that scene). The record of that is the
scene's marker, ``<root>/.tilepipe-watch/done/<name_key(name)>.json``: before
anything is moved it says ``publishing`` with the new identity and every output
path, after the result store is in place it says ``done``. Anything else at an
output path (a user's file or folder, another scene's output) stops the scene with
one line and is kept byte for byte. The marker is also what watchers on other
machines (each with its own ledger) read under their shared scheduler lock: a scene
whose marker says ``done`` with its identity is done; a marker with another identity
means the outputs now hold another version of that file, so an older version that
comes back is run again.

Object stores (``s3://...``) cannot rename: the scene is staged in a local work
folder and its finished outputs uploaded, a store's top ``zarr.json`` removed first
and uploaded last, and objects of an older version that the new one lacks removed
afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from tilepipe.errors import StoreError
from tilepipe.location import Location
from tilepipe.workflow import SCENE_PLACEHOLDER, OutputSpec, SceneWorkflow, Workflow

__all__ = ["Outputs", "clashes", "name_key", "outputs_root"]

#: The watcher's own folder beside the outputs (a dot-folder: never a scene, never listed as output).
STATE_FOLDER = ".tilepipe-watch"
#: The ledger's file name beside the outputs.
LEDGER_NAME = ".tilepipe-watch.sqlite"
#: The output kinds in publishing order: the result store last (a complete result means all is in place).
KINDS: tuple[str, ...] = ("scene", "quicklook", "geotiff", "classes", "threshold", "scale", "zarr")


def outputs_root(template: str) -> Location:
    """The deepest folder (or URL prefix) of an output path template that holds no ``{scene}``."""
    loc = Location.of(template).parent
    while SCENE_PLACEHOLDER in loc.text:
        loc = loc.parent
    return loc


#: Hex characters of the sha256 in a :func:`name_key`: 64 bits, so two names meet only by a hash
#: collision. Not :data:`~tilepipe.sources.identity.SHORT_IDENTITY` (12, for people to read and
#: type): a key is never typed, and a shorter one would rename existing markers and staging folders.
NAME_KEY_HEX = 16


def name_key(text: str) -> str:
    """A file name that stands for ``text`` alone: a readable prefix and :data:`NAME_KEY_HEX` hex
    characters of its sha256.

    Injective in practice (two names would need a 64-bit hash collision), unlike
    replacing characters (``a b`` and ``a_b``, ``東京`` and ``大阪`` would meet).
    """
    readable = re.sub(r"[^A-Za-z0-9._@-]", "_", text)[:48].lstrip(".")
    return f"{readable}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:NAME_KEY_HEX]}"


def output_paths(out: OutputSpec) -> list[tuple[str, str]]:
    """``(kind, path)`` of every output asked for, in publishing order (the result store last)."""
    paths: dict[str, str | None] = {"scene": out.scene, "quicklook": out.quicklook, "geotiff": out.geotiff,
                                    "zarr": out.zarr, **{key: spec.path for key, spec in out.products}}
    return [(kind, where) for kind in KINDS if (where := paths.get(kind)) is not None]


def final_paths(final: Workflow) -> list[tuple[str, str]]:
    """``(kind, path)`` of every output of a bound workflow, in publishing order (the result store last)."""
    return output_paths(final.output)


def _norm(path: str) -> str:
    loc = Location.of(path)
    return os.path.realpath(loc.path) if loc.is_local else loc.text.rstrip("/")


def clashes(outputs: dict[str, list[tuple[str, str]]]) -> dict[str, str]:
    """Scenes whose outputs meet another scene's: ``{name: why}`` for every scene involved.

    ``outputs`` maps each scene file name to its :func:`final_paths`. Two scenes clash
    where an output of one is, contains or lies inside an output of the other
    (``a.tif`` and ``a.tiff`` both give ``out/a.zarr``; ``X.scene.tif``'s result is
    ``X.tif``'s scene store).
    """
    owner: dict[str, tuple[str, str]] = {}
    for name, paths in outputs.items():
        for _, path in paths:
            owner.setdefault(_norm(path), (name, path))
    found: dict[str, str] = {}
    for name, paths in outputs.items():
        for _, path in paths:
            norm = _norm(path)
            probe = norm
            while True:  # the path itself and every folder above it
                other = owner.get(probe)
                if other is not None and other[0] != name:
                    if probe == norm:
                        found.setdefault(name, f"its output {path} is also an output of {other[0]}")
                        found.setdefault(other[0], f"its output {path} is also an output of {name}")
                    else:
                        found.setdefault(name, f"its output {path} lies inside {other[1]}, an output of {other[0]}")
                        found.setdefault(other[0], f"its output {other[1]} holds {path}, an output of {name}")
                    break
                up = os.path.dirname(probe) if "://" not in probe else probe.rsplit("/", 1)[0]
                if up in (probe, "") or up.endswith(":/"):
                    break
                probe = up
    return found


class Outputs:
    """The outputs of a scene workflow: their root, the ledger's default place, staging and publishing.

    Parameters
    ----------
    workflow
        The scene workflow; its ``output.zarr`` decides the root.
    ledger, work
        The ledger file and the local staging folder, where not the defaults
        (``<root>/.tilepipe-watch.sqlite`` and ``<root>/.tilepipe-watch/work``; for
        remote outputs, beside the workflow file).
    """

    def __init__(self, workflow: SceneWorkflow, *, ledger: str | None = None, work: str | None = None) -> None:
        self.workflow = workflow
        self.root = outputs_root(workflow.output.zarr)
        if self.root.is_local:
            # Staging on the outputs' own file system: publishing is then a rename (never a copy).
            local_state = self.root.path
            default_ledger = os.path.join(self.root.path, LEDGER_NAME)
        else:
            folder = os.path.dirname(os.path.abspath(workflow.source))
            stem = os.path.splitext(os.path.basename(workflow.source))[0]
            local_state = folder if ledger is None else os.path.dirname(os.path.abspath(ledger))
            default_ledger = os.path.join(folder, f".{stem}.watch.sqlite")
        self.ledger = os.path.abspath(ledger) if ledger else default_ledger
        self.work = os.path.abspath(work) if work else os.path.join(local_state, STATE_FOLDER, "work")
        self.markers = self.root.join(STATE_FOLDER, "done")

    def folders(self) -> list[Location]:
        """The folders (or prefixes) every output goes under, whatever the scene: one per template."""
        found: dict[str, Location] = {}
        for _, template in output_paths(self.workflow.output):
            loc = outputs_root(template)
            found.setdefault(loc.text, loc)
        return list(found.values())

    # ------------------------------------------------------------------ staging

    def stage_folder(self, name: str, identity: str) -> str:
        """The local folder a scene's run writes into: the same on every pass for the same file and content."""
        return os.path.join(self.work, name_key(f"{name}@{identity}"))

    @staticmethod
    def staged(final: Workflow, folder: str) -> Workflow:
        """``final`` with every output moved into ``folder`` (``<folder>/<kind>/<file name>``; the
        folders are made here)."""
        def inside(kind: str, where: str) -> str:
            os.makedirs(os.path.join(folder, kind), exist_ok=True)
            return os.path.join(folder, kind, Location.of(where).name)

        # with_paths carries every output the workflow asks for (products and band names included).
        return replace(final, output=final.output.with_paths(inside))

    # ------------------------------------------------------------------ ownership

    def in_the_way(self, name: str, final: Workflow) -> str | None:
        """Why the outputs of scene file ``name`` cannot be published, or None where they can.

        Something at an output path is in the way unless this watcher published it for
        ``name`` (the scene's marker lists it).
        """
        ours = self._owned(name)
        for _, path in final_paths(final):
            why = _blocker(path, name, ours)
            if why is not None:
                return why
        return None

    def _owned(self, name: str) -> set[str]:
        return {_norm(p) for p in (self.marker(name) or {}).get("outputs") or ()}

    # ------------------------------------------------------------------ publishing

    def publish(self, name: str, identity: str, staged: Workflow, final: Workflow,
                report: dict[str, Any] | None) -> None:
        """Put every staged output at its final place, the result store last, then mark the scene done.

        Raises
        ------
        StoreError
            Something not published by this watcher for ``name`` is in the way of an
            output, or a move or copy failed: what was already published stays owned by
            ``name``, the done marker is not written, and the result store, moved last,
            is not at its final path.
        """
        staged_paths = dict(final_paths(staged))
        pairs = [(staged_paths[kind], where) for kind, where in final_paths(final) if kind in staged_paths]
        before = self.marker(name) or {}
        ours = {_norm(p) for p in before.get("outputs") or ()}
        owned = sorted({*(where for _, where in pairs), *(before.get("outputs") or ())})
        # Ownership first: a watcher killed while moving still knows these paths are its own.
        self._write_marker(name, {"name": name, "identity": identity, "state": "publishing", "outputs": owned})
        for src, dst in pairs:
            if not os.path.exists(src):
                continue
            why = _blocker(dst, name, ours)  # checked again at each move: something may have come since
            if why is not None:
                raise StoreError(why)
            target = Location.of(dst)
            try:
                if target.is_local:
                    _move_into_place(src, target.path)
                else:
                    _upload(src, target.text)
            except OSError as exc:
                raise StoreError(f"{dst}: publishing the scene's output failed: {_why(exc)}") from None
        self._write_marker(name, {"name": name, "identity": identity, "state": "done", "outputs": owned,
                                  "result": final.output.zarr, "report": report, "host": socket.gethostname(),
                                  "finished": time.time()})

    # ------------------------------------------------------------------ markers

    def _marker_location(self, name: str) -> Location:
        return self.markers.join(name_key(name) + ".json")

    def marker(self, name: str) -> dict[str, Any] | None:
        """What the marker of scene file ``name`` says, or None where there is none (or it was cut short)."""
        marker = self._marker_location(name)
        try:
            if marker.is_local:
                with open(marker.path, encoding="utf-8") as fh:
                    text = fh.read()
            else:
                fs, inner = _fs(marker.text)
                text = fs.cat_file(inner).decode("utf-8")
        except FileNotFoundError:
            return None
        try:
            found = json.loads(text)
        except ValueError:
            return None
        return found if isinstance(found, dict) and found.get("name") == name else None

    def done_marker(self, name: str, identity: str) -> dict[str, Any] | None:
        """The marker of ``name`` where it says this very content is published and done, else None."""
        found = self.marker(name)
        if found is None or found.get("state") != "done" or found.get("identity") != identity:
            return None
        return found

    def published_identity(self, name: str) -> str | None:
        """The identity whose outputs are now at ``name``'s output paths, as its marker says (None: none)."""
        found = self.marker(name)
        return None if found is None else str(found.get("identity") or "") or None

    def _write_marker(self, name: str, record: dict[str, Any]) -> None:
        text = json.dumps(record)
        marker = self._marker_location(name)
        try:
            if marker.is_local:
                os.makedirs(os.path.dirname(marker.path), exist_ok=True)
                partial = f"{marker.path}.{os.getpid()}.part"
                with open(partial, "w", encoding="utf-8") as fh:
                    fh.write(text)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(partial, marker.path)
            else:
                fs, inner = _fs(marker.text)
                fs.pipe_file(inner, text.encode("utf-8"))
        except OSError as exc:
            raise StoreError(f"{marker}: cannot write the scene's marker: {_why(exc)}") from None


def _blocker(path: str, name: str, ours: set[str]) -> str | None:
    """Why ``path`` may not be replaced by scene file ``name``'s output (``ours``: what it owns), or None."""
    loc = Location.of(path)
    if not _present(loc) or _norm(path) in ours:
        return None
    what = "a folder" if loc.is_local and os.path.isdir(loc.path) else "a file" if loc.is_local else "data"
    return (f"{path}: already holds {what} that is not this watcher's output of {name}; it is kept as it "
            "is: move it away, or choose other output paths")


def _present(loc: Location) -> bool:
    if loc.is_local:
        return os.path.lexists(loc.path)
    try:
        return loc.exists()
    except FileNotFoundError:
        return False


def _why(exc: OSError) -> str:
    where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
    return f"{exc.strerror or exc}{where}"


def _move_into_place(src: str, dst: str) -> None:
    """Put ``src`` at ``dst`` by a rename on ``dst``'s file system; an old ``dst`` is replaced whole.

    Where ``src`` is on another file system it is first copied to a hidden name beside
    ``dst`` (a copy killed half-way is never at ``dst``), then renamed.
    """
    parent, base = os.path.split(dst)
    os.makedirs(parent, exist_ok=True)
    for stale in _leftovers(parent, base):
        _remove(stale)
    if os.stat(src).st_dev != os.stat(parent).st_dev:
        partial = os.path.join(parent, f".{base}.publishing-{os.getpid()}")
        try:
            _copy(src, partial)
        except BaseException:
            _remove(partial)
            raise
        src = partial
    if not os.path.isdir(src) and not os.path.isdir(dst):
        os.replace(src, dst)  # a file: atomic
        return
    aside = os.path.join(parent, f".{base}.replaced-{os.getpid()}")
    if os.path.lexists(dst):
        os.rename(dst, aside)
    try:
        os.rename(src, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.rename(aside, dst)
        raise
    _remove(aside)


def _leftovers(parent: str, base: str) -> Iterable[str]:
    """What an earlier publish of ``base`` that was killed left beside it (hidden partial copies, old versions)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(parent):
            if name.startswith((f".{base}.publishing-", f".{base}.replaced-")):
                yield os.path.join(parent, name)


def _copy(src: str, dst: str) -> None:
    """Copy a file or a folder; the first failure raises (an ``OSError`` naming the file)."""
    if not os.path.isdir(src):
        shutil.copyfile(src, dst)
        return
    for folder, _, names in os.walk(src):
        target = os.path.join(dst, os.path.relpath(folder, src))
        os.makedirs(target, exist_ok=True)
        for name in names:
            shutil.copyfile(os.path.join(folder, name), os.path.join(target, name))


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _fs(url: str) -> tuple[Any, str]:
    import fsspec  # noqa: PLC0415 - only remote outputs need fsspec and its plug-ins

    fs, inner = fsspec.core.url_to_fs(url)
    return fs, str(inner)


def _upload(src: str, dst: str) -> None:
    """Upload a file, or a store folder (its top ``zarr.json`` removed first and written last; stale
    objects of an older version removed after)."""
    fs, inner = _fs(dst)
    if not os.path.isdir(src):
        fs.put_file(src, inner)
        return
    files = []
    for folder, _, names in os.walk(src):
        for name in names:
            files.append(os.path.relpath(os.path.join(folder, name), src).replace(os.sep, "/"))
    # An older version's group metadata says "complete": gone before any of its chunks changes,
    # so a reader never sees a store that claims more than its chunks hold.
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(f"{inner}/zarr.json")
    files.sort(key=lambda rel: (rel.endswith("zarr.json"), -rel.count("/"), rel))
    for rel in files:
        fs.put_file(os.path.join(src, *rel.split("/")), f"{inner}/{rel}")
    fresh = set(files)
    with contextlib.suppress(FileNotFoundError):
        fs.invalidate_cache(inner)
        for key in fs.find(inner):
            rel = str(key)[len(inner.rstrip("/")) + 1:]
            if rel not in fresh:
                fs.rm_file(key)
