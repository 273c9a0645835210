"""Why the head codec codes what it codes: ways of storing SmolLM2-135M's next-token distribution, compared.

For held-out 128-token chunks of the causal-LM benchmark's text, each variant stores something per token and
rebuilds a distribution ``p_hat``; we report bytes per token and KL(p || p_hat) per token (and as a share of
the teacher's entropy). Variants: top-k logits with the missing mass spread evenly (k = 32, 128); the final
hidden state ``h`` (input of the output layer) in float16, int8, and at 4 bits with (a) a per-row absmax grid,
(b) a random rotation + per-channel scale + per-row absmax grid, (c) the same with Lloyd-Max levels and a
per-row RMS scale (the codec's first design), (d) principal axes with bits shared out by variance, (e) the
same axes taken in the output layer's Fisher metric (distill's ``head3`` / ``head4`` / ``head8``); and a PCA
projection of ``h`` kept in float16 (r = 144: 288 bytes). Every fitted quantity (mean, scales, rotation,
axes, levels, PCA basis) comes from 48 other chunks.

    python bench/codec_variants.py        (needs the packaged SmolLM2 and the corpus of bench/causal_lm.py)
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
CORPUS = HERE.parent / "runs" / "bench_causal_lm" / "corpus.csv"


def main() -> None:
    import pandas as pd
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.losses.divergence import sparse_teacher_log_probs
    from distill.outputs import SparseLogits
    from distill.packaged import resolve_model
    from distill.store.codec import HeadCodec, _lloyd_max, forward_with_head_input, output_layer

    torch.set_grad_enabled(False)
    if not CORPUS.exists():
        raise SystemExit(f"{CORPUS} is missing: run bench/causal_lm.py first (it writes the corpus)")
    path = resolve_model("packaged:smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    df = pd.read_csv(CORPUS)
    chunks = []
    for _, g in df.groupby("domain"):
        ids = tok("\n\n".join(g.text.astype(str)))["input_ids"]
        chunks += [ids[i:i + 128] for i in range(0, len(ids) - 128, 128)]
    random.Random(0).shuffle(chunks)
    fit_rows, held_rows = chunks[:48], chunks[48:72]

    def hidden(rows):
        out = [forward_with_head_input(model, input_ids=torch.tensor(rows[i:i + 8]))[1].reshape(-1, 576)
               for i in range(0, len(rows), 8)]
        return torch.cat(out)

    w, b = output_layer(model, model.config.vocab_size)
    hf, ht = hidden(fit_rows), hidden(held_rows)
    z = ht @ w.T
    lp = torch.log_softmax(z.double(), -1)
    p = lp.exp()
    ent = float(-(p * lp).sum(-1).mean())
    rows = []

    def add(name, nbytes, log_q):
        kl = float((p * (lp - log_q.double())).sum(-1).mean())
        rows.append((name, nbytes, kl))

    def from_h(h2):
        return torch.log_softmax((h2 @ w.T).double(), -1)

    for k in (32, 128):
        v, idx = z.topk(k, -1)
        v16 = v.half().float()
        lse = torch.logsumexp(z.scatter(-1, idx, v16), -1)
        add(f"top-{k} logits, spread tail", k * 6 + 4,
            sparse_teacher_log_probs(SparseLogits(v16, idx, lse, z.shape[-1]), "spread")[0])
    add("h float16", 1152, from_h(ht.half().float()))
    s8 = ht.abs().amax(-1, keepdim=True) / 127
    add("h int8, per-row absmax", 580, from_h((ht / s8).round().clamp(-127, 127) * s8))
    s4 = ht.abs().amax(-1, keepdim=True) / 7
    add("h 4-bit, per-row absmax grid", 290, from_h((ht / s4).round().clamp(-7, 7) * s4))
    # one width for every coordinate after a random rotation (the codec's first design)
    mean = hf.mean(0)
    g = torch.Generator().manual_seed(0)
    q, r = torch.linalg.qr(torch.randn(576, 576, generator=g, dtype=torch.float64))
    rot = (q * torch.sign(torch.diagonal(r))).float()
    scale = ((hf - mean) @ rot).std(0)
    zf, zt = ((hf - mean) @ rot) / scale, ((ht - mean) @ rot) / scale
    sr = zt.abs().amax(-1, keepdim=True) / 7
    add("h 4-bit, rotation + channel scale + absmax grid", 290,
        from_h(((zt / sr).round().clamp(-7, 7) * sr * scale) @ rot.T + mean))
    rms_f = zf.pow(2).mean(-1, keepdim=True).sqrt()
    rms_t = zt.pow(2).mean(-1, keepdim=True).sqrt().half().float()
    flat = (zf / rms_f).flatten()
    lv = _lloyd_max(flat[torch.randperm(flat.numel(), generator=g)[:400_000]], 16)
    qt = lv[torch.bucketize(zt / rms_t, (lv[1:] + lv[:-1]) / 2)]
    add("h 4-bit, rotation + channel scale + row RMS + Lloyd-Max", 290,
        from_h((qt * rms_t * scale) @ rot.T + mean))
    # principal axes + bits shared by variance: plain, then in the Fisher metric (distill's head codecs)
    pca = HeadCodec.fit(hf, w, b, bits=4, metric="euclidean")
    add("h 4-bit mean, PCA axes + bits by variance + Lloyd-Max", pca.bytes_per_token,
        torch.log_softmax(pca.logits(*pca.encode(ht)).double(), -1))
    for bits in (3, 4, 8):
        codec = HeadCodec.fit(hf, w, b, bits=bits)
        add(f"h {bits}-bit mean, Fisher-weighted PCA axes + bits by variance + Lloyd-Max (head{bits})",
            codec.bytes_per_token, torch.log_softmax(codec.logits(*codec.encode(ht)).double(), -1))
    mu = hf.mean(0)
    basis = torch.linalg.svd(hf - mu, full_matrices=False).Vh[:144].T
    add("h PCA r=144, float16", 288, from_h(((ht - mu) @ basis).half().float() @ basis.T + mu))

    words = int(df.text.astype(str).str.split().str.len().groupby(df.domain).sum().mean())
    lines = [f"{ht.shape[0]} held-out tokens, teacher entropy {ent:.3f} nats/token; fitted on {hf.shape[0]} "
             f"other tokens; corpus {CORPUS.name} with about {words} words per domain (bench/causal_lm.py "
             "--words).",
             "", "| variant | bytes/token | KL(p||p_hat) nats | % of H(p) |", "|---|---|---|---|"]
    lines += [f"| {n} | {nb} | {kl:.4f} | {100 * kl / ent:.2f}% |" for n, nb, kl in rows]
    body = "\n".join(lines)
    print(body)
    if "--no-append" not in sys.argv:
        from _common import append_results

        append_results("Storing an LM teacher's distribution: top-k vs coded final hidden states "
                       "(bench/codec_variants.py)", body)


if __name__ == "__main__":
    main()
