"""Sentence-embedding students against the off-the-shelf small models, side by side in one run (issue 20).

Teacher: all-mpnet-base-v2 (packaged). Distillation text: the movie-snippet training split (ASSETS.md split:
20% test = 2,114 held-out sentences, 10% of the rest validation, labels unused) plus a seeded sample of
``packaged:english_text`` (every packaged English sentence, de-duplicated against every evaluation text),
embedded by the teacher once into the store and read for every student, seed and epoch. Students, each over
``--seeds``:

- ``minilm6_distilled``: the pre-trained all-MiniLM-L6-v2 (384-d) distilled from mpnet (learned 384->768
  projector for the cosine term, dropped at export; the similarity-matrix term needs none);
- ``layers3_distilled``: 3 of the teacher's 12 layers, inherited, distilled;
- ``static_distilled``: the static student (teacher token vectors, PCA 256), distilled on the same text;

and, in the same run, ``minilm6_untouched`` (all-MiniLM-L6-v2 as downloaded) and ``model2vec`` (model2vec's
``distill`` of the teacher, PCA 256). Every model is scored by distill's evaluation on the same held-out
sentences (Spearman of pairwise similarities with the teacher, teacher-neighbour recall@10) and on the
packaged probe sets, which are outside the movie domain (probe accuracy of a logistic regression, and the
Spearman agreement with the teacher on each probe set's texts). Encode speed: each model's
sentence-transformers / model2vec ``encode`` at batch 32, measured back to back at the end of the run.

    python bench/embeddings.py                       # 3 seeds, appends to bench/RESULTS.md and writes
                                                     # bench/results/embeddings.json
    python bench/embeddings.py --seeds 0 1 --train-rows 100 --unlabeled 50 --epochs 0.5 --no-append  # smoke
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import append_results, machine, merged_with_earlier, write_json  # noqa: E402

TEACHER = "packaged:all-mpnet-base-v2"
M2V_ENCODE = "static_distilled_model2vec_encode"  # speed-pass name: the static student loaded by model2vec
LAYERS = [0, 5, 11]


def recipe(out: Path, student: dict, losses: list, epochs: float, lr: float, unlabeled: int, seed: int,
           baseline: bool, train_rows: int | None = None, anchor: float = 0.0,
           sources: list[str] | None = None, batch_size: int = 32, augment: int = 0,
           neighbour_group: int = 0, bf16: bool = False, dropout: float | None = None) -> dict:
    return {
        "task": "sentence-embedding",
        "output_dir": str(out),
        "teacher": {"model": TEACHER},
        "student": student,
        "data": {"source": "packaged", "name": "movie_snippets", "max_length": 64, "test_fraction": 0.2,
                 "validation_fraction": 0.1, "split_seed": 0, "max_train_examples": train_rows,
                 **({"unlabeled": "packaged:english_text", "unlabeled_sources": sources,
                     "max_unlabeled_examples": None if unlabeled < 0 else unlabeled} if unlabeled else {}),
                 **({"augment": {"variants": augment, "rate": 0.4}} if augment else {})},
        "losses": losses,
        "train": {"epochs": epochs, "batch_size": batch_size, "learning_rate": lr, "seed": seed,
                  "logging_steps": 100, "save_steps": 500, "eval_batch_size": 64, "report_to": [],
                  "group_by_length": not neighbour_group, "anchor": anchor,
                  **({"bf16": True} if bf16 else {}),
                  **({"dropout": dropout} if dropout is not None else {}),
                  **({"neighbour_group": neighbour_group} if neighbour_group else {})},
        "eval": {"baseline": baseline, "agreement_pairs": 20000, "retrieval_k": 10, "probe_rows": 1000,
                 "throughput_sentences": 256},
    }


def scores(run, emb_test: np.ndarray, probe_encode) -> dict:
    from distill.evaluation.embedding import probe_accuracy, retrieval_agreement, similarity_agreement

    out = {"spearman": similarity_agreement(emb_test, run._teacher_test, 20000),
           "recall_at_10": retrieval_agreement(emb_test, run._teacher_test, 10)}
    probes, ood = [], []
    for name, (texts, labels) in run._probe_sets().items():
        emb = probe_encode(texts)
        out[f"probe_{name}"] = probe_accuracy(emb, labels)
        out[f"spearman_{name}"] = similarity_agreement(emb, run._teacher_probe[name], 20000)
        probes.append(out[f"probe_{name}"])
        ood.append(out[f"spearman_{name}"])
    out["probe_mean"] = float(np.mean(probes))
    out["spearman_ood"] = float(np.mean(ood))
    return out


def probe_rows(run, probe_encode) -> np.ndarray:
    """Per held-out probe row of every probe set (in name order), whether the logistic probe on this
    encoder's vectors gets it right: the same rows for every encoder, for a paired test."""
    from distill.evaluation.embedding import probe_correct

    return np.concatenate([probe_correct(probe_encode(texts), labels)
                           for _, (texts, labels) in sorted(run._probe_sets().items())])


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


