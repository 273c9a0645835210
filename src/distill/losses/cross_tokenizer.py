"""The arithmetic of cross-tokenizer distillation, over the groups of :mod:`distill.data.byte_align`.

Two families (formulas and sources: ../shared/METHODS-NEXT.md, section 1):

- **ALM** (approximate likelihood matching, Minixhofer et al. 2025): each aligned group is the same stretch
  of text on both sides, so its log-likelihood is comparable: the sum of the group's per-token
  log-probabilities of the observed tokens, under each model's own tokenization. Teacher and student chunk
  likelihoods ``c_T``, ``c_S`` are turned into probabilities ``a = exp(c_T / tau)``, ``b = exp(c_S / tau)``
  and compared as two Bernoulli distributions. We use the binary KL ``a log(a/b) + (1-a) log((1-a)/(1-b))``:
  it has the gradient of the paper's default binary cross-entropy with respect to the student (they differ
  by the teacher-only entropy ``H(a)``) and is zero when the two models agree, which is what a test can
  check. Needs one teacher log-probability per teacher token, so it works from a store and from API
  teachers that return log-probabilities.
- **Group distributions** for full-distribution losses: a multi-token group's next-token distribution is
  merged by the chain rule (``bayesian``: the last position's distribution times the probabilities of the
  group's earlier observed tokens), or by the ``observed`` rule TRL's GOLD trainer uses by default (the first
  position's distribution times the later observed tokens' probabilities, which takes each factor from a
  distribution that predicts a different position; kept to reproduce its numbers). ``sorted_l1`` is ULD's
  permutation-invariant distance for the part of the vocabularies that has no common tokens.

Normalisation: a loss over a batch is the sum over its groups divided by the number of *student tokens* the
batch trains on (``loss_mask``), the unit every token-level loss of a causal-LM run is averaged over, so
the trainer's token-weighted gradient accumulation gives the same update for any split of a batch into
micro-batches.
"""

from __future__ import annotations

import torch

from distill.losses.base import DistillLoss, register_loss
from distill.outputs import ModelOutputs


def chunk_logliks(token_logprobs: torch.Tensor, chunk_ids: torch.Tensor, n_chunks: int) -> torch.Tensor:
    """(B, L) per-token log-probabilities of the observed tokens and (B, L) group index per token (-1: in
    none) -> (B, n_chunks) summed log-likelihood of each group."""
    keep = chunk_ids >= 0
    out = token_logprobs.new_zeros(token_logprobs.shape[0], n_chunks)
    return out.scatter_add(1, chunk_ids.clamp_min(0), torch.where(keep, token_logprobs,
                                                                   torch.zeros_like(token_logprobs)))


def _count(chunk_ids: torch.Tensor, n_chunks: int, where: torch.Tensor | None = None) -> torch.Tensor:
    """(B, n_chunks) number of this side's tokens in each group (only those ``where`` is True)."""
    member = chunk_ids >= 0
    if where is not None:
        member = member & where
    counts = torch.zeros(chunk_ids.shape[0], n_chunks, device=chunk_ids.device)
    return counts.scatter_add(1, chunk_ids.clamp_min(0), member.float())


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, stable at both ends (Maechler 2012)."""
    x = x.clamp(max=-1e-12)
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def binary_kl(c_teacher: torch.Tensor, c_student: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Elementwise KL(Bern(a) || Bern(b)) with ``a = exp(c_teacher / tau)``, ``b = exp(c_student / tau)``
    (log-likelihoods clipped at 0), computed in log space."""
    la = c_teacher.clamp(max=0.0) / tau
    lb = c_student.clamp(max=0.0) / tau
    a = torch.exp(la)
    return a * (la - lb) + (1 - a) * (_log1mexp(la) - _log1mexp(lb))


def alm_loss(teacher_logprobs: torch.Tensor, teacher_chunks: torch.Tensor, student_logprobs: torch.Tensor,
             student_chunks: torch.Tensor, n_chunks: int, n_student_tokens: int | torch.Tensor,
             tau: float = 1.0, teacher_scored: torch.Tensor | None = None,
             student_scored: torch.Tensor | None = None) -> torch.Tensor:
    """ALM over a batch: binary KL between teacher and student group likelihoods, summed over the groups
    that have tokens on both sides and no unscored token on either (``*_scored``: False where a token has no
    log-probability, e.g. the first token of a chunk, which nothing before it predicts), divided by
    ``n_student_tokens``."""
    c_t = chunk_logliks(teacher_logprobs, teacher_chunks, n_chunks)
    c_s = chunk_logliks(student_logprobs, student_chunks, n_chunks)
    ok = _count(teacher_chunks, n_chunks) > 0
    ok &= _count(student_chunks, n_chunks) > 0
    for chunks, scored in ((teacher_chunks, teacher_scored), (student_chunks, student_scored)):
        if scored is not None:
            ok &= _count(chunks, n_chunks, ~scored) == 0
    per = torch.where(ok, binary_kl(c_t, c_s, tau), torch.zeros_like(c_t))
    denom = torch.as_tensor(n_student_tokens, dtype=per.dtype, device=per.device).clamp_min(1.0)
    return per.sum() / denom


