"""Record every store key and stage fingerprint the shipped recipes produce, so a change to the orchestration
code can be checked to keep existing stores and finished runs valid.

Each shipped recipe runs end to end on the packaged models and data with small budgets (the overrides below),
into a fresh output directory and a fresh store root; then every stage record (``distill_done.json``) under
both is read, and every entry of the store root (stores, evaluation caches, teacher continuations) is listed
by name. The names and fingerprints depend only on the recipe, the data and the teacher weights, never on
timing, so two versions of the code that key stages alike give the same JSON.

    python scripts/stage_fingerprints.py OUT.json [--only demo_sentiment ...]
    python scripts/stage_fingerprints.py OUT.json --compare tests/data/stage_fingerprints.json --teachers DIR

Needs the packaged assets (``bash scripts/setup.sh``); about 15 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

SMALL = ["eval.latency_repeats=1", "eval.latency_batch_sizes=[1]", "export.onnx=false"]
OVERRIDES = {
    "demo_sentiment": ["data.max_train_examples=96", "teacher.finetune.epochs=0.05", "train.max_steps=2"],
    "ssld_label_free": ["data.max_train_examples=96", "teacher.finetune.epochs=0.05", "train.max_steps=2"],
    "well_read_students": ["data.max_train_examples=64", "teacher.finetune.epochs=0.05", "train.max_steps=2",
                           "data.max_length=32"],
    "demo_embeddings": ["data.max_train_examples=64", "data.max_unlabeled_examples=64", "train.max_steps=2",
                        "eval.probe_sets=[]",
                        "eval.agreement_pairs=500", "eval.throughput_sentences=32", "data.max_length=32"],
    # the shipped LM recipe as it was recorded (a CSV, kd alone, DDK, linear schedule), then made small
    "causal_lm_smollm2": ["data.source=files", "data.name=null",
                          "losses=[{name: kd, weight: 1.0, temperature: 1.0, divergence: forward_kl}]",
                          "causal_lm.ddk={interval: 25, alpha: 0.5, eval_chunks: 4}",
                          "causal_lm.curve_steps=[]",
                          "train.lr_scheduler=linear", "train.warmup_ratio=0.05", "train.extra_args={}",
                          "train.max_steps=2", "train.batch_size=2", "causal_lm.chunk_length=32",
                          "causal_lm.ddk.interval=1", "causal_lm.ddk.eval_chunks=1",
                          "train.eval_batch_size=4"],
    "vision_mnist": ["teacher.finetune.epochs=1", "train.epochs=1", "vision.datafree=null"],
}


def lm_corpus(path: Path) -> None:
    """A small deterministic two-domain corpus from packaged text (the shipped LM recipe reads a CSV)."""
    import pandas as pd

    from distill.packaged import load_packaged_data

    rows = load_packaged_data("movie_snippets")
    texts = list(rows["text"])[:60]
    pd.DataFrame({"text": texts, "domain": ["a" if i % 2 else "b" for i in range(len(texts))]}).to_csv(
        path, index=False)


def records(root: Path) -> dict[str, str]:
    """relative path of every stage record under ``root`` -> its fingerprint."""
    out = {}
    for name in ("distill_done.json", "distill_finetune.json"):  # stage records, the fine-tuned teacher's
        for marker in sorted(root.rglob(name)):
            fingerprint = json.loads(marker.read_text()).get("fingerprint")
            out[f"{marker.parent.relative_to(root)}:{name}"] = fingerprint
    return out


FINE_TUNED = ("demo_sentiment", "ssld_label_free", "well_read_students", "vision_mnist")


def stable_weights() -> None:
    """Replace every digest of trained or loaded *weights* by a digest of the weight files' names and sizes,
    in whichever version of the code is loaded. Training on CPU threads is not bit-reproducible (and differs
    between CPUs), so the keys downstream of a fine-tuned teacher only compare across runs this way; what is
    still checked is everything else that goes into them: recipe, data, settings, and how keys are built."""
    import hashlib
    import importlib

    def names_and_sizes(folder) -> str | None:
        folder = Path(folder)
        files = sorted(f for f in folder.glob("*") if f.is_file() and not f.name.startswith("distill_")
                       and f.suffix in (".safetensors", ".bin", ".json"))
        if not files:
            return None
        return hashlib.sha256(json.dumps([(f.name, f.stat().st_size) for f in files]).encode()).hexdigest()

    def model_digest(path, *args, **kwargs) -> str:
        from distill.packaged import resolve_model

        return names_and_sizes(Path(resolve_model(str(path)))) or f"unhashable:{path}"

    patches = {  # module -> {name: replacement}; modules of the current code and of the code before tasks/
        "distill.stages": {"hash_files": names_and_sizes, "model_fingerprint": model_digest},
        "distill.teachers.sources": {"model_fingerprint": model_digest,
                                     "weights_digest": lambda f, *a: model_digest(f)},
        "distill.pipeline": {"_hash_files": names_and_sizes, "_teacher_fingerprint": model_digest},
        "distill.pipelines.embedding": {"_hash_files": names_and_sizes},
        "distill.pipelines.causal_lm": {"_hash_files": names_and_sizes},
        "distill.pipelines.vision": {"_weights_digest": lambda f: model_digest(f)},
    }
    for module, names in patches.items():
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        for attr, fn in names.items():
            if hasattr(mod, attr):
                setattr(mod, attr, fn)
    for module in ("distill.tasks.text_classification", "distill.tasks.sentence_embedding",
                   "distill.tasks.causal_lm", "distill.tasks.image_classification"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        if hasattr(mod, "hash_files"):
            mod.hash_files = names_and_sizes


def record_recipe(name: str, work: Path, teachers: Path) -> dict[str, object]:
    import dataclasses
    from importlib import resources

    from distill.config import Recipe, load_recipe
    try:
        from distill.runner import run
    except ImportError:  # the code before the task layer (to record the fingerprints a change must keep)
        from distill.pipeline import run

    out, stores = work / name / "run", work / name / "stores"
    overrides = [f"output_dir={out}", f"store.dir={stores}", *SMALL, *OVERRIDES[name]]
    if "select" in {f.name for f in dataclasses.fields(Recipe)}:
        # the recipe's losses as written, as before the selection existed
        overrides.append("select.enabled=false")
    from distill.config import DataConfig

    if "labeled_fraction" in {f.name for f in dataclasses.fields(DataConfig)}:
        # every training row labelled, as the recipes were recorded (the demo now keeps 10% of the labels)
        overrides.append("data.labeled_fraction=null")
    if name in FINE_TUNED:
        # training on CPU threads is not bit-reproducible: a teacher fine-tuned once is shared by the runs
        # that are compared (its record's fingerprint is checked when it is reused)
        overrides.append(f"teacher.finetune.output_dir={teachers / name}")
    if name == "causal_lm_smollm2":
        corpus = work / name / "corpus.csv"
        corpus.parent.mkdir(parents=True, exist_ok=True)
        lm_corpus(corpus)
        overrides.append(f"data.train={corpus}")
    recipe = load_recipe(str(resources.files("distill") / "recipes" / f"{name}.yaml"), overrides)
    report = run(recipe)
    return {
        "stages": records(out),
        "teacher_stages": records(teachers / name) if (teachers / name).exists() else {},
        "store_stages": records(stores),
        "store_entries": sorted(p.name for p in stores.iterdir()) if stores.exists() else [],
        "store_key": report.get("store_key"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--only", nargs="*", default=None, help="recipe names (default: all shipped)")
    parser.add_argument("--compare", default=None, help="a JSON written earlier: exit 1 when they differ")
    parser.add_argument("--teachers", default=None,
                        help="folder of the fine-tuned teachers shared by the runs compared (default: fresh)")
    parser.add_argument("--stable-weights", action="store_true",
                        help="digest weights by file names and sizes (comparable across runs and machines)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.stable_weights:
        stable_weights()
    # the fine-tuned teachers and evaluation caches must not come from the user's cache
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DISTILL_CACHE"] = str(Path(tmp) / "cache")
        if args.teachers:
            teachers = Path(args.teachers)
        elif args.stable_weights:
            # the image teacher's stage fingerprint includes its folder: the same path in every run compared
            teachers = Path(tempfile.gettempdir()) / "distill-stage-fingerprints-teachers"
            shutil.rmtree(teachers, ignore_errors=True)
        else:
            teachers = Path(tmp) / "teachers"
        got = {name: record_recipe(name, Path(tmp), teachers) for name in (args.only or list(OVERRIDES))}
    if args.stable_weights and not args.teachers:
        shutil.rmtree(teachers, ignore_errors=True)
    Path(args.out).write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    if args.compare:
        want = json.loads(Path(args.compare).read_text())
        diff = {k: {"before": want.get(k), "after": got.get(k)} for k in got if want.get(k) != got.get(k)}
        if diff:
            print(json.dumps(diff, indent=2), file=sys.stderr)
            return 1
        print(f"same store keys and stage fingerprints for {', '.join(got)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
