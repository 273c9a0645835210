"""Sentence-embedding distillation, side by side in one run (issue 9).

Teacher: all-mpnet-base-v2 (packaged). Text: the movie-snippet set (ASSETS.md split: 20% test, 2,114
held-out sentences; 10% of the rest for validation; the remaining ~7,600 sentences are the distillation text,
labels unused). In the same run:

- ours, static: `student.static` (token vectors from the teacher, PCA to 256 like model2vec's default),
  trained on the teacher's embeddings from the store;
- ours, 3-layer transformer: layers of the teacher, trained on the teacher's embeddings from the store;
- model2vec's `distill` of the same teacher (PCA 256): the static baseline;
- sentence-transformers' own MSE distillation (`losses.MSELoss`, its trainer) of the same 3-layer init on the
  same teacher embeddings (read from our store), same epochs / batch / learning rate;
- the pre-trained all-MiniLM-L6-v2, untouched, for scale.

Every model is scored by the same functions on the same held-out sentences and probe rows (distill's
evaluation module); encode speed is measured at the end, back to back, through each library's own encode at
batch 32, tokenising included.

    python bench/embeddings.py                 # full run, appends to bench/RESULTS.md
    python bench/embeddings.py --train-rows 500 --epochs 1 --no-append   # smoke test
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import append_results, machine  # noqa: E402

TEACHER = "packaged:all-mpnet-base-v2"
LAYERS = [0, 5, 11]


def recipe(out: Path, student: dict, losses: list, epochs: float, lr: float, train_rows: int | None,
           seed: int) -> dict:
    return {
        "task": "sentence-embedding",
        "output_dir": str(out),
        "teacher": {"model": TEACHER},
        "student": student,
        "data": {"source": "packaged", "name": "movie_snippets", "max_length": 64, "test_fraction": 0.2,
                 "validation_fraction": 0.1, "split_seed": 0, "max_train_examples": train_rows},
        "losses": losses,
        "train": {"epochs": epochs, "batch_size": 32, "learning_rate": lr, "seed": seed, "logging_steps": 50,
                  "save_steps": 500, "eval_batch_size": 64, "report_to": []},
        "eval": {"baseline": True, "agreement_pairs": 20000, "retrieval_k": 10, "probe_rows": 1000,
                 "throughput_sentences": 512},
    }


def scores(run, emb_test: np.ndarray, probe_encode) -> dict:
    from distill.evaluation.embedding import probe_accuracy, retrieval_agreement, similarity_agreement

    out = {"spearman": similarity_agreement(emb_test, run._teacher_test, 20000),
           "recall_at_10": retrieval_agreement(emb_test, run._teacher_test, 10)}
    probes = []
    for name, (texts, labels) in run._probe_sets().items():
        out[f"probe_{name}"] = probe_accuracy(probe_encode(texts), labels)
        probes.append(out[f"probe_{name}"])
    out["probe_mean"] = float(np.mean(probes))
    return out


def st_mse_baseline(init_dir: Path, store_path: str, texts: list[str], epochs: float, lr: float, seed: int,
                    out: Path):
    """sentence-transformers' own distillation recipe: MSELoss to the (stored) teacher embeddings."""
    import datasets
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MSELoss
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    from distill.store import TeacherStore

    store = TeacherStore.open(store_path)
    import torch

    target = store.fetch(torch.arange(len(texts))).embeddings.float().numpy()
    first = Transformer(str(init_dir), max_seq_length=64)
    model = SentenceTransformer(modules=[first, Pooling(first.get_embedding_dimension(), "mean"),
                                         Normalize()], device="cpu")
    ds = datasets.Dataset.from_dict({"text": texts, "label": target.tolist()})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out / "checkpoints"), num_train_epochs=epochs, per_device_train_batch_size=32,
        learning_rate=lr, warmup_ratio=0.1, seed=seed, save_strategy="no", report_to="none", logging_steps=50,
        use_cpu=True,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds, loss=MSELoss(model))
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    model.save(str(out / "student"))
    return model, seconds


