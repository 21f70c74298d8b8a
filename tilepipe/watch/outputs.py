"""Where a watched scene's outputs go: staged per scene identity, published whole, and marked done.

Staging, and why
----------------
A scene's run writes into ``<root>/.tilepipe-watch/work/<stem>@<identity>/`` (the
outputs' own folder, so publishing is a rename on the same file system), not into
its final paths. The folder is named by the scene's identity, so a run that was
killed is found again by the next pass and resumed by tilepipe's own run (same
scene store, same result store identity: only the tiles not done are computed).
Only once the run is complete are its outputs moved to their final names: a
file by an atomic ``os.replace``, a store folder by two renames (the old one
aside, the new one in). A rewritten scene file is a new identity, so its new
result replaces the old one only when complete.

Object stores (``s3://...``) cannot rename: the scene is staged in a local work
folder and its finished outputs uploaded, a store's metadata (``zarr.json``)
after its chunks, and objects of an older version that the new one lacks removed
afterwards.

Done markers
------------
After publishing, ``<root>/.tilepipe-watch/done/<name>@<identity>.json`` records
the scene as done, beside the outputs. Watchers on other machines (each with its
own ledger) find it under their shared scheduler lock, and do not run the scene
again.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import time
from dataclasses import replace
from typing import Any

from tilepipe.location import Location
from tilepipe.watch.inbox import remove_tree
from tilepipe.workflow import SCENE_PLACEHOLDER, SceneWorkflow, Workflow

__all__ = ["Outputs", "outputs_root"]

#: The watcher's own folder beside the outputs (a dot-folder: never a scene, never listed as output).
STATE_FOLDER = ".tilepipe-watch"
#: The ledger's file name beside the outputs.
LEDGER_NAME = ".tilepipe-watch.sqlite"


def outputs_root(template: str) -> Location:
    """The deepest folder (or URL prefix) of an output path template that holds no ``{scene}``."""
    loc = Location.of(template).parent
    while SCENE_PLACEHOLDER in loc.text:
        loc = loc.parent
    return loc


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
        self.root = outputs_root(workflow.output.zarr)
        if self.root.is_local:
            local_state = self.root.path
            default_ledger = os.path.join(self.root.path, LEDGER_NAME)
        else:
            folder = os.path.dirname(os.path.abspath(workflow.source))
            stem = os.path.splitext(os.path.basename(workflow.source))[0]
            local_state = folder
            default_ledger = os.path.join(folder, f".{stem}.watch.sqlite")
        self.ledger = os.path.abspath(ledger) if ledger else default_ledger
        self.work = os.path.abspath(work) if work else os.path.join(
            local_state if ledger is None else os.path.dirname(self.ledger), STATE_FOLDER, "work")
        self.markers = self.root.join(STATE_FOLDER, "done")

    # ------------------------------------------------------------------ staging

    def stage_folder(self, name: str, identity: str) -> str:
        """The local folder a scene's run writes into (the same on every pass for the same scene)."""
        return os.path.join(self.work, _safe(f"{os.path.splitext(name)[0]}@{identity.rsplit(':', 1)[-1][:16]}"))

    @staticmethod
    def staged(final: Workflow, folder: str) -> Workflow:
        """``final`` with every output moved into ``folder`` (``<folder>/<kind>/<file name>``; the
        folders are made here)."""
        def inside(kind: str, where: str) -> str:
            os.makedirs(os.path.join(folder, kind), exist_ok=True)
            return os.path.join(folder, kind, Location.of(where).name)

        # with_paths carries every output the workflow asks for (products and band names included).
        return replace(final, output=final.output.with_paths(inside))

    def publish(self, staged: Workflow, final: Workflow) -> None:
        """Move (or upload) every staged output to its final place; the result store last."""
        kinds = ("scene", "quicklook", "geotiff")
        pairs = [(getattr(staged.output, kind), getattr(final.output, kind)) for kind in kinds]
        finals = dict(final.output.products)
        pairs += [(spec.path, finals[key].path) for key, spec in staged.output.products]
        pairs.append((staged.output.zarr, final.output.zarr))  # last: a complete result store means all is in place
        for src, dst in pairs:
            if src is None or dst is None or not os.path.exists(src):
                continue
            target = Location.of(dst)
            if target.is_local:
                _move_into_place(src, target.path)
            else:
                _upload(src, target.text)

    # ------------------------------------------------------------------ done markers

    def _marker(self, name: str, identity: str) -> Location:
        return self.markers.join(_safe(f"{name}@{identity}") + ".json")

    def done_marker(self, name: str, identity: str) -> dict[str, Any] | None:
        """What the done marker of this scene says, or None where there is none."""
        marker = self._marker(name, identity)
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
            return None  # a marker cut short: the scene's outputs were published, but say so again
        return found if isinstance(found, dict) else None

    def mark_done(self, name: str, identity: str, result: str, report: dict[str, Any] | None) -> None:
        """Write the scene's done marker (atomically where local)."""
        text = json.dumps({"name": name, "identity": identity, "result": result, "report": report,
                           "host": socket.gethostname(), "finished": time.time()})
        marker = self._marker(name, identity)
        if marker.is_local:
            os.makedirs(os.path.dirname(marker.path), exist_ok=True)
            partial = f"{marker.path}.{os.getpid()}.part"
            with open(partial, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(partial, marker.path)
        else:
            fs, inner = _fs(marker.text)
            fs.pipe_file(inner, text.encode("utf-8"))


def _safe(name: str) -> str:
    """A file name from any scene name and identity (object-store tags hold quotes and dashes)."""
    return re.sub(r"[^A-Za-z0-9._@+-]", "_", name)


def _move_into_place(src: str, dst: str) -> None:
    """Put ``src`` at ``dst``: a file atomically; a folder by setting the old one aside first."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if not os.path.isdir(src):
        try:
            os.replace(src, dst)
        except OSError:  # another file system (a --work-dir elsewhere): copy beside, then rename
            partial = f"{dst}.{os.getpid()}.part"
            shutil.copyfile(src, partial)
            os.replace(partial, dst)
        return
    aside = f"{src}.replaced"
    if os.path.lexists(dst):
        remove_tree(aside)
        shutil.move(dst, aside)
    shutil.move(src, dst)
    remove_tree(aside)


def _fs(url: str) -> tuple[Any, str]:
    import fsspec  # noqa: PLC0415 - only remote outputs need fsspec and its plug-ins

    fs, inner = fsspec.core.url_to_fs(url)
    return fs, str(inner)


def _upload(src: str, dst: str) -> None:
    """Upload a file, or a store folder (metadata after chunks; stale objects of an older version removed)."""
    fs, inner = _fs(dst)
    if not os.path.isdir(src):
        fs.put_file(src, inner)
        return
    files = []
    for folder, _, names in os.walk(src):
        for name in names:
            files.append(os.path.relpath(os.path.join(folder, name), src).replace(os.sep, "/"))
    # zarr.json last, the group's (which says "complete") very last: a reader never sees a
    # store that claims more than its chunks hold.
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
