"""The model of a run, as the client sees it: a ``.keras`` file named by path and sha256,
whose facts a worker works out. The client itself never needs TensorFlow for a model file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tilepipe.location import Location
from tilepipe.model.facts import ModelFacts, model_facts
from tilepipe.model.loader import model_sha256
from tilepipe.sources.identity import content_sha256

__all__ = ["ModelFile", "facts_on_worker", "model_file"]


@dataclass(frozen=True, slots=True)
class ModelFile:
    """A ``.keras`` file the workers load: its path and sha256.

    ``name`` is the file as the user named it, for messages; None where the user gave a
    model object (``path`` is then a temporary file, which would tell them nothing).
    """

    path: str
    sha256: str
    name: str | None = None

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> ModelFile:
        """The ``.keras`` file at ``path``, checked and hashed (once: pass the result on, not the path).

        Raises :class:`~tilepipe.errors.ModelError` naming the file where it is not a readable ``.keras`` file.
        """
        if isinstance(path, ModelFile):
            return path
        path = os.fspath(path)
        return cls(path, model_sha256(path), name=path)

    @property
    def shown(self) -> str:
        """The path as recorded in provenance: absolute where it is local."""
        location = Location.of(self.path)
        return location.path if location.is_local else self.path

    def __fspath__(self) -> str:
        # A path-like: everything that takes a model path takes one, and none hashes it again.
        return self.path


@contextlib.contextmanager
def model_file(model: Any) -> Iterator[ModelFile]:
    """The model as a file: a :class:`ModelFile` or ``.keras`` path as it is, a ``keras.Model`` saved to a temporary
    folder for the block."""
    if isinstance(model, (str, os.PathLike)):
        yield ModelFile.of(model)
        return
    # A model object: TensorFlow is in this process already, since the caller built it.
    from tilepipe.model.loader import resolve_model  # noqa: PLC0415 - a model object means TensorFlow is here

    keras_model = resolve_model(model)
    with tempfile.TemporaryDirectory(prefix="tilepipe-model-") as folder:
        path = os.path.join(folder, "model.keras")
        keras_model.save(path)
        yield ModelFile(path, content_sha256(path))


# What workers said of models this process ran before, by (sha256, input bands).
_FACTS: dict[tuple[str, int | None], ModelFacts] = {}


def facts_on_worker(client: Any, model: ModelFile, bands: int | None, *, gpu: bool = False) -> ModelFacts:
    """The model's facts, worked out by a worker (which keeps the model loaded for the tasks to come).

    Asked once per model and process: facts asked without ``bands`` (ingest) are those for the
    model's own input bands, which a run on a scene of that many bands then reuses.
    """
    facts = _FACTS.get((model.sha256, bands))
    if facts is None:
        facts = client.submit(
            model_facts, model.path, model.sha256, bands, model.name, pure=False,
            resources={"GPU": 1} if gpu else None,
        ).result()
        _FACTS[(model.sha256, bands)] = facts
        if bands is None and facts.interior:
            _FACTS[(model.sha256, facts.in_channels)] = facts
    return facts