def st_throughput(encode, texts: list[str], min_seconds: float = 2.0) -> float:
    """Sentences per second of ``encode`` over ``texts``, repeated until ``min_seconds`` have passed (a
    static model encodes 1,024 sentences in a tenth of a second: one pass alone is mostly timer noise)."""
    encode(texts[:32])
    done, t0 = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - t0 < min_seconds:
        encode(texts)
        done += len(texts)
    return done / (time.perf_counter() - t0)


# name: (student section, losses, epochs flag, lr flag). MiniLM is 384-d against the teacher's 768: a cosine
# term through a learned projector pulled its own space off (Spearman 0.710 -> 0.678 in one epoch, measured
# 2026-11-30), the width-free similarity-matrix term moved it to 0.760; the 3-layer student has the
# teacher's width (no projector); the static student keeps the measured cosine + affinity recipe.
STUDENTS = {
    "minilm6_distilled": ({"model": "packaged:all-MiniLM-L6-v2"},
                          [{"name": "similarity_matrix", "weight": 1.0}], "epochs", "lr"),
    "layers3_distilled": ({"from_teacher": True, "layers": LAYERS},
                          [{"name": "embedding", "loss": "cosine"},
                           {"name": "similarity_matrix", "weight": 1.0}], "epochs", "lr"),
    "static_distilled": ({"static": True, "static_dim": 256},
                         [{"name": "embedding", "loss": "cosine"}, {"name": "affinity", "weight": 1.0}],
                         "static_epochs", "static_lr"),
}
# --minilm-loss: the MiniLM losses. "pca" regresses MiniLM's own 384-d vectors onto the teacher's top-384 PCA
# axes of the transfer text (cosine, no projector to drop at export) and keeps the similarity-matrix term;
# those axes keep the teacher's held-out similarities at Spearman 0.9998 (measured 2026-12-02 on the 18,557
# stored RT + movie embeddings), so the target loses nothing. "ranking" adds Jasper's per-anchor ranking hinge
# at 0.1 (Jasper weighs its similarity term 10x its triplet term) to the similarity-matrix term. "dense" gives
# MiniLM a kept linear layer to the teacher's 768 (student.dense, least-squares start) and trains it with a
# plain cosine term beside the similarity-matrix term.
MINILM_LOSSES = {
    "similarity_matrix": [{"name": "similarity_matrix", "weight": 1.0}],
    "pca": [{"name": "embedding", "loss": "cosine", "projector": "pca"},
            {"name": "similarity_matrix", "weight": 1.0}],
    "ranking": [{"name": "similarity_matrix", "weight": 1.0},
                {"name": "similarity_ranking", "weight": 0.1, "margin": 0.015}],
    "dense": [{"name": "embedding", "loss": "cosine"}, {"name": "similarity_matrix", "weight": 1.0}],
    "dense_sim20": [{"name": "embedding", "loss": "cosine"}, {"name": "similarity_matrix", "weight": 20.0}],
}
MINILM_LOSSES_TEXT = {"similarity_matrix": ["similarity_matrix"],
                      "pca": ["cosine onto the teacher's 384 PCA axes", "similarity_matrix"],
                      "ranking": ["similarity_matrix", "0.1 x similarity_ranking (margin 0.015)"],
                      "dense": ["cosine through its kept 384 -> 768 layer (student.dense)",
                                "similarity_matrix"],
                      "dense_sim20": ["cosine through its kept 384 -> 768 layer (student.dense)",
                                      "20 x similarity_matrix"]}