def observed_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, L, V) logits and (B, L) shifted labels (-100: not trained) -> (B, L) log-probability of each
    observed next token (0 where not trained)."""
    x = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()  # only half is upcast
    logp = torch.log_softmax(x, dim=-1)
    picked = logp.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return torch.where(labels >= 0, picked, torch.zeros_like(picked))


def merge_group_probs(probs: torch.Tensor, token_ids: torch.Tensor,
                      strategy: str = "bayesian") -> torch.Tensor:
    """One (unnormalised) next-token distribution for a group of ``n`` positions: ``probs`` (n, V) where
    ``probs[k]`` is the distribution that predicts the group's k-th observed token ``token_ids[k]``.

    ``bayesian``: ``probs[n-1] * prod_{k<n-1} probs[k, token_ids[k]]`` (the chain rule: the probability of
    the group's first n-1 tokens followed by y). ``observed``: ``probs[0] * prod_{k>0}
    probs[k, token_ids[k]]`` (TRL GOLD's default)."""
    n = probs.shape[0]
    picked = probs.gather(1, token_ids.view(-1, 1)).squeeze(1)
    if strategy == "bayesian":
        return probs[n - 1] * picked[: n - 1].prod()
    if strategy == "observed":
        return probs[0] * picked[1:].prod()
    raise ValueError(f"merge strategy {strategy!r}: use bayesian or observed")


def sorted_l1(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """ULD's distance: L1 between the two distributions' probabilities sorted in descending order (the
    shorter zero-padded), summed over the last dimension."""
    width = max(p.shape[-1], q.shape[-1])
    ps = torch.nn.functional.pad(p, (0, width - p.shape[-1])).sort(dim=-1, descending=True).values
    qs = torch.nn.functional.pad(q, (0, width - q.shape[-1])).sort(dim=-1, descending=True).values
    return (ps - qs).abs().sum(-1)


# ---------------------------------------------------------------------------------------------- the loss
CHUNK_LOGLIK = "chunk_loglik"
"""``ModelOutputs.extra`` key: (B, G) the teacher's log-likelihood of each aligned group of a row."""
CHUNK_VALID = "chunk_valid"
"""``ModelOutputs.extra`` key: (B, G) True where the group is scored on both sides."""
STUDENT_CHUNKS = "student_chunk_ids"
"""Batch key: (B, L) the group of the token each position predicts (the position's label), -1: none."""


@register_loss
class ALMLoss(DistillLoss):
    """Approximate likelihood matching (Minixhofer et al. 2025, "Universal cross-tokenizer distillation via
    approximate likelihood matching"): the teacher's and the student's log-likelihoods of the same stretches
    of text, compared group by group, so teacher and student may use different tokenizers.

    A group is a run of tokens on each side covering the same UTF-8 bytes (:mod:`distill.data.byte_align`).
    With ``c_T``, ``c_S`` the summed log-probabilities of a group's observed tokens, the loss per group is the
    binary KL between ``Bern(exp(c_T / tau))`` and ``Bern(exp(c_S / tau))``; the sum over groups is divided by
    the number of trained positions, as every token-level loss is.

    In a cross-tokenizer causal-LM run the teacher side comes from the store as ``chunk_loglik`` /
    ``chunk_valid`` (the teacher ran once over its own tokenization of the text) and the batch carries the
    student's ``student_chunk_ids``. With neither (teacher and student share a tokenizer), every trained
    position is its own group and the teacher's log-probability of the label is read from its logits.
    """

    name = "alm"
    teacher_needs = ("logits",)
    student_needs = ("logits",)
    needs_labels = True
    formula = ("sum_g KL(Bern(exp(c_T,g / tau)) || Bern(exp(c_S,g / tau))) / N_tokens, "
               "c_g = sum of the group's observed-token log-probabilities under each model's own tokenizer")
    citation = ("Minixhofer, Vulic, Ponti 2025, Universal Cross-Tokenizer Distillation via Approximate "
                "Likelihood Matching (arXiv:2503.20083)")

    def __init__(self, tau: float = 1.0):
        super().__init__()
        self.validate_params(tau=tau)
        self.tau = float(tau)

    @staticmethod
    def validate_params(tau: float = 1.0, **_: object) -> None:
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau > 0:
            raise ValueError(f"tau: {tau!r} is not a positive number; use e.g. 1.0")

    def forward(self, student: ModelOutputs, teacher: ModelOutputs,
                batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels = batch.get("labels")
        if labels is None:
            raise ValueError("loss 'alm' needs the batch's next-token 'labels' (a causal-LM batch)")
        logits = student.require("logits", self.name)
        s_lp = observed_logprobs(logits, labels)  # type: ignore[arg-type]
        scored = labels >= 0
        n_tokens = scored.sum()
        if CHUNK_LOGLIK in teacher.extra:  # cross-tokenizer: the teacher's groups come from the store
            c_t = teacher.extra[CHUNK_LOGLIK].to(s_lp.dtype)
            valid = teacher.extra[CHUNK_VALID].bool()
            chunks = batch[STUDENT_CHUNKS]
            chunks = torch.where(scored, chunks, torch.full_like(chunks, -1))
            c_s = chunk_logliks(s_lp, chunks, c_t.shape[1])
            # a group counts only where the student scores every one of its tokens too
            valid = valid & (_count(chunks, c_t.shape[1]) > 0)
            per = torch.where(valid, binary_kl(c_t, c_s, self.tau), torch.zeros_like(c_s))
        else:  # one tokenizer: every trained position is its own group
            t_logits = teacher.require("logits", self.name)
            if not isinstance(t_logits, torch.Tensor):
                raise ValueError("loss 'alm' needs the teacher's full logits (a dense store: store.topk 0) "
                                 "when teacher and student share a tokenizer")
            t_lp = observed_logprobs(t_logits.detach(), labels).to(s_lp.dtype)
            per = torch.where(scored, binary_kl(t_lp, s_lp, self.tau), torch.zeros_like(s_lp))
        return per.sum() / n_tokens.clamp_min(1).to(per.dtype)
