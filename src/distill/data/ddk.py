"""DDK (Distilling Domain Knowledge, METHODS.md 3.9): sample the domains where the student trails the
teacher most, re-weighting smoothly and never letting a domain die out.

Every ``interval`` optimisation steps the student's and the teacher's mean next-token cross-entropy are
measured on a small held-out set per domain, ``l_S[i]`` and ``l_T[i]`` (the teacher's once: it is frozen).
With the gap ``g[i] = l_S[i] / l_T[i]``:

    psi[i]    = r[i] * exp(g[i])                              (multiplicative update of the current weights)
    r_new[i]  = alpha * psi[i] / sum_j psi[j] + (1 - alpha) / N

so ``r`` always sums to 1, every domain keeps at least ``(1 - alpha) / N`` (the floor), the domain with the
largest gap gains the most, and ``alpha`` sets how far one update may move the mixture. The exact equations
of the paper are unverified (METHODS.md marks them [paper?]); this is the documented reading.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch


def ddk_update(weights: Sequence[float], student_loss: Sequence[float], teacher_loss: Sequence[float],
               alpha: float = 0.5) -> list[float]:
    """One smoothed DDK step from the current domain weights and per-domain losses (see the module text)."""
    n = len(weights)
    if not (n == len(student_loss) == len(teacher_loss)) or n == 0:
        raise ValueError("weights, student_loss and teacher_loss need one entry per domain")
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha: {alpha!r}; use 0 < alpha <= 1")
    gaps = [s / max(t, 1e-8) for s, t in zip(student_loss, teacher_loss)]
    top = max(gaps)  # exp(g - top): same ratios, no overflow
    psi = [w * math.exp(g - top) for w, g in zip(weights, gaps)]
    total = sum(psi)
    if total <= 0:
        psi, total = [1.0] * n, float(n)
    return [alpha * p / total + (1.0 - alpha) / n for p in psi]


class DomainSampler(torch.utils.data.Sampler[int]):
    """Draws ``num_samples`` indices per epoch: a domain with probability ``weights[d]``, then a uniformly
    random example of that domain. The weights are read at every draw, so an update made during an epoch
    takes effect at the next batch."""

    def __init__(self, domains: Sequence[int], num_domains: int, weights: Sequence[float] | None = None,
                 num_samples: int | None = None, seed: int = 0):
        self.by_domain = [[i for i, d in enumerate(domains) if d == k] for k in range(num_domains)]
        empty = [k for k, ids in enumerate(self.by_domain) if not ids]
        if empty:
            raise ValueError(f"domains {empty} have no training examples")
        self.weights = list(weights) if weights is not None else [1.0 / num_domains] * num_domains
        self.num_samples = num_samples or len(domains)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        for _ in range(self.num_samples):
            w = torch.tensor(self.weights, dtype=torch.float64)
            d = int(torch.multinomial(w, 1, generator=self.generator))
            ids = self.by_domain[d]
            yield ids[int(torch.randint(len(ids), (1,), generator=self.generator))]


@torch.no_grad()
def domain_losses(model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]], num_domains: int,
                  vocab_size: int | None = None) -> list[float]:
    """Mean next-token cross-entropy of ``model`` per domain over pre-collated ``batches``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = torch.zeros(num_domains, dtype=torch.float64)
    count = torch.zeros(num_domains, dtype=torch.float64)
    for b in batches:
        logits = model(input_ids=b["input_ids"].to(device),
                       attention_mask=b["attention_mask"].to(device)).logits
        if vocab_size is not None:
            logits = logits[..., :vocab_size]
        labels = b["labels"].to(device)
        nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100,
                                                reduction="none")  # (B, L)
        valid = (labels != -100).to(torch.float64)
        total.index_add_(0, b["domain"], (nll.double() * valid).sum(1).cpu())
        count.index_add_(0, b["domain"], valid.sum(1).cpu())
    model.train(was_training)
    return (total / count.clamp_min(1.0)).tolist()


class DDKCallback:
    """A ``TrainerCallback`` that re-weights a :class:`DomainSampler` every ``interval`` steps and keeps the
    weights over time in ``history`` (step, weights, student losses, gaps); also sent to the Trainer's log
    as ``ddk/weight_<domain>``."""

    def __init__(self, sampler: DomainSampler, eval_batches: Sequence[dict[str, torch.Tensor]],
                 teacher_loss: Sequence[float], names: Sequence[str], interval: int = 10, alpha: float = 0.5,
                 vocab_size: int | None = None, log: Callable[[dict[str, float]], Any] | None = None):
        from transformers import TrainerCallback

        self.sampler, self.eval_batches, self.teacher_loss = sampler, list(eval_batches), list(teacher_loss)
        self.names, self.interval, self.alpha, self.vocab_size = (list(names), int(interval), float(alpha),
                                                                  vocab_size)
        self.history: list[dict[str, Any]] = [{"step": 0, "weights": list(sampler.weights)}]
        self.log = log
        outer = self

        class _CB(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):
                if state.global_step % outer.interval == 0 and model is not None:
                    outer.update(model, state.global_step)
                return control

        self.callback = _CB()

    def update(self, model: torch.nn.Module, step: int) -> list[float]:
        student = domain_losses(model, self.eval_batches, len(self.names), self.vocab_size)
        new = ddk_update(self.sampler.weights, student, self.teacher_loss, self.alpha)
        self.sampler.weights[:] = new
        gaps = [s / max(t, 1e-8) for s, t in zip(student, self.teacher_loss)]
        self.history.append({"step": step, "weights": new, "student_loss": student, "gap": gaps})
        if self.log is not None:
            self.log({f"ddk/weight_{n}": round(w, 4) for n, w in zip(self.names, new)})
        return new
