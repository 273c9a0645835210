"""How faithfully a store gives the teacher's distribution back, measured against the teacher itself.

The number that matters for training is ``KL(p || p_hat)``: the information about the teacher's
distribution ``p`` that the stored ``p_hat`` loses, in nats per token, averaged over real tokens. It is
reported alone and as a share of the teacher's entropy ``H(p)`` (the 'KL error'), which makes stores of
different teachers comparable: a share of 1% means the reconstruction is off by a hundredth of what the
teacher itself is unsure about. Top-k stores are read with the ``spread`` reconstruction (their missing
mass shared evenly over the other tokens); ``topk`` restriction has no finite KL to the full distribution.
Also reported: how often the reconstruction's most likely token is the teacher's, and the teacher mass a
top-k store did not keep.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from distill.files import atomic_write_json, read_json
from distill.outputs import SparseLogits

FIDELITY_FILE = "fidelity.json"


def measure_fidelity(
    store: Any,
    indices: Sequence[int],
    teacher_logits: Callable[[list[int]], tuple[torch.Tensor, torch.Tensor]],
    batch_size: int = 4,
) -> dict[str, Any]:
    """Compare ``store.fetch(indices)`` with the teacher's full logits.

    ``teacher_logits(batch_indices)`` returns (logits (B, L, V), attention_mask (B, L)) for the same rows,
    padded on the right like the store's per-token fields.
    """
    from distill.losses.divergence import sparse_teacher_log_probs

    kl = ent = agree = missing = 0.0
    tokens = 0
    idx = list(indices)
    for i in range(0, len(idx), batch_size):
        chunk = idx[i:i + batch_size]
        z, mask = teacher_logits(chunk)
        stored = store.fetch(chunk)
        lp = torch.log_softmax(z.float()[mask.bool()], dim=-1)  # (T, V) real tokens, example-major
        valid = stored.attention_mask.bool()
        rec = stored.logits
        if isinstance(rec, SparseLogits):
            sub = SparseLogits(rec.values[valid], rec.indices[valid], rec.logsumexp[valid], rec.num_classes)
            lph, _ = sparse_teacher_log_probs(sub, "spread")
            missing += float((1 - (sub.values - sub.logsumexp.unsqueeze(-1)).exp().sum(-1))
                             .clamp_min(0).sum())
        else:
            lph = torch.log_softmax(rec[valid].float(), dim=-1)
        if lph.shape != lp.shape:
            raise ValueError(f"store rows give {tuple(lph.shape)} token distributions, "
                             f"the teacher {tuple(lp.shape)}")
        p = lp.exp()
        kl += float((p * (lp - lph)).sum())
        ent += float(-(p * lp).sum())
        agree += float((lp.argmax(-1) == lph.argmax(-1)).sum())
        tokens += lp.shape[0]
    n = max(tokens, 1)
    out = {"tokens": tokens, "rows": len(idx), "kl_nats_per_token": kl / n, "teacher_entropy": ent / n,
           "kl_error": (kl / n) / max(ent / n, 1e-12), "top1_agreement": agree / n}
    if isinstance(store.fetch(idx[:1]).logits, SparseLogits):
        out["missing_mass"] = missing / n
    return out


def save_fidelity(store_path: str | Path, result: dict[str, Any]) -> None:
    atomic_write_json(Path(store_path) / FIDELITY_FILE, result)


def load_fidelity(store_path: str | Path) -> dict[str, Any] | None:
    f = Path(store_path) / FIDELITY_FILE
    return read_json(f) if f.exists() else None


def describe_fidelity(f: dict[str, Any]) -> str:
    text = (f"KL(teacher || store) {f['kl_nats_per_token']:.4f} nats/token = {100 * f['kl_error']:.2f}% "
            f"of the teacher's entropy ({f['teacher_entropy']:.3f}); "
            f"top-1 agreement {100 * f['top1_agreement']:.1f}%")
    if "missing_mass" in f:
        text += f"; mass outside the top-k {100 * f['missing_mass']:.1f}%"
    where = ""
    if "first_row" in f:
        where = f", rows {f['first_row']}-{f['first_row'] + f['rows'] - 1}"
        where += "" if f.get("outside_calibration", True) else ", inside the codec's calibration rows"
    return text + f" ({f['tokens']:,} tokens of {f['rows']} rows{where})"
