"""Language-model evaluation: held-out perplexity per domain, throughput, and sample generations."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from distill.data.text_lm import CausalLMCollator


def scored_bytes(rows: Sequence[dict[str, Any]], tokenizer: Any) -> list[int]:
    """UTF-8 bytes of the text each row's scored tokens spell (every token after the first that is not a
    prompt token): the denominator of bits per byte, which, unlike perplexity, does not depend on the
    tokenizer."""
    out = []
    for row in rows:
        start = max(1, int(row.get("prompt_length") or 0))
        ids = [int(i) for i in row["input_ids"][start:]]
        out.append(len(tokenizer.decode(ids, skip_special_tokens=False).encode("utf-8")) if ids else 0)
    return out


def bits_per_byte(nll_nats: float, n_bytes: float) -> float | None:
    return nll_nats / (math.log(2) * n_bytes) if n_bytes > 0 else None


@torch.no_grad()
def perplexity(model: torch.nn.Module, rows: Sequence[dict[str, Any]], pad_id: int,
               domain_names: Sequence[str], batch_size: int = 16,
               vocab_size: int | None = None, row_bytes: Sequence[int] | None = None) -> dict[str, Any]:
    """Token-weighted next-token perplexity over ``rows`` (prompt tokens excluded), overall and per domain,
    plus scoring throughput (tokens per second of the forward passes), and under ``chunk_nll`` /
    ``chunk_tokens`` each row's summed NLL (nats) and scored tokens, in row order, for paired tests between
    models (:func:`distill.evaluation.significance.compare_nll`). With ``row_bytes`` (each row's scored
    bytes, :func:`scored_bytes`) also bits per byte, overall and per domain."""
    model.eval()
    device = next(model.parameters()).device
    collate = CausalLMCollator(pad_id)
    n_dom = len(domain_names)
    nll = torch.zeros(n_dom, dtype=torch.float64)
    count = torch.zeros(n_dom, dtype=torch.float64)
    seen_tokens, seconds = 0, 0.0
    chunk_nll: list[float] = []
    chunk_tokens: list[int] = []
    for start in range(0, len(rows), batch_size):
        b = collate(list(rows[start:start + batch_size]))
        t0 = time.perf_counter()
        logits = model(input_ids=b["input_ids"].to(device),
                       attention_mask=b["attention_mask"].to(device)).logits
        if device.type == "cuda":  # kernels run asynchronously: time them, not their launch
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - t0
        seen_tokens += int(b["attention_mask"].sum())
        if vocab_size is not None:
            logits = logits[..., :vocab_size]
        labels = b["labels"].to(device)
        tok = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100,
                                                reduction="none").double().cpu()
        valid = (labels != -100).double().cpu()
        row_nll, row_count = (tok * valid).sum(1), valid.sum(1)
        nll.index_add_(0, b["domain"], row_nll)
        count.index_add_(0, b["domain"], row_count)
        chunk_nll += row_nll.tolist()
        chunk_tokens += [int(c) for c in row_count.tolist()]
    per = {name: (math.exp(float(nll[i] / count[i])) if count[i] > 0 else None)
           for i, name in enumerate(domain_names)}
    total = float(count.sum())
    extra: dict[str, Any] = {}
    if row_bytes is not None:
        nbytes = torch.zeros(n_dom, dtype=torch.float64)
        doms = [int(row["domain"]) for row in rows]
        nbytes.index_add_(0, torch.tensor(doms, dtype=torch.long), torch.tensor(list(row_bytes),
                                                                                 dtype=torch.float64))
        extra = {"bits_per_byte": bits_per_byte(float(nll.sum()), float(nbytes.sum())),
                 "bits_per_byte_by_domain": {name: bits_per_byte(float(nll[i]), float(nbytes[i]))
                                             for i, name in enumerate(domain_names)},
                 "eval_bytes": int(nbytes.sum())}
    return {
        "perplexity": math.exp(float(nll.sum()) / total) if total else None,
        "perplexity_by_domain": per,
        **extra,
        "eval_tokens": int(total),
        "tokens_per_second": seen_tokens / seconds if seconds > 0 else None,
        "chunk_nll": chunk_nll,
        "chunk_tokens": chunk_tokens,
    }


def add_intervals(m: dict[str, Any], row_bytes: Sequence[int] | None = None, seed: int = 0) -> dict[str, Any]:
    """Chunk-bootstrap 95% intervals of a :func:`perplexity` result's perplexity (and bits per byte, with
    ``row_bytes``): the held-out chunks are resampled, the statistic is summed NLL over summed tokens (bytes).
    Added to ``m`` as ``perplexity_ci95`` / ``bits_per_byte_ci95``."""
    from distill.evaluation.significance import bootstrap_interval

    nll = m["chunk_nll"]
    lo, hi = bootstrap_interval(nll, seed=seed, weights=m["chunk_tokens"])
    m["perplexity_ci95"] = [math.exp(lo), math.exp(hi)]
    if row_bytes is not None:
        lo, hi = bootstrap_interval(nll, seed=seed, weights=list(row_bytes))
        m["bits_per_byte_ci95"] = [lo / math.log(2), hi / math.log(2)]
    return m


def lm_significance(chunk_nll: dict[str, tuple[list[float], list[int]]], seed: int = 0,
                    n_bytes: int | None = None) -> dict[str, Any]:
    """Paired comparisons of the models' held-out NLL, chunk by chunk (``chunk_nll[role] = (nll per chunk,
    tokens per chunk)``, as :func:`perplexity` returns them): the distilled student against the no-KD student
    and against the teacher. With ``n_bytes`` (the held-out bytes) also the difference in bits per byte and
    its interval (the same test: on one tokenization bits per byte is the per-token NLL times a constant)."""
    from distill.evaluation.significance import compare_nll

    out = {}
    for a, b in (("student_kd", "student_no_kd"), ("student_kd", "teacher")):
        if a in chunk_nll and b in chunk_nll:
            cmp = compare_nll(chunk_nll[a][0], chunk_nll[b][0], chunk_nll[a][1], seed=seed)
            if n_bytes:
                scale = cmp["n"] / (math.log(2) * n_bytes)  # nats per token -> bits per byte
                cmp["bits_per_byte_difference"] = cmp["difference"] * scale
                cmp["bits_per_byte_ci95"] = [x * scale for x in cmp["ci95"]]
            out[f"{a}_vs_{b}"] = cmp
    return out


def describe_lm_comparison(cmp: dict[str, Any], a: str, b: str) -> str:
    """``a`` vs ``b`` in perplexity terms (and bits per byte when known): the ratio with its interval and p,
    and what the test can tell."""
    from distill.evaluation.significance import format_p

    lo, hi = cmp["perplexity_ratio_ci95"]
    bpb = ""
    if cmp.get("bits_per_byte_difference") is not None:
        blo, bhi = cmp["bits_per_byte_ci95"]
        bpb = f"; bits per byte {cmp['bits_per_byte_difference']:+.4f} (95% CI {blo:+.4f} to {bhi:+.4f})"
    head = (f"{a}'s perplexity is {cmp['perplexity_ratio']:.3f}x {b}'s (95% CI {lo:.3f}-{hi:.3f}{bpb}; "
            f"{format_p(cmp['p'])}, {cmp['chunks']} held-out chunks)")
    if not cmp["significant"]:
        return f"{head}: not distinguishable at this test size"
    return f"{head}: significantly {'lower' if cmp['difference'] < 0 else 'higher'}"


def curve_comparison(kd: list[dict[str, Any]] | None, no_kd: list[dict[str, Any]] | None,
                     n_bytes: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The distilled vs the no-KD student at every step both learning curves scored
    (``causal_lm.curve_steps``): held-out perplexity and bits per byte of each, and the paired chunk-level
    comparison (:func:`distill.evaluation.significance.compare_nll`)."""
    from distill.evaluation.significance import compare_nll

    if not kd or not no_kd:
        return []
    other = {p["step"]: p for p in no_kd}
    out = []
    for a in kd:
        b = other.get(a["step"])
        if b is None:
            continue
        cmp = compare_nll(a["chunk_nll"], b["chunk_nll"], a["chunk_tokens"], seed=seed)
        row = {"step": a["step"], "kd_perplexity": a["perplexity"], "no_kd_perplexity": b["perplexity"],
               "kd_bits_per_byte": a.get("bits_per_byte"), "no_kd_bits_per_byte": b.get("bits_per_byte"),
               "perplexity_ratio": cmp["perplexity_ratio"],
               "perplexity_ratio_ci95": cmp["perplexity_ratio_ci95"], "p": cmp["p"],
               "significant": cmp["significant"]}
        out.append(row)
    return out


