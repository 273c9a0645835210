"""The stage machinery every task shares: fingerprints, stage records, resume, process state, store location.

A run is a chain of stages (fine-tuned teacher, student start, teacher-output store, trained students). Each
stage's folder is written whole (:func:`write_stage`) with a record naming the *fingerprint* of everything
that went into it; a later run with the same fingerprint reuses the folder (:func:`stage_done`), a different
one rebuilds it. Training stages checkpoint as they go and resume from the last checkpoint of the *same*
fingerprint (:func:`stage_checkpoints`, :func:`train_resuming`). Under several processes the main process
writes shared files and the others wait (:func:`process_state`).

The fingerprint formats here are what existing stores and finished runs were keyed with: changing one makes
every user rebuild, so they change only on purpose (tests/data/stage_fingerprints.json pins them).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distill.files import atomic_dir

Log = Callable[[str], None]
DONE = "distill_done.json"
"""The record a finished stage folder holds: its fingerprint (and the training record of training stages)."""


def print_log(msg: str) -> None:
    print(f"[distill] {msg}", flush=True)


class StoreKeyUnknown(Exception):
    """A run's store key depends on something only the teacher can produce and that is not on disk yet (the
    causal-LM teacher's own continuations); the message says what is missing."""


def quiet_libraries() -> None:
    """Progress bars only on a terminal; transformers' load reports only when something is wrong."""
    import datasets
    import transformers

    from distill.training.args import progress_enabled

    if not progress_enabled():
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()  # its "Loading weights" bar, on every model load
    transformers.logging.set_verbosity_error()


# -- fingerprints ------------------------------------------------------------------------------------------
def fingerprint(obj: Any) -> str:
    """16 hex digits of the sha256 of ``obj`` as sorted JSON (anything not JSON by its ``str``)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def hash_files(folder: Path) -> str | None:
    """sha256 over a model folder's weight files and config.json (names and bytes, sorted); None when it holds
    none."""
    files = sorted(list(folder.glob("*.safetensors")) + list(folder.glob("*.bin"))
                   + list(folder.glob("config.json")))
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def model_fingerprint(path: str, model: Any = None, revision: str | None = None,
                      load: Callable[[], Any] | None = None) -> str:
    """Hash of a Hugging Face model's weight files (no load needed). A hub id is hashed through its local
    snapshot (downloaded once by the Hub client, cached after); only when that fails are the loaded weights
    hashed (``model``, or ``load()``)."""
    p = Path(path)
    if not p.is_dir():
        try:
            from huggingface_hub import snapshot_download

            p = Path(snapshot_download(path, revision=revision,
                                       allow_patterns=["*.json", "*.safetensors", "*.bin"]))
        except Exception:  # offline, gated, or not a hub repo: fall back to the weights themselves
            p = Path(path)
    digest = hash_files(p) if p.is_dir() else None
    if digest is not None:
        return digest
    if model is None and load is not None:
        model = load()
    if model is None:
        raise RuntimeError(f"cannot fingerprint the teacher {path!r}: no local files and no loaded model")
    from distill.store import fingerprint_model

    return fingerprint_model(model)


# -- processes ---------------------------------------------------------------------------------------------
def process_state():
    """The accelerate process state: one process normally, several under `accelerate launch` / torchrun.
    Shared files are written by the main process only; the others wait for it."""
    from accelerate import PartialState

    from distill.training.args import cpu_only

    # without cpu=True accelerate leaves a CPU-only torchrun launch undistributed: every process would see
    # itself as rank 0 of 1 and build the whole store (the same choice as TrainingArguments' use_cpu)
    return PartialState(cpu=cpu_only())


def end_processes() -> None:
    """Close the process group of a multi-process launch once its work has finished; no-op otherwise.

    Without it gloo's worker threads are still alive when the interpreter shuts down, and a process can
    abort there ("terminate called without an active exception", pytorch #190489), failing a run whose
    work was done. Call it only after success: after an exception the peers may still wait in a
    collective, and torchrun stops them anyway."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# -- stage records -----------------------------------------------------------------------------------------
def stage_done(folder: Path, fp: str) -> dict[str, Any] | None:
    """The record of a finished stage built with fingerprint ``fp`` (None: build it again)."""
    marker = folder / DONE
    if not marker.exists():
        return None
    record = json.loads(marker.read_text())
    return record if record.get("fingerprint") == fp else None


def write_stage(folder: Path, fp: str, write: Callable[[Path], Any],
                training: dict[str, Any] | None = None) -> None:
    """Write a stage's folder whole or not at all: ``write`` fills it under a temporary name, the record
    naming its fingerprint goes in last, then the folder is renamed into place."""
    record: dict[str, Any] = {"fingerprint": fp}
    if training is not None:
        record["training"] = training

    def fill(tmp: Path) -> None:
        write(tmp)
        (tmp / DONE).write_text(json.dumps(record, default=str))

    atomic_dir(folder, fill)


def stage_checkpoints(out: Path, name: str, fp: str, log: Log) -> Path:
    """The checkpoint folder of stage ``name``; checkpoints left by a different recipe are discarded (a
    resumed run must continue the same training, never a stale one)."""
    ckpt = out / "checkpoints" / name
    stamp = ckpt / "distill_stage.json"
    state = process_state()
    with state.main_process_first():
        if ckpt.exists() and (not stamp.exists() or json.loads(stamp.read_text()).get("fingerprint") != fp):
            log(f"{name}: discarding checkpoints of a different recipe in {ckpt}")
            shutil.rmtree(ckpt, ignore_errors=True)
        ckpt.mkdir(parents=True, exist_ok=True)
        if state.is_main_process:
            stamp.write_text(json.dumps({"fingerprint": fp}))
    return ckpt


def train_resuming(trainer: Any, ckpt: Path, name: str, resume: bool,
                   log: Log) -> tuple[dict[str, Any], Any]:
    """Train, continuing from the stage's last checkpoint when there is one (and ``resume`` allows it);
    returns the stage's training record (time, steps, loss, the trainer's log history) and the trained
    model: the trainer's own, or under FSDP an unsharded copy holding the gathered trained weights (on every
    process, so evaluation and export run as after DDP)."""
    from transformers.trainer_utils import get_last_checkpoint

    from distill.training import fsdp

    last = get_last_checkpoint(str(ckpt)) if ckpt.exists() and resume else None
    if last:
        log(f"{name}: resuming from {last}")
    plain = fsdp.plain_copy(trainer)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=last)
    info = {"seconds": time.perf_counter() - t0, "steps": result.global_step,
            "train_loss": result.training_loss, "log_history": trainer.state.log_history}
    return info, fsdp.gather_trained(trainer, plain)


# -- where stores live -------------------------------------------------------------------------------------
def store_root(cfg: Any) -> Path:
    """The folder that holds the teacher-output stores (and the teacher's evaluation caches and generations):
    the recipe's ``store.dir``, else ``$DISTILL_CACHE/stores`` or ``~/.cache/distill/stores``."""
    if cfg.dir:
        return Path(cfg.dir)
    from distill.store import default_store_root

    return default_store_root()
