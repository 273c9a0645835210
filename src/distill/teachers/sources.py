"""Where a run's teacher comes from, behind one interface.

A task asks its :class:`TeacherSource` for the model (loaded once, kept until :meth:`~TeacherSource.release`),
for a fingerprint of its weights (what store keys and stage fingerprints are built from; no load when the
weights are files) and for the name the report shows. It never branches on what kind of teacher it has:

- :class:`PretrainedTeacher`: a Hugging Face model folder or hub id, loaded by a given loader (a sequence
  classifier, a causal LM, a sentence-transformers encoder);
- :class:`ImageTeacher`: a torch image classifier, built in code (``packaged:cnn-*``, ``module:callable``) or
  loaded from a folder the run trained it into;
- :class:`BlackBoxTeacher`: a model behind an API that only answers queries: it has answers, not weights.
"""

from __future__ import annotations

import gc
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from distill._dataclass_io import RecipeError
from distill.stages import model_fingerprint, process_state


class TeacherSource(ABC):
    """One teacher: ``model()`` loads it on first use (on the process's device, in eval mode, frozen by the
    trainer), ``release()`` frees it, ``fingerprint()`` names its weights, ``path`` is what reports show."""

    def __init__(self, path: str, log: Callable[[str], None] = print):
        self.path = path
        self.log = log
        self._model: torch.nn.Module | None = None
        self._fingerprint: str | None = None

    @abstractmethod
    def load(self) -> torch.nn.Module:
        """Load the weights (called by :meth:`model` once)."""

    @abstractmethod
    def compute_fingerprint(self) -> str:
        """A digest of the weights (called by :meth:`fingerprint` once)."""

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def model(self) -> torch.nn.Module:
        if self._model is None:
            self.log(f"loading the teacher from {self.path}")
            self._model = self.load()
        return self._model

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = self.compute_fingerprint()
        return self._fingerprint

    def release(self) -> None:
        """Free the weights (students train from the store); :meth:`model` loads them again if asked."""
        self._model = None
        gc.collect()


class PretrainedTeacher(TeacherSource):
    """A Hugging Face model (folder or hub id): ``loader(path)`` returns it; moved to the process's device and
    put in eval mode. The fingerprint hashes its weight files without loading them (a hub id through its local
    snapshot), and falls back to the loaded weights only when there are no files."""

    def __init__(self, path: str, loader: Callable[[str], torch.nn.Module], revision: str | None = None,
                 log: Callable[[str], None] = print):
        super().__init__(path, log)
        self.loader = loader
        self.revision = revision

    def load(self) -> torch.nn.Module:
        return self.loader(self.path).eval().to(process_state().device)

    def compute_fingerprint(self) -> str:
        return model_fingerprint(self.path, self._model, self.revision, load=self.model)


def weights_digest(folder: Path, skip: tuple[str, ...] = ()) -> str:
    """sha256 over every file of a saved model folder (names and bytes), except the names in ``skip``."""
    h = hashlib.sha256()
    for f in sorted(folder.glob("*")):
        if f.is_file() and f.name not in skip:
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def tensor_digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class ImageTeacher(TeacherSource):
    """A torch image classifier. Built in code it stays in memory (a random-init or code-built model could not
    be rebuilt identically, and image models are small); loaded from a trained folder it can be released and
    loaded again."""

    def __init__(self, path: str, model: torch.nn.Module | None = None,
                 loader: Callable[[str], torch.nn.Module] | None = None, skip: tuple[str, ...] = (),
                 log: Callable[[str], None] = print):
        super().__init__(path, log)
        self._model = model.eval() if model is not None else None
        self.loader = loader
        self.skip = skip

    def load(self) -> torch.nn.Module:
        if self.loader is None:
            raise RuntimeError("an image teacher built in code has no folder to load it from")
        return self.loader(self.path).eval()

    def release(self) -> None:
        if self.loader is not None:  # a code-built teacher could not be rebuilt: it stays
            super().release()

    def compute_fingerprint(self) -> str:
        p = Path(self.path)
        if p.is_dir():
            return weights_digest(p, self.skip)
        return tensor_digest(*[v.float().cpu() for v in self.model().state_dict().values()])


class BlackBoxTeacher(TeacherSource):
    """A teacher that can only be queried (``teacher.blackbox``): its outputs are its answers, kept in the
    response store by the labelling step; it has no weights to load or run."""

    def __init__(self, name: str, log: Callable[[str], None] = print):
        super().__init__(f"blackbox:{name}", log)

    def load(self) -> torch.nn.Module:
        raise RecipeError("teacher.blackbox: a black-box teacher has no weights; its answers are what the "
                          "students learn from (they go through the teacher-output store)")

    def compute_fingerprint(self) -> str:
        return self.path

    def release(self) -> None:
        pass


def describe_teacher(source: Any) -> str:
    """What a report says the teacher is."""
    return getattr(source, "path", str(source))
