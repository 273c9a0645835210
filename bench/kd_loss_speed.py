"""Forward + backward time of the token-level forward-KL loss at LM size: distill's hand-written gradient
(kd with divergence forward_kl, the default) against the same loss composed of autograd ops (the path every
other divergence takes), in one process, alternating, median of the repeats.

    python bench/kd_loss_speed.py [--tokens 512] [--vocab 49152] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from distill.losses.divergence import (
        divergence_terms,
        forward_kl_rows,
        teacher_log_probs,
        teacher_student_log_probs,
    )

    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-append", action="store_true")
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    z_t = torch.randn(a.tokens, a.vocab, generator=g) * 3
    z_s0 = torch.randn(a.tokens, a.vocab, generator=g) * 3

    def fused():
        z_s = z_s0.clone().requires_grad_(True)
        log_p, z, _ = teacher_log_probs(z_t, z_s, 1.0)
        forward_kl_rows(log_p, z, 1.0).mean().backward()
        return z_s.grad

    def composed():
        z_s = z_s0.clone().requires_grad_(True)
        lp, lq, _ = teacher_student_log_probs(z_t, z_s, 1.0)
        divergence_terms(lp, lq, "forward_kl").sum(-1).mean().backward()
        return z_s.grad

    assert torch.allclose(fused(), composed(), atol=1e-7)
    times = {"fused": [], "composed": []}
    for _ in range(a.repeats):
        for name, fn in (("fused", fused), ("composed", composed)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    f, c = statistics.median(times["fused"]), statistics.median(times["composed"])
    body = (f"{a.tokens} tokens x {a.vocab} classes, float32, T=1, {a.repeats} alternating "
            f"repeats, median:\n\n"
            f"| path | forward + backward s |\n|---|---|\n"
            f"| hand-written gradient (kd forward_kl) | {f:.3f} |\n"
            f"| composed autograd ops | {c:.3f} |\n\nRatio: {f / c:.2f}x (gradients equal to 1e-7).")
    print(body)
    if not a.no_append:
        from _common import append_results

        append_results("Token-level forward KL: hand-written gradient vs composed ops "
                       "(bench/kd_loss_speed.py)", body)


if __name__ == "__main__":
    main()