def describe_curve(curve: list[dict[str, Any]]) -> str:
    """One sentence over the learning curve: where the distilled student was behind, level or ahead."""
    from distill.evaluation.significance import format_p

    def state(row: dict[str, Any]) -> str:
        if not row["significant"]:
            return "level"
        return "ahead" if row["perplexity_ratio"] < 1 else "behind"

    parts = [f"step {row['step']}: {row['kd_perplexity']:.2f} vs {row['no_kd_perplexity']:.2f} "
             f"({state(row)}, {format_p(row['p'])})" for row in curve]
    text = "Held-out perplexity while training, distilled vs no-KD student: " + "; ".join(parts) + "."
    states = [state(row) for row in curve]
    if "behind" in states and "ahead" in states:
        first_ahead = next(row["step"] for row in curve if state(row) == "ahead")
        text += (f" Distillation was behind early and ahead from step {first_ahead}: a shorter budget "
                 "would lose to training on the text alone.")
    return text


def lm_verdict(report: dict[str, Any]) -> list[str]:
    """The verdict of a causal-LM run in plain sentences: the three models' held-out perplexity and bits per
    byte, what distillation did against the text-only student (with its test), said plainly when it made the
    student worse, and what the validation choice picked."""
    m = report.get("models") or {}
    s, b, t = m.get("student_kd"), m.get("student_no_kd"), m.get("teacher")
    if not s:
        return ["No student was evaluated."]

    def both(x: dict[str, Any]) -> str:
        text = f"perplexity {x['perplexity']:.2f}"
        if x.get("perplexity_ci95"):
            text += " (95% CI {:.2f}-{:.2f})".format(*x["perplexity_ci95"])
        if x.get("bits_per_byte") is not None:
            text += f", {x['bits_per_byte']:.4f} bits per byte"
            if x.get("bits_per_byte_ci95"):
                text += " ({:.4f}-{:.4f})".format(*x["bits_per_byte_ci95"])
        return text

    out = [f"Held-out {both(s)} for the distilled student"
           + (f", {both(b)} for the same student trained on the text alone" if b else "")
           + (f", {both(t)} for the teacher" if t else "") + "."]
    if report.get("cross_tokenizer"):
        out.append("Teacher and student read the text through different tokenizers, so their perplexities do "
                   "not compare: bits per byte do (every byte of the held-out text is scored by each model).")
    cmp = (report.get("significance") or {}).get("student_kd_vs_student_no_kd")
    if cmp:
        text = describe_lm_comparison(cmp, "The distilled student", "the no-KD student") + "."
        if cmp["difference"] > 0 and cmp["significant"]:
            where = (report.get("recipe") or {}).get("output_dir", "OUTPUT_DIR")
            text += (" Distillation made this student WORSE than training on the text alone at this "
                     f"budget: ship the no-KD student ({where}/student_no_kd), train longer, or mix in the "
                     "text's own next-token loss (a ce term) and let `select` choose the weight on the "
                     "validation chunks.")
        elif cmp["difference"] > 0:
            text += (" Its perplexity is the higher of the two, so distillation has not paid off at this "
                     "budget.")
        out.append(text)
    if report.get("curve"):
        out.append(describe_curve(report["curve"]))
    sel = report.get("select") or {}
    if sel.get("chosen"):
        ch = sel["chosen"]
        what = ("the text alone (kd weight 0)" if not ch["kd_weight"]
                else f"kd weight {ch['kd_weight']:g} at temperature {ch['temperature']:g}")
        out.append(f"Chosen on the validation chunks' perplexity among {len(sel['candidates'])} candidates: "
                   f"{what}.")
    return out


def sample_generations(model_dir: str, prompts: Sequence[str], max_new_tokens: int = 32,
                       seed: int = 0) -> list[dict[str, str]]:
    """Greedy continuations through ``pipeline('text-generation')`` on the saved model (checks the export)."""
    from transformers import pipeline, set_seed

    set_seed(seed)
    gen = pipeline("text-generation", model=str(model_dir), device="cpu")
    pad = gen.tokenizer.pad_token_id if gen.tokenizer.pad_token_id is not None else gen.tokenizer.eos_token_id
    out = []
    for p in prompts:
        text = gen(p, max_new_tokens=max_new_tokens, do_sample=False, return_full_text=False,
                   pad_token_id=pad)[0]["generated_text"]
        out.append({"prompt": p, "continuation": text})
    return out
