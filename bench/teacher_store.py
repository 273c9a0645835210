"""Benchmark (issue: teacher-output store): what training from the store costs against plain fine-tuning.

Measured in one run, each mode in its own process so peak RSS is its own:
  (a) plain student fine-tuning on labels (transformers Trainer, the model's own loss)
  (b) online KD: the teacher runs every step (distill, store disabled)
  (c) KD from the store (distill), plus the one-off cost of building the store
  (d) TextBrewer GeneralDistiller, same teacher, student, data, loss (online teacher, its only mode)
Teacher: all-mpnet-base-v2 classifier (the fine-tuned one from bench/text_classification.py when present).
Student: all-MiniLM-L6-v2 or its 3-layer copy. Data: the movie-snippet train split (first N rows).

    python bench/teacher_store.py --rows 1920 --student minilm3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
CACHE = Path(os.environ.get("DISTILL_HOME", Path.home() / ".cache" / "distill")) / "bench"
LAYERS = {"minilm6": None, "minilm3": [1, 3, 5]}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_everything(args):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distill.config import DataConfig
    from distill.data import load_splits
    from distill.packaged import resolve_model
    from distill.students import student_from_teacher

    torch.manual_seed(0)
    splits = load_splits(DataConfig(source="packaged", name="movie_snippets", max_length=64))
    train = splits.train.head(args.rows).reset_index(drop=True)
    fine_tuned = CACHE / "teacher-mpnet-snippets"
    tpath = (str(fine_tuned) if (fine_tuned / "config.json").exists()
             else resolve_model("packaged:all-mpnet-base-v2"))
    spath = resolve_model("packaged:all-MiniLM-L6-v2")
    labels = {"num_labels": 2, "id2label": {0: "negative", 1: "positive"},
              "label2id": {"negative": 0, "positive": 1}}
    teacher = (AutoModelForSequenceClassification.from_pretrained(tpath, **labels).eval()
               if args.needs_teacher else None)
    student = AutoModelForSequenceClassification.from_pretrained(spath, **labels)
    if LAYERS[args.student]:
        student = student_from_teacher(student, LAYERS[args.student])
    return (tpath, teacher, AutoTokenizer.from_pretrained(tpath), student,
            AutoTokenizer.from_pretrained(spath), train)


def child(args) -> dict:
    import torch
    from transformers import DataCollatorWithPadding, Trainer

    from distill.config import LossConfig, TrainConfig
    from distill.data import DistillCollator, to_dataset
    from distill.losses import LossContext, build_losses
    from distill.training import Distiller, DistillTrainer
    from distill.training.args import training_arguments

    args.needs_teacher = args.mode in ("online", "store_build", "textbrewer")
    tpath, teacher, ttok, student, stok, train = load_everything(args)
    cfg = TrainConfig(epochs=1, batch_size=32, learning_rate=1e-4, logging_steps=1000, save_steps=100000,
                      seed=0)
    out = f"/tmp/distill_bench_store/{args.mode}"
    result: dict = {"mode": args.mode, "rows": len(train)}
    losses = [LossConfig(name="kd", weight=0.5, params={"temperature": 2.0}),
              LossConfig(name="ce", weight=0.5)]
    ctx = LossContext(num_classes=2, same_tokenizer=False)

    def store_key_and_root():
        from distill.store import StoreSpec, fingerprint_rows, fingerprint_tokenizer, store_key

        spec = StoreSpec(capture=("logits",), topk=0, dtype="float16")
        from distill.stages import model_fingerprint

        key = store_key(teacher=model_fingerprint(tpath), tokenizer=fingerprint_tokenizer(ttok),
                        data=fingerprint_rows(list(train["text"])), max_length=64, task="bench", spec=spec)
        return spec, key, CACHE / "stores"

    if args.mode == "plain":
        ds = to_dataset(train, stok, max_length=64).select_columns(["input_ids", "attention_mask",
                                                                     "token_type_ids", "labels"])
        trainer = Trainer(model=student, args=training_arguments(cfg, out, evaluate=False, save_strategy="no",
                                                                 remove_unused_columns=True),
                          train_dataset=ds, data_collator=DataCollatorWithPadding(stok))
        m = trainer.train().metrics
        result["epoch_seconds"] = m["train_runtime"]
    elif args.mode in ("online", "store"):
        store = None
        if args.mode == "store":
            from distill.store import TeacherStore

            spec, key, root = store_key_and_root()
            store = TeacherStore.open(root / key)
        ds = to_dataset(train, stok, ttok if args.mode == "online" else None, max_length=64)
        trainer = DistillTrainer(model=student,
                                 args=training_arguments(cfg, out, evaluate=False, save_strategy="no"),
                                 train_dataset=ds,
                                 data_collator=DistillCollator(stok, ttok if args.mode == "online" else None),
                                 distiller=Distiller(build_losses(losses, ctx)), teacher=teacher, store=store)
        result["epoch_seconds"] = trainer.train().metrics["train_runtime"]
    elif args.mode == "store_build":
        import shutil

        from distill.data import DistillCollator as C
        from distill.models import forward_outputs, model_inputs
        from distill.store import TeacherStore, build_store

        spec, key, root = store_key_and_root()
        shutil.rmtree(root / key, ignore_errors=True)
        ds = to_dataset(train, ttok, max_length=64)
        collate = C(ttok)

        @torch.no_grad()
        def compute(idx):
            return forward_outputs(teacher, model_inputs(collate([ds[i] for i in idx])))

        t0 = time.perf_counter()
        build_store(root, key, spec, compute, num_examples=len(ds), batch_size=64, progress=False)
        result["build_seconds"] = time.perf_counter() - t0
        info = TeacherStore.open(root / key).info()
        result["bytes_per_example"] = info.get("bytes_per_example")
        result["store_bytes"] = info.get("bytes_on_disk") or info.get("bytes")
    elif args.mode == "textbrewer":
        import textbrewer
        from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig

        ds_s = to_dataset(train, stok, ttok, max_length=64)
        collate = DistillCollator(stok, ttok)
        loader = torch.utils.data.DataLoader(ds_s, batch_size=32, shuffle=True, collate_fn=collate)

        class TwoBatches:
            # TextBrewer feeds the same batch to both models; a dict with 'teacher'/'student' keys keeps
            # each model on its own tokenizer (its documented way for different vocabularies)
            def __iter__(self):
                for b in loader:
                    yield {"teacher": {"input_ids": b["teacher_input_ids"],
                                       "attention_mask": b["teacher_attention_mask"]},
                           "student": {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"],
                                       "token_type_ids": b["token_type_ids"], "labels": b["labels"]}}

            def __len__(self):
                return len(loader)

        def adaptor_t(batch, out):
            return {"logits": out.logits}

        def adaptor_s(batch, out):
            return {"logits": out.logits, "losses": out.loss}

        tconf = TrainingConfig(device="cpu", output_dir=out, ckpt_frequency=0, log_dir=out)
        dconf = DistillationConfig(temperature=2.0, hard_label_weight=0.5, kd_loss_weight=0.5,
                                   kd_loss_type="ce")
        distiller = GeneralDistiller(tconf, dconf, teacher, student, adaptor_t, adaptor_s)
        opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
        t0 = time.perf_counter()
        with distiller:
            distiller.train(opt, TwoBatches(), num_epochs=1, scheduler_class=None, callback=None)
        result["epoch_seconds"] = time.perf_counter() - t0
        result["textbrewer_version"] = getattr(textbrewer, "__version__", "?")
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1920, help="training rows per epoch (60 steps at batch 32)")
    ap.add_argument("--student", default="minilm3", choices=list(LAYERS))
    ap.add_argument("--modes", nargs="+", default=["store_build", "plain", "online", "store", "textbrewer"])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.mode = args.child
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    results = {}
    for mode in args.modes:
        cmd = [sys.executable, __file__, "--child", mode, "--rows", str(args.rows), "--student", args.student]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "CI": "1"})
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            print(proc.stdout[-3000:], proc.stderr[-3000:])
            results[mode] = {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
            continue
        results[mode] = json.loads(line[0][7:])
        print(mode, results[mode], flush=True)

    def val(mode, key):
        return results.get(mode, {}).get(key)

    a, b, c, d = (val(m, "epoch_seconds") for m in ("plain", "online", "store", "textbrewer"))

    def ratio(x, y):
        return f"{x / y:.2f}" if x and y else "n/a"

    rows = [f"| {m} | {round(val(m, 'epoch_seconds') or 0, 1) or '-'} | "
            f"{val(m, 'peak_rss_mb') and round(val(m, 'peak_rss_mb'))} |"
            for m in ("plain", "online", "store", "textbrewer")]
    body = (
        f"Student {args.student}, teacher all-mpnet-base-v2 classifier, {args.rows} movie-snippet rows per "
        f"epoch, batch 32, max length 64, loss 0.5 KD (T=2) + 0.5 CE; store dense fp16.\n\n"
        "| mode | epoch seconds | peak RSS MB |\n|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"- (b) online / (a) plain: {ratio(b, a)} (target >= 3)\n"
        f"- (c) store / (a) plain: {ratio(c, a)} (target <= 1.15)\n"
        "- peak RSS (c) / (a): "
        f"{ratio(val('store', 'peak_rss_mb'), val('plain', 'peak_rss_mb'))} (target <= 1.10)\n"
        f"- (c) store / (d) TextBrewer: {ratio(c, d)} (target <= 0.4)\n"
        "- store build (one-off): "
        f"{val('store_build', 'build_seconds') and round(val('store_build', 'build_seconds'), 1)} s, "
        f"{round(val('store_build', 'bytes_per_example') or 0, 2)} bytes per example\n"
        + ("".join(f"- {m}: {r['error']}\n" for m, r in results.items() if "error" in r))
    )
    if all("error" in r for r in results.values()):
        print(body)
        sys.exit("every mode failed; nothing appended to RESULTS.md")
    sys.path.insert(0, str(HERE))
    from _common import append_results

    append_results("Teacher-output store: epoch cost vs plain fine-tuning (bench/teacher_store.py)", body)


if __name__ == "__main__":
    main()
