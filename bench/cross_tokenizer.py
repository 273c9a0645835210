"""Benchmark (issue: cross-tokenizer and multi-teacher): a causal-LM student on *another tokenizer* than its
teacher, distilled with ``alm`` or ``hybrid_kl`` against the same student trained on the text alone.

Teacher: SmolLM2-135M-Instruct (packaged GGUF, dequantised). Student: the teacher's layers
[0, 6, 12, 18, 24, 29] moved onto a new byte-level BPE tokenizer trained here on the corpus's training windows
(``--vocab`` tokens); each new token's input embedding is the mean of the teacher's embeddings of that token's
text under the teacher's tokenizer (output layer tied). Text: the packaged ``three_domains`` corpus. Per
seed, one run of the recipe: KD student (``alm`` or ``hybrid_kl``, + ``ce``) and no-KD student (``ce``), the
same steps; held-out bits per byte for teacher and both students (every byte of each held-out window scored
by each model). Across seeds: mean and spread, and a sign-flip test over held-out windows on the per-window
NLL averaged over the seeds (the windows are the same text for every seed and both students).

    python bench/cross_tokenizer.py --seeds 0 1 2 --steps 120 [--loss hybrid_kl]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path

from _common import append_results, mean_std, write_json

from distill.config import recipe_from_dict
from distill.tasks import task_for

CACHE = Path(os.environ.get("DISTILL_HOME", Path.home() / ".cache" / "distill")) / "bench"
LAYERS = [0, 6, 12, 18, 24, 29]


def build_student(out: Path, vocab: int, chunk_length: int) -> Path:
    """The teacher's layer subset on a new tokenizer (built once; reused when ``out`` exists)."""
    if (out / "config.json").exists():
        return out
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    from distill.data.text_lm import split_rows
    from distill.packaged import load_packaged_corpus, resolve_model
    from distill.students.inherit import student_from_teacher

    tdir = resolve_model("packaged:smollm2-135m-instruct")
    t_tok = AutoTokenizer.from_pretrained(tdir)
    df = load_packaged_corpus("three_domains")
    # the tokenizer learns from the training text only: the recipe's own split of the same windows
    from distill.data.cross_rows import text_windows

    windows, names = text_windows(df, t_tok, chunk_length, "domain")
    train, _, _ = split_rows(windows, len(names), 0.1, 0.05, 0)
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator([w["text"] for w in train], trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    s_tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|endoftext|>",
                                    eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    teacher = AutoModelForCausalLM.from_pretrained(tdir, dtype=torch.float32)
    student = student_from_teacher(teacher, LAYERS)
    t_emb = teacher.get_input_embeddings().weight.detach()
    n = len(s_tok)
    new = torch.empty(n, t_emb.shape[1])
    for i in range(n):
        text = s_tok.decode([i])
        ids = t_tok(text, add_special_tokens=False)["input_ids"] if text else []
        new[i] = t_emb[ids].mean(0) if ids else t_emb.mean(0)
    student.resize_token_embeddings(n)
    with torch.no_grad():
        student.get_input_embeddings().weight.copy_(new)
    student.tie_weights()
    special = s_tok.convert_tokens_to_ids("<|endoftext|>")
    student.config.update({"bos_token_id": special, "eos_token_id": special, "pad_token_id": special,
                           "vocab_size": n})
    student.generation_config.update(bos_token_id=special, eos_token_id=special, pad_token_id=special)
    out.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(out)
    s_tok.save_pretrained(out)
    return out


def recipe(student: Path, seed: int, steps: int, out: Path, loss: str, weight: float, tau: float,
           chunk_length: int, topk: int) -> dict:
    kd = {"name": loss, "weight": weight, **({"tau": tau} if loss == "alm" else {})}
    return {
        "task": "causal-lm", "output_dir": str(out),
        "teacher": {"model": "packaged:smollm2-135m-instruct"},
        "student": {"model": str(student)},
        "data": {"source": "packaged", "name": "three_domains", "test_fraction": 0.1,
                 "validation_fraction": 0.05},
        "losses": [kd, {"name": "ce", "weight": 1.0}],
        "select": {"enabled": False},
        "causal_lm": {"chunk_length": chunk_length, "domain_column": "domain"},
        "store": {"dir": str(CACHE / "stores"), "topk": topk if loss == "hybrid_kl" else 0},
        "train": {"max_steps": steps, "batch_size": 4, "learning_rate": 3e-4, "seed": seed,
                  "lr_scheduler": "constant_with_warmup", "warmup_ratio": 0.0,
                  "extra_args": {"warmup_steps": 10}, "logging_steps": 25, "save_steps": 1000,
                  "eval_batch_size": 8},
    }


def main() -> None:
    import numpy as np

    from distill.evaluation.significance import compare_nll, mean_interval

    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--loss", choices=["alm", "hybrid_kl"], default="alm")
    ap.add_argument("--weight", type=float, default=1.0, help="weight of the cross-tokenizer loss (ce: 1.0)")
    ap.add_argument("--tau", type=float, default=1.0, help="alm's temperature")
    ap.add_argument("--topk", type=int, default=32, help="hybrid_kl: teacher top-k next tokens per position")
    ap.add_argument("--chunk-length", type=int, default=128)
    ap.add_argument("--out", default="runs/bench_cross_tokenizer")
    args = ap.parse_args()

    t0 = time.perf_counter()
    student = build_student(CACHE / f"smollm2-l6-bpe{args.vocab}", args.vocab, args.chunk_length)
    reports, nll, info = [], {"student_kd": [], "student_no_kd": []}, {}
    for seed in args.seeds:
        task = task_for(recipe_from_dict(recipe(student, seed, args.steps, Path(args.out) / f"seed{seed}",
                                                args.loss, args.weight, args.tau, args.chunk_length,
                                                args.topk)))
        reports.append(task.run())
        for role in nll:
            nll[role].append(task.chunk_nll[role][0])
        info = {"bytes": task.test_bytes(), "cross": task.report["cross_tokenizer"]}
    rows = [{"seed": seed, "model": role, "bits_per_byte": r["models"][role]["bits_per_byte"],
             "perplexity_own_tokens": r["models"][role]["perplexity"]}
            for seed, r in zip(args.seeds, reports) for role in ("teacher", "student_kd", "student_no_kd")]
    bpb = {role: [r["models"][role]["bits_per_byte"] for r in reports]
           for role in ("teacher", "student_kd", "student_no_kd")}
    mean_kd = np.mean(np.asarray(nll["student_kd"], dtype=np.float64), axis=0)
    mean_base = np.mean(np.asarray(nll["student_no_kd"], dtype=np.float64), axis=0)
    pooled = compare_nll(mean_kd, mean_base, info["bytes"])  # per byte: weights are the windows' bytes
    per_seed_p = [r["significance"]["student_kd_vs_student_no_kd"]["p"] for r in reports]
    gain = mean_interval([k - b for k, b in zip(bpb["student_kd"], bpb["student_no_kd"])])
    summary = {
        "teacher_bpb": statistics.mean(bpb["teacher"]),
        "kd_bpb_mean": statistics.mean(bpb["student_kd"]),
        "kd_bpb_std": statistics.stdev(bpb["student_kd"]) if len(reports) > 1 else None,
        "no_kd_bpb_mean": statistics.mean(bpb["student_no_kd"]),
        "no_kd_bpb_std": statistics.stdev(bpb["student_no_kd"]) if len(reports) > 1 else None,
        "seeds": len(reports),
        "kd_vs_no_kd_p": pooled["p"],
        "kd_vs_no_kd_bpb_difference": pooled["difference"] / math.log(2),
        "kd_vs_no_kd_bpb_ci95": [x / math.log(2) for x in pooled["ci95"]],
        "kd_vs_no_kd_per_seed_p": per_seed_p,
        "kd_minus_no_kd_bpb_over_seeds": gain,
        "loss": (f"alm (tau {args.tau}, weight {args.weight}) + ce 1.0" if args.loss == "alm"
                 else f"hybrid_kl (top-{args.topk}, weight {args.weight}) + ce 1.0"),
        "steps": args.steps,
        "student_vocab": args.vocab,
        "tokens_per_group": {k: info["cross"][k] for k in ("student_tokens_per_group",
                                                          "teacher_tokens_per_group")},
    }
    table = "\n".join(f"| {name} | {mean_std(bpb[role])} |" for name, role in (
        ("teacher SmolLM2-135M-Instruct (its own tokenizer, 30 layers)", "teacher"),
        (f"student, {args.loss} + ce (another tokenizer, 6 layers)", "student_kd"),
        ("student, ce only (same init and steps)", "student_no_kd")))
    lo, hi = summary["kd_vs_no_kd_bpb_ci95"]
    body = (f"Teacher SmolLM2-135M-Instruct; student: its layers {LAYERS} on a new byte-level BPE tokenizer "
            f"of {args.vocab} tokens trained on the training windows, embeddings initialised from the "
            "teacher's (mean over each token's teacher pieces). Text: packaged three_domains, windows of "
            f"{args.chunk_length} student tokens; {args.steps} steps of batch 4, lr 3e-4 constant after 10 "
            f"warm-up steps, for both students. KD: {summary['loss']}; no-KD: ce. Seeds {args.seeds}. "
            f"Held-out {len(info['bytes'])} windows, {sum(info['bytes']):,} bytes; student tokens per "
            "aligned group "
            f"{summary['tokens_per_group']['student_tokens_per_group']:.2f}, teacher "
            f"{summary['tokens_per_group']['teacher_tokens_per_group']:.2f}.\n\n"
            "| model | held-out bits per byte (mean ± sd over seeds) |\n|---|---|\n" + table + "\n\n"
            f"KD - no-KD: {summary['kd_vs_no_kd_bpb_difference']:+.4f} bits per byte on the per-window NLL "
            f"averaged over the seeds (95% bootstrap interval {lo:+.4f} to {hi:+.4f}, sign-flip p over "
            f"windows {pooled['p']:.4g}); per-seed p {', '.join(f'{p:.3g}' for p in per_seed_p)}. "
            f"Script wall time {time.perf_counter() - t0:.0f} s.")
    append_results(f"Cross-tokenizer LM distillation: {args.loss} vs text only (bench/cross_tokenizer.py)",
                   body)
    write_json("cross_tokenizer", args.seeds, rows, summary)


if __name__ == "__main__":
    main()
