"""Language-model evaluation: held-out perplexity per domain, throughput, and sample generations."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from distill.data.text_lm import CausalLMCollator


@torch.no_grad()
def perplexity(model: torch.nn.Module, rows: Sequence[dict[str, Any]], pad_id: int,
               domain_names: Sequence[str], batch_size: int = 16,
               vocab_size: int | None = None) -> dict[str, Any]:
    """Token-weighted next-token perplexity over ``rows`` (prompt tokens excluded), overall and per domain,
    plus scoring throughput (tokens per second of the forward passes), and under ``chunk_nll`` /
    ``chunk_tokens`` each row's summed NLL (nats) and scored tokens, in row order, for paired tests between
    models (:func:`distill.evaluation.significance.compare_nll`)."""
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
    return {
        "perplexity": math.exp(float(nll.sum()) / total) if total else None,
        "perplexity_by_domain": per,
        "eval_tokens": int(total),
        "tokens_per_second": seen_tokens / seconds if seconds > 0 else None,
        "chunk_nll": chunk_nll,
        "chunk_tokens": chunk_tokens,
    }


def lm_significance(chunk_nll: dict[str, tuple[list[float], list[int]]], seed: int = 0) -> dict[str, Any]:
    """Paired comparisons of the models' held-out NLL, chunk by chunk (``chunk_nll[role] = (nll per chunk,
    tokens per chunk)``, as :func:`perplexity` returns them): the distilled student against the no-KD student
    and against the teacher."""
    from distill.evaluation.significance import compare_nll

    out = {}
    for a, b in (("student_kd", "student_no_kd"), ("student_kd", "teacher")):
        if a in chunk_nll and b in chunk_nll:
            out[f"{a}_vs_{b}"] = compare_nll(chunk_nll[a][0], chunk_nll[b][0], chunk_nll[a][1], seed=seed)
    return out


def describe_lm_comparison(cmp: dict[str, Any], a: str, b: str) -> str:
    """``a`` vs ``b`` in perplexity terms: the ratio with its interval and p, and what the test can tell."""
    from distill.evaluation.significance import format_p

    lo, hi = cmp["perplexity_ratio_ci95"]
    head = (f"{a}'s perplexity is {cmp['perplexity_ratio']:.3f}x {b}'s (95% CI {lo:.3f}-{hi:.3f}, "
            f"{format_p(cmp['p'])}, {cmp['chunks']} held-out chunks)")
    if not cmp["significant"]:
        return f"{head}: not distinguishable at this test size"
    return f"{head}: significantly {'lower' if cmp['difference'] < 0 else 'higher'}"


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