def reused_report(where: Path, r) -> dict | None:
    """The report of a finished run in ``where`` when it was made from the same recipe (output folder
    aside) and its student was exported; otherwise None (the run is trained)."""
    path = where / "report.json"
    if not (path.exists() and (where / "student").is_dir()):
        return None
    report = json.loads(path.read_text())
    mine, theirs = r.to_dict(), dict(report.get("recipe") or {})
    mine.pop("output_dir", None)
    theirs.pop("output_dir", None)
    return report if mine == theirs else None


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.3f}"


def metrics_of(m: dict) -> dict:
    """The bench's row fields from a run report's model entry."""
    out = {"spearman": m.get("spearman"), "recall_at_10": m.get("recall_at_k"),
           "probe_mean": m.get("probe_mean"), "spearman_ood": m.get("spearman_probe_sets_mean"),
           "parameters": m.get("parameters")}
    out.update({k: v for k, v in m.items() if k.startswith(("probe_", "spearman_")) and k not in
                ("probe_mean", "spearman_probe_sets_mean")})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--students", nargs="+", default=["minilm6_distilled", "static_distilled",
                                                      "layers3_distilled"], choices=list(STUDENTS))
    ap.add_argument("--unlabeled", type=int, default=20000,
                    help="sentences of packaged:english_text added to the movie training text (0: none, "
                         "-1: every sentence of --unlabeled-sources)")
    ap.add_argument("--unlabeled-sources", nargs="+", default=None,
                    help="data.unlabeled_sources: which packaged:english_text sources to sample from "
                         "(default: all), e.g. rotten_tomatoes for in-domain review text")
    ap.add_argument("--augment", type=int, default=0,
                    help="data.augment.variants of the transformer students: word-replaced variants of every "
                         "transfer sentence, embedded by the teacher (0: none)")
    ap.add_argument("--batch-size", type=int, default=32, help="batch of every student (in-batch pairs)")
    ap.add_argument("--epochs", type=float, default=2.0, help="epochs of the transformer students")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--neighbour-group", type=int, default=0,
                    help="train.neighbour_group of the transformer students: batches of groups of this many "
                         "teacher neighbours instead of length-grouped batches (0: off)")
    ap.add_argument("--bf16", action="store_true",
                    help="train.bf16 for the transformer students: bfloat16 autocast (on CPUs with AMX / "
                         "AVX512-BF16 about 1.9x the fp32 step speed, measured on an Intel Xeon 2026-12-03)")
    ap.add_argument("--minilm-loss", choices=list(MINILM_LOSSES), default="similarity_matrix",
                    help="losses of the MiniLM student (pca: cosine onto the teacher's PCA axes + "
                         "similarity matrix; ranking: similarity matrix + 0.1 x similarity_ranking; dense: a "
                         "kept linear layer to the teacher's width, cosine + similarity matrix; "
                         "dense_sim20: the same with the similarity matrix weighted 20, as in Jasper)")
    ap.add_argument("--dropout", type=float, default=None,
                    help="train.dropout of the transformer students (default: the model's own, 0.1)")
    ap.add_argument("--neighbourhood", type=float, default=0.0,
                    help="add the neighbourhood loss (KL over the similarities to the store's bank of "
                         "teacher vectors, temperature --neighbourhood-temperature) with this weight to the "
                         "MiniLM student's losses (0: off)")
    ap.add_argument("--neighbourhood-temperature", type=float, default=0.05)
    ap.add_argument("--static-epochs", type=float, default=3.0)
    ap.add_argument("--static-lr", type=float, default=0.05)
    ap.add_argument("--static-sif", type=float, default=None,
                    help="student.static_sif of the static student (SIF weights of its starting vectors)")
    ap.add_argument("--static-anchor", type=float, default=0.0,
                    help="train.anchor of the static student (pull toward its starting vectors; 0: off)")
    ap.add_argument("--train-rows", type=int, default=None, help="cap on movie training rows (smoke tests)")
    ap.add_argument("--skip-model2vec", action="store_true", help="smoke tests: leave the model2vec row out")
    ap.add_argument("--st-mse", action="store_true",
                    help="also train sentence-transformers' MSELoss recipe on the 3-layer init (first seed)")
    ap.add_argument("--out", default="bench/runs/bench_embeddings")
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows and summary entries of the models not run here from the existing "
                         "bench/results/embeddings.json (each kept row names the run it came from)")
    ap.add_argument("--reuse-reports", action="store_true",
                    help="read back a student/seed already finished in --out from the same recipe instead "
                         "of training it again (its training time is the earlier run's)")
    ap.add_argument("--speed-rounds", type=int, default=5, help="interleaved encode-speed rounds (median)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for training and evaluation")
    args = ap.parse_args()
    import torch
    from sentence_transformers import SentenceTransformer

    from distill.config import recipe_from_dict
    from distill.evaluation.significance import mean_interval
    from distill.packaged import resolve_model
    from distill.tasks.sentence_embedding import SentenceEmbeddingTask

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    rows: list[dict] = []
    timing: dict[str, float] = {}
    saw: dict[str, dict] = {}
    encoders: dict = {}  # name -> encode(texts) for the final speed pass
    probe_pair: dict | None = None  # static student vs model2vec on the probe rows
    run = report = None
    reused: list[str] = []  # students whose finished run was read back (--reuse-reports)
    for name in args.students:
        student, losses, ep_flag, lr_flag = STUDENTS[name]
        if name == "minilm6_distilled":
            losses = MINILM_LOSSES[args.minilm_loss]
            if args.neighbourhood:
                losses = [*losses, {"name": "neighbourhood", "weight": args.neighbourhood,
                                    "temperature": args.neighbourhood_temperature}]
            if args.minilm_loss.startswith("dense"):
                student = {**student, "dense": True}
        if name == "static_distilled" and args.static_sif:
            student = {**student, "static_sif": args.static_sif}
        for seed in args.seeds:
            # the untouched MiniLM is the MiniLM run's "before distillation" model: evaluated once
            baseline = name == "minilm6_distilled" and seed == args.seeds[0]
            r = recipe_from_dict(recipe(out / f"{name}_s{seed}", student, losses, getattr(args, ep_flag),
                                        getattr(args, lr_flag), args.unlabeled, seed, baseline,
                                        args.train_rows,
                                        args.static_anchor if name == "static_distilled" else 0.0,
                                        args.unlabeled_sources, args.batch_size,
                                        0 if name == "static_distilled" else args.augment,
                                        0 if name == "static_distilled" else args.neighbour_group,
                                        args.bf16 and name != "static_distilled",
                                        None if name == "static_distilled" else args.dropout))
            run = SentenceEmbeddingTask(r)
            t0 = time.perf_counter()
            report = reused_report(out / f"{name}_s{seed}", r) if args.reuse_reports else None
            if report is None:
                report = run.run()
                timing[f"{name}_s{seed}_total"] = time.perf_counter() - t0
            else:  # no total for a read-back seed: this run spent nothing on it
                reused.append(f"{name}_s{seed}")
                print(f"[bench] {name} seed {seed}: report of the same recipe read back from {out}")
            timing[f"{name}_s{seed}_train"] = report["training"]["student_trained"]["seconds"]
            if "store_build_seconds" in report:
                timing["store_build"] = report["store_build_seconds"]
            rows.append({"model": name, "seed": seed, **metrics_of(report["models"]["student_kd"])})
            saw[name] = {"sentences": report["data"]["distillation_sentences"],
                         "epochs": report["data"]["epochs"]}
            if baseline:
                rows.append({"model": "minilm6_untouched", "seed": None,
                             **metrics_of(report["models"]["student_untrained"])})
                mini = SentenceTransformer(resolve_model("packaged:all-MiniLM-L6-v2"), device="cpu")
                encoders["minilm6_untouched"] = lambda t, m=mini: m.encode(t, batch_size=32)
            out.mkdir(parents=True, exist_ok=True)  # what is done so far survives an interrupted bench
            (out / "rows_so_far.json").write_text(json.dumps({"rows": rows, "timing": timing}, indent=1))
            if seed == args.seeds[0]:
                st = SentenceTransformer(str(out / f"{name}_s{seed}" / "student"), device="cpu")
                encoders[name] = lambda t, m=st: m.encode(t, batch_size=32)
                if name == "static_distilled" and not args.skip_model2vec:
                    # the exported static student is also a model2vec model: time it in that library too
                    from model2vec import StaticModel

                    sm = StaticModel.from_pretrained(str(out / f"{name}_s{seed}" / "student"))
                    encoders[M2V_ENCODE] = lambda t, m=sm: m.encode(t, batch_size=32)
    assert run is not None and report is not None
    teacher = {**metrics_of(report["models"]["teacher"]), "spearman": 1.0, "recall_at_10": 1.0}
    rows.insert(0, {"model": "teacher", "seed": None, **teacher})
    teacher_st = SentenceTransformer(resolve_model(TEACHER), device="cpu")
    encoders["teacher"] = lambda t: teacher_st.encode(t, batch_size=32)
    test_texts = list(run.plan.splits.test["text"])

    # ---- sentence-transformers' MSE distillation of the 3-layer init (first seed) -------------------------
    if args.st_mse and "layers3_distilled" in args.students:
        seed = args.seeds[0]
        lay = out / f"layers3_distilled_s{seed}"
        kd_texts = list(run.kd_data()["text"])
        st_model, secs = st_mse_baseline(lay / "student_init", report["store"]["path"], kd_texts, args.epochs,
                                         args.lr, seed, out / "st_mse")
        timing["st_mse_train"] = secs
        rows.append({"model": "layers3_st_mse", "seed": seed,
                     **scores(run, st_model.encode(test_texts, batch_size=64),
                              lambda t: st_model.encode(t, batch_size=64)),
                     "parameters": sum(p.numel() for p in st_model.parameters())})
        encoders["layers3_st_mse"] = lambda t: st_model.encode(t, batch_size=32)

    # ---- model2vec ---------------------------------------------------------------------------------------
    if not args.skip_model2vec:
        from model2vec.distill import distill as m2v_distill

        t0 = time.perf_counter()
        m2v = m2v_distill(model_name=resolve_model(TEACHER), pca_dims=256, device="cpu")
        timing["model2vec_distill"] = time.perf_counter() - t0
        rows.append({"model": "model2vec", "seed": None, **scores(run, m2v.encode(test_texts), m2v.encode),
                     "parameters": int(np.prod(m2v.embedding.shape))})
        encoders["model2vec"] = lambda t: m2v.encode(t, batch_size=32)
        if "static_distilled" in args.students:
            # the probes, static student vs model2vec, paired on the same held-out probe rows; the student of
            # each seed as exported (the vectors its run evaluated), pooled over the seeds
            from distill.evaluation.significance import mcnemar_exact

            theirs = probe_rows(run, m2v.encode)
            ours = []
            for seed in args.seeds:
                path = out / f"static_distilled_s{seed}" / "student"
                exported = SentenceTransformer(str(path), device="cpu")
                ours.append(probe_rows(run, lambda t, m=exported: m.encode(t, batch_size=64)))
            test = mcnemar_exact(np.concatenate(ours), np.tile(theirs, len(ours)))
            probe_pair = {"static_accuracy": float(np.mean(ours)), "model2vec_accuracy": float(theirs.mean()),
                          "static_only": test["a_only"], "model2vec_only": test["b_only"], "p": test["p"],
                          "pairs": int(sum(len(o) for o in ours)),
                          "per_seed_diff": [float(o.mean() - theirs.mean()) for o in ours]}

    # ---- encode speed, back to back, interleaved rounds --------------------------------------------------
    sample = (test_texts * 2)[:1024]
    rounds = [{name: st_throughput(enc, sample) for name, enc in encoders.items()}
              for _ in range(args.speed_rounds)]
    speed = {name: float(np.median([r[name] for r in rounds])) for name in encoders}

    # ---- summary ------------------------------------------------------------------------------------------
    keys = ("spearman", "recall_at_10", "probe_mean", "spearman_ood")
    summary: dict = {"teacher": {**{k: teacher[k] for k in keys}, "sentences_per_s": speed["teacher"],
                                 "parameters": teacher["parameters"]}}
    names = [n for n in dict.fromkeys(r["model"] for r in rows) if n != "teacher"]
    for name in names:
        mine = [r for r in rows if r["model"] == name]
        entry: dict = {"seeds": [r["seed"] for r in mine if r["seed"] is not None],
                       "sentences_per_s": speed.get(name),
                       "x_teacher": (speed.get(name) or 0) / speed["teacher"],
                       "parameters": mine[0].get("parameters"), **saw.get(name, {})}
        for k in keys:
            vals = [r[k] for r in mine]
            mi = mean_interval(vals)
            entry[f"{k}_mean" if k != "probe_mean" else "probe_mean"] = mi["mean"]
            entry[f"{k}_std"] = mi.get("std")
        summary[name] = entry
    if "static_distilled" in summary and "model2vec" in speed:
        # the static student's speed in both libraries that load it, each round paired with model2vec's own
        entry = summary["static_distilled"]
        for path, key in (("sentence_transformers", "static_distilled"), ("model2vec_encode", M2V_ENCODE)):
            if key in speed:
                ratios = [r[key] / r["model2vec"] for r in rounds]
                entry[f"sentences_per_s_{path}"] = speed[key]
                entry[f"speed_vs_model2vec_{path}"] = {"median": float(np.median(ratios)),
                                                       "min": min(ratios), "max": max(ratios),
                                                       "rounds": len(ratios)}
        if M2V_ENCODE in speed:  # the faster of the two ways to serve it
            entry["sentences_per_s"] = max(speed[M2V_ENCODE], speed["static_distilled"])
            entry["x_teacher"] = entry["sentences_per_s"] / speed["teacher"]
    if probe_pair is not None:
        summary["static_distilled"]["probe_vs_model2vec"] = probe_pair
    untouched = summary.get("minilm6_untouched")
    if untouched and "minilm6_distilled" in summary:
        # distilled MiniLM minus untouched MiniLM, per seed, with the t-interval over seeds
        for k in keys:
            base = untouched[f"{k}_mean" if k != "probe_mean" else "probe_mean"]
            gain = mean_interval([r[k] - base for r in rows if r["model"] == "minilm6_distilled"])
            summary["minilm6_distilled"][f"{k}_gain_over_untouched"] = gain

    probe_names = sorted({k for r in rows for k in r if k.startswith("probe_") and k != "probe_mean"})
    head = (["model", "seeds", "Spearman", "recall@10", "OOD Spearman"]
            + [p.removeprefix("probe_").removesuffix("_snippets") for p in probe_names]
            + ["probe mean", "sent/s", "x teacher", "params"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(name: str, k: str) -> str:
        vals = [r[k] for r in rows if r["model"] == name and r.get(k) is not None]
        if not vals:
            return "-"
        if len(vals) == 1:
            return f"{vals[0]:.3f}"
        return f"{np.mean(vals):.3f} ± {np.std(vals, ddof=1):.3f}"

    for name in ["teacher"] + names:
        sps = (summary.get(name) or {}).get("sentences_per_s") or speed.get(name)
        seeds = summary.get(name, {}).get("seeds") or "-"
        lines.append("| " + " | ".join(
            [name, str(seeds), cell(name, "spearman"), cell(name, "recall_at_10"), cell(name, "spearman_ood")]
            + [cell(name, p) for p in probe_names]
            + [cell(name, "probe_mean"), "-" if sps is None else f"{sps:.0f}",
               "-" if sps is None else f"{sps / speed['teacher']:.1f}",
               f"{(summary.get(name) or summary['teacher']).get('parameters') or 0:,}"]) + " |")
    table = "\n".join(lines)
    held = len(test_texts)
    minilm_losses_text = MINILM_LOSSES_TEXT[args.minilm_loss] + (
        [f"{args.neighbourhood:g} x neighbourhood (store bank, T {args.neighbourhood_temperature:g})"]
        if args.neighbourhood else [])
    notes = [
        f"Held-out: {held} movie snippets (ASSETS.md split), 20,000 random pairs (Spearman) and recall@10 of "
        "the teacher's neighbours; OOD Spearman: agreement with the teacher on the probe sets' texts "
        "(amazon, nyt, tweet: outside the movie domain; movie snippets not trained on); probes: up to "
        "1,000 rows per packaged set, logistic regression 80/20.",
        "Distillation text per student: " + "; ".join(
            f"{n} {v['sentences']:,} sentences x {v['epochs']:g} epochs" for n, v in saw.items())
        + " (movie training snippets + "
        + ("every sentence" if args.unlabeled < 0 else f"{args.unlabeled:,} sentences")
        + " of packaged:english_text"
        + (f", sources {args.unlabeled_sources}" if args.unlabeled_sources else "")
        + (f"; plus {args.augment} word-replaced variant(s) of each of those sentences for the "
           "transformer students (data.augment, rate 0.4, the teacher's input-embedding neighbours)"
           if args.augment else "")
        + ").",
        f"Losses: MiniLM {' + '.join(minilm_losses_text)}; "
        "3-layer cosine + similarity_matrix; static cosine (learned "
        f"256 -> 768 projector) + affinity. Transformers: batch {args.batch_size}, lr {args.lr}, "
        "max length 64, "
        + (f"dropout {args.dropout:g} while training (train.dropout), " if args.dropout is not None else "")
        + ("bf16 autocast (train.bf16), " if args.bf16 else "")
        + (f"batches of groups of {args.neighbour_group} teacher neighbours (train.neighbour_group); "
           if args.neighbour_group else "length-grouped batches; ")
        + f"static: lr {args.static_lr}, PCA 256, {args.static_epochs:g} epochs, "
        f"train.anchor {args.static_anchor:g}, static_sif {args.static_sif}. "
        f"Mean ± std over seeds {args.seeds}; "
        "untouched MiniLM and model2vec are "
        "deterministic (one row).",
        *([f"MiniLM-L6 distilled minus untouched, mean over seeds with 95% t-interval: {gains}"]
          if (gains := ", ".join(
              f"{k} {g['mean']:+.3f} ({_fmt(g['ci95'][0])}..{_fmt(g['ci95'][1])})"
              for k in keys
              if (g := summary.get("minilm6_distilled", {}).get(f"{k}_gain_over_untouched")) is not None))
          else []),  # no line when MiniLM was not trained in this run
        *([f"Read back from runs already finished in {args.out} with the same recipe (not retrained): "
           + ", ".join(reused)] if reused else []),
        "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timing.items()),
        "Encode speed: each library's encode, batch 32, 1,024 held-out sentences (repeated for at least "
        "2 s), median of "
        f"{args.speed_rounds} interleaved rounds after a warm-up, at the end of the run. "
        f"Machine: {machine()}.",
    ]
    static = summary.get("static_distilled", {})
    if (pp := static.get("probe_vs_model2vec")) is not None:
        notes.append(f"Probes, static student vs model2vec, paired on the same held-out probe rows pooled "
                     f"over the seeds ({pp['pairs']:,} pairs; model2vec's rows repeat per seed): "
                     f"{pp['static_accuracy']:.4f} vs {pp['model2vec_accuracy']:.4f}, right only for the "
                     f"static student {pp['static_only']}, only for model2vec {pp['model2vec_only']}, exact "
                     f"McNemar p = {pp['p']:.2g}; per seed "
                     + ", ".join(f"{d:+.4f}" for d in pp["per_seed_diff"]) + ".")
    for path, label in (("sentence_transformers", "sentence-transformers' encode"),
                        ("model2vec_encode", "model2vec's encode (StaticModel.from_pretrained)")):
        if (ratio := static.get(f"speed_vs_model2vec_{path}")) is not None:
            notes.append(f"Static student through {label}: "
                         f"{static[f'sentences_per_s_{path}']:.0f} sentences/s, "
                         f"{ratio['median']:.2f}x model2vec's model per round (median; "
                         f"{ratio['min']:.2f}..{ratio['max']:.2f} over {ratio['rounds']} rounds); the table "
                         "shows the faster way.")
    body = table + "\n\n" + "\n".join(f"- {n}" for n in notes)
    print(body)
    if not args.no_append:
        if args.merge:
            rows, summary = merged_with_earlier("embeddings", rows, summary, key="model")
        write_json("embeddings", args.seeds, rows, summary)
        append_results("Sentence-embedding students vs the off-the-shelf small models (bench/embeddings.py)",
                       body)


if __name__ == "__main__":
    main()