def st_throughput(encode, texts: list[str]) -> float:
    encode(texts[:32])
    t0 = time.perf_counter()
    encode(texts)
    return len(texts) / (time.perf_counter() - t0)


def speed_only(out: Path, no_append: bool) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    from distill.packaged import load_packaged_data, resolve_model

    torch.set_num_threads(2)
    texts = list(load_packaged_data("movie_snippets")["text"])[:1024]
    models = {"teacher (all-mpnet-base-v2)": resolve_model(TEACHER),
              f"ours: 3-layer {LAYERS}, distilled": out / "layers" / "student",
              f"sentence-transformers MSELoss, 3-layer {LAYERS}": out / "st_mse" / "student",
              "ours: static (256-d), distilled": out / "static" / "student",
              "all-MiniLM-L6-v2 (pre-trained, no distillation)": resolve_model("packaged:all-MiniLM-L6-v2")}
    encoders = {name: SentenceTransformer(str(path), device="cpu") for name, path in models.items()
                if Path(path).exists()}
    speeds = {name: st_throughput(lambda t, m=m: m.encode(t, batch_size=32), texts)
              for name, m in encoders.items()}
    try:
        from model2vec.distill import distill as m2v_distill

        m2v = m2v_distill(model_name=resolve_model(TEACHER), pca_dims=256, device="cpu")
        speeds["model2vec distill (256-d)"] = st_throughput(lambda t: m2v.encode(t, batch_size=32), texts)
    except ImportError:
        pass
    base = speeds["teacher (all-mpnet-base-v2)"]
    lines = ["| model | sentences/s | x teacher |", "|---|---|---|"]
    lines += [f"| {n} | {v:.0f} | {v / base:.1f} |" for n, v in speeds.items()]
    body = "\n".join(lines) + ("\n\n- 1,024 movie snippets, each library's encode at batch 32, tokenising "
                               "included, torch threads 2, after a warm-up batch, back to back on a quiet "
                               f"machine ({machine()}).")
    print(body)
    if not no_append:
        append_results("Sentence-embedding encode speed, quiet re-timing (bench/embeddings.py --speed-only)",
                       body)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=float, default=3.0,
                    help="epochs for the 3-layer students (ours and ST's)")
    ap.add_argument("--static-epochs", type=float, default=5.0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--static-lr", type=float, default=0.05)
    ap.add_argument("--static-projector", default="auto", choices=["auto", "pca"],
                    help="auto: a learned 256->768 projector (dropped at export); pca: the teacher reduced "
                         "to 256-d by a basis fitted on its stored embeddings, the static vectors start in "
                         "that basis")
    ap.add_argument("--train-rows", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/runs/bench_embeddings")
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=["static", "layers", "model2vec", "st_mse", "minilm"])
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training and evaluation")
    ap.add_argument("--speed-only", action="store_true",
                    help="only re-time encoding of the models a previous full run saved under --out (run it "
                         "on a quiet machine: timings taken while other jobs run are noise)")
    args = ap.parse_args()
    if args.speed_only:
        return speed_only(Path(args.out), args.no_append)
    import torch

    from distill.config import recipe_from_dict
    from distill.packaged import resolve_model
    from distill.tasks.sentence_embedding import SentenceEmbeddingTask

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    rows: dict[str, dict] = {}
    timing: dict[str, float] = {}
    encoders = {}  # name -> encode(texts) for the final speed pass

    # ---- ours: 3-layer transformer from the teacher's layers -----------------------------------------------
    layers_recipe = recipe_from_dict(recipe(out / "layers", {"from_teacher": True, "layers": LAYERS},
                                            [{"name": "embedding", "loss": "cosine"},
                                             {"name": "affinity", "weight": 1.0}],
                                            args.epochs, args.lr, args.train_rows, args.seed))
    run = SentenceEmbeddingTask(layers_recipe)
    t0 = time.perf_counter()
    report = run.run()
    timing["ours_3layer_total"] = time.perf_counter() - t0
    timing["store_build"] = report.get("store_build_seconds", 0.0)
    timing["ours_3layer_train"] = report["training"]["student_trained"]["seconds"]
    from sentence_transformers import SentenceTransformer

    from distill.data.splits import load_splits  # noqa: F401  (documented split, via the run's plan)

    test_texts = list(run.plan.splits.test["text"])
    teacher_st = SentenceTransformer(resolve_model(TEACHER), device="cpu")
    encoders["teacher"] = lambda t: teacher_st.encode(t, batch_size=32)
    rows["teacher (all-mpnet-base-v2)"] = {
        **{k: report["models"]["teacher"][k] for k in ("spearman", "recall_at_k")},
        "probe_mean": report["models"]["teacher"]["probe_mean"],
        **{k: v for k, v in report["models"]["teacher"].items() if k.startswith("probe_")},
        "parameters": report["models"]["teacher"]["parameters"]}
    rows["teacher (all-mpnet-base-v2)"]["recall_at_10"] = rows["teacher (all-mpnet-base-v2)"].pop(
        "recall_at_k")
    ours3 = SentenceTransformer(str(out / "layers" / "student"), device="cpu")
    rows[f"ours: 3-layer {LAYERS}, distilled"] = {**scores(run, ours3.encode(test_texts, batch_size=64),
                                                          lambda t: ours3.encode(t, batch_size=64)),
                                                   "parameters": report["models"]["student_kd"]["parameters"]}
    u = report["models"].get("student_untrained", {})
    rows[f"3-layer {LAYERS} before distillation"] = {
        "spearman": u.get("spearman"), "recall_at_10": u.get("recall_at_k"),
        "probe_mean": u.get("probe_mean"), "parameters": u.get("parameters"),
        **{k: v for k, v in u.items() if k.startswith("probe_") and k != "probe_mean"}}
    encoders[f"ours: 3-layer {LAYERS}, distilled"] = lambda t: ours3.encode(t, batch_size=32)
    kd_texts = list(run.plan.splits.train["text"])  # the store's rows, in order (no unlabelled extra here)
    store_path = report["store"]["path"]

    # ---- sentence-transformers' MSE distillation of the same init ------------------------------------------
    if "st_mse" not in args.skip:
        st_model, secs = st_mse_baseline(out / "layers" / "student_init", store_path, kd_texts, args.epochs,
                                         args.lr, args.seed, out / "st_mse")
        timing["st_mse_train"] = secs
        rows[f"sentence-transformers MSELoss, 3-layer {LAYERS}"] = {
            **scores(run, st_model.encode(test_texts, batch_size=64),
                     lambda t: st_model.encode(t, batch_size=64)),
            "parameters": sum(p.numel() for p in st_model.parameters())}
        encoders[f"sentence-transformers MSELoss, 3-layer {LAYERS}"] = (
            lambda t: st_model.encode(t, batch_size=32))

    # ---- ours: static --------------------------------------------------------------------------------------
    if "static" not in args.skip:
        sdir = out / ("static" if args.static_projector == "auto" else f"static_{args.static_projector}")
        static_recipe = recipe_from_dict(recipe(sdir, {"static": True, "static_dim": 256},
                                                [{"name": "embedding", "loss": "cosine",
                                                  "projector": args.static_projector},
                                                 {"name": "affinity", "weight": 1.0}],
                                                args.static_epochs, args.static_lr, args.train_rows,
                                                args.seed))
        srun = SentenceEmbeddingTask(static_recipe)
        t0 = time.perf_counter()
        sreport = srun.run()
        timing["ours_static_total"] = time.perf_counter() - t0
        timing["ours_static_train"] = sreport["training"]["student_trained"]["seconds"]
        ours_static = SentenceTransformer(str(sdir / "student"), device="cpu")
        static_name = f"ours: static (256-d, projector {args.static_projector}), distilled"
        rows[static_name] = {
            **scores(run, ours_static.encode(test_texts, batch_size=64),
                     lambda t: ours_static.encode(t, batch_size=64)),
            "parameters": sreport["models"]["student_kd"]["parameters"]}
        su = sreport["models"].get("student_untrained", {})
        rows[f"ours: static (256-d, projector {args.static_projector}), raw teacher vectors"] = {
            "spearman": su.get("spearman"), "recall_at_10": su.get("recall_at_k"),
            "probe_mean": su.get("probe_mean"), "parameters": su.get("parameters"),
            **{k: v for k, v in su.items() if k.startswith("probe_") and k != "probe_mean"}}
        encoders[static_name] = lambda t: ours_static.encode(t, batch_size=32)

    # ---- model2vec -----------------------------------------------------------------------------------------
    if "model2vec" not in args.skip:
        from model2vec.distill import distill as m2v_distill

        t0 = time.perf_counter()
        m2v = m2v_distill(model_name=resolve_model(TEACHER), pca_dims=256, device="cpu")
        timing["model2vec_distill"] = time.perf_counter() - t0
        rows["model2vec distill (256-d)"] = {**scores(run, m2v.encode(test_texts), m2v.encode),
                                             "parameters": int(np.prod(m2v.embedding.shape))}
        encoders["model2vec distill (256-d)"] = lambda t: m2v.encode(t, batch_size=32)

    # ---- pre-trained MiniLM-L6, untouched ------------------------------------------------------------------
    if "minilm" not in args.skip:
        mini = SentenceTransformer(resolve_model("packaged:all-MiniLM-L6-v2"), device="cpu")
        rows["all-MiniLM-L6-v2 (pre-trained, no distillation)"] = {
            **scores(run, mini.encode(test_texts, batch_size=64), lambda t: mini.encode(t, batch_size=64)),
            "parameters": sum(p.numel() for p in mini.parameters())}
        encoders["all-MiniLM-L6-v2 (pre-trained, no distillation)"] = lambda t: mini.encode(t, batch_size=32)

    # ---- encode speed, back to back ------------------------------------------------------------------------
    sample = (test_texts * 2)[:1024]
    speed = {name: st_throughput(enc, sample) for name, enc in encoders.items()}
    t_speed = speed["teacher"]
    speed["teacher (all-mpnet-base-v2)"] = speed.pop("teacher")

    probe_names = sorted({k for r in rows.values() for k in r
                          if k.startswith("probe_") and k != "probe_mean"})
    head = ["model", "Spearman", "recall@10"] \
        + [p.removeprefix("probe_").removesuffix("_snippets") for p in probe_names] \
        + ["probe mean", "sent/s", "x teacher", "params"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(v, d=3):
        return "-" if v is None else f"{v:.{d}f}"

    for name, r in rows.items():
        sps = speed.get(name)
        lines.append("| " + " | ".join([name, f(r.get("spearman")), f(r.get("recall_at_10"))]
                                       + [f(r.get(p)) for p in probe_names]
                                       + [f(r.get("probe_mean")), "-" if sps is None else f"{sps:.0f}",
                                          "-" if sps is None else f"{sps / t_speed:.1f}",
                                          f"{r.get('parameters') or 0:,}"]) + " |")
    table = "\n".join(lines)
    notes = [
        f"Held-out: {len(test_texts)} movie snippets (ASSETS.md split), 20,000 random pairs; distillation "
        f"text: {len(kd_texts)} training snippets (labels unused); probes: up to 1,000 rows per packaged "
        "set, rows that are training text excluded, logistic regression 80/20.",
        f"3-layer students: epochs {args.epochs}, batch 32, lr {args.lr}, seed {args.seed}, max length 64; "
        "ours: embedding (cosine) + affinity (T=0.05) from the fp16 store; ST: MSELoss on the same stored "
        "teacher vectors.",
        f"static: epochs {args.static_epochs}, lr {args.static_lr}, 256-d, projector "
        f"{args.static_projector}.",
        "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timing.items()),
        "Encode speed: each library's encode, batch 32, 1,024 sentences, torch threads 2, after a warm-up, "
        f"measured back to back at the end of the run. Machine: {machine()}.",
    ]
    body = table + "\n\n" + "\n".join(f"- {n}" for n in notes)
    print(body)
    if not args.no_append:
        append_results("Sentence-embedding distillation (bench/embeddings.py)", body)


if __name__ == "__main__":
    main()
