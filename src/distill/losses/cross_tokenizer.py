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
    return picked_logprobs(torch.log_softmax(x, dim=-1), labels)


def picked_logprobs(logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, L, V) log-probabilities and (B, L) labels -> (B, L) the label's log-probability (0 where -100)."""
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


GROUP_TOPK_IDS = "group_topk_ids"
"""``ModelOutputs.extra`` key: (B, G, k) the teacher's k most likely next tokens at each group's
last position, as *student* ids (-1: a teacher token whose text the student's vocabulary lacks)."""
GROUP_TOPK_LOGP = "group_topk_logp"
"""``ModelOutputs.extra`` key: (B, G, k) their merged log-probabilities (chain rule: the log-probability of
the group's earlier observed teacher tokens plus the last position's log-probability of the token)."""
STUDENT_SHARED = "student_shared_vocab"
"""``ModelOutputs.extra`` key: (V_S,) bool, the student tokens whose text the teacher's vocabulary has too."""


def generalised_kl(p: torch.Tensor, logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Elementwise ``p log(p/q) - p + q`` for non-negative measures that need not sum to one (0 where p = 0):
    never negative, zero exactly when q = p."""
    q = torch.exp(logq)
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)) - p + q


def group_last_positions(chunks: torch.Tensor, n_groups: int) -> torch.Tensor:
    """(B, L) group per position -> (B, G) the last position of each group (-1: a group with none)."""
    pos = torch.arange(chunks.shape[1], device=chunks.device).expand_as(chunks)
    pos = torch.where(chunks >= 0, pos, torch.full_like(pos, -1))
    out = torch.full((chunks.shape[0], n_groups), -1, dtype=torch.long, device=chunks.device)
    return out.scatter_reduce(1, chunks.clamp_min(0), pos, reduce="amax", include_self=True)


@register_loss
class HybridTokenKLLoss(DistillLoss):
    """Cross-tokenizer distillation of full next-token distributions (GOLD's hybrid loss, Hugging Face TRL;
    ULD, Boizard et al. 2024): exact KL on the tokens both vocabularies share, sorted L1 on the rest.

    For each aligned group (:mod:`distill.data.byte_align`) both sides merge the group into one distribution
    by the chain rule (``bayesian``): the probability of the group's earlier observed tokens times the last
    position's next-token distribution. On tokens whose text both vocabularies have, the teacher's merged
    top-k probabilities ``p`` and the student's ``q`` at the same tokens are compared by the generalised KL
    ``sum p log(p/q) - p + q`` (the merged vectors do not sum to one; this divergence is still never negative
    and zero only at equality). The teacher's remaining top-k mass and the student's probabilities on tokens
    the teacher lacks are compared by ULD's sorted L1 (order-free: the tokens have no counterpart). Sum over
    groups / trained student positions, like every token-level loss. On one tokenizer every position is a
    group, every token is shared, and the loss is the forward KL of the full distributions.
    """

    name = "hybrid_kl"
    teacher_needs = ("logits",)
    student_needs = ("logits",)
    needs_labels = True
    formula = ("sum_g [ sum_{y in shared, top-k} p_g(y) log(p_g(y)/q_g(y)) - p_g(y) + q_g(y) "
               "+ w_u * ||sort(p_g[unshared]) - sort(q_g[unshared])||_1 ] / N_tokens, p_g, q_g merged by the "
               "chain rule")
    citation = ("Boizard et al. 2024, Towards Cross-Tokenizer Distillation: the Universal Logit Distillation "
                "Loss (arXiv:2402.12030); Hugging Face TRL GOLD trainer (hybrid ULD, bayesian merge)")

    def __init__(self, unshared_weight: float = 1.0):
        super().__init__()
        self.validate_params(unshared_weight=unshared_weight)
        self.unshared_weight = float(unshared_weight)

    @staticmethod
    def validate_params(unshared_weight: float = 1.0, **_: object) -> None:
        if (isinstance(unshared_weight, bool) or not isinstance(unshared_weight, (int, float))
                or not unshared_weight >= 0):
            raise ValueError(f"unshared_weight: {unshared_weight!r} is not a number >= 0; use e.g. 1.0")

    def forward(self, student: ModelOutputs, teacher: ModelOutputs,
                batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels = batch.get("labels")
        if labels is None:
            raise ValueError("loss 'hybrid_kl' needs the batch's next-token 'labels' (a causal-LM batch)")
        logits = student.require("logits", self.name)
        x = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()  # type: ignore[union-attr]
        scored = labels >= 0
        n_tokens = scored.sum().clamp_min(1)
        if GROUP_TOPK_IDS not in teacher.extra:  # one tokenizer: the forward KL at every trained position
            t_logits = teacher.require("logits", self.name)
            if not isinstance(t_logits, torch.Tensor):
                raise ValueError("loss 'hybrid_kl' needs the teacher's full logits on a shared tokenizer")
            logp = torch.log_softmax(t_logits.detach().to(x.dtype), -1)
            logq = torch.log_softmax(x, -1)
            per = generalised_kl(logp.exp(), logp, logq).sum(-1)
            return torch.where(scored, per, torch.zeros_like(per)).sum() / n_tokens.to(per.dtype)
        ids, t_logp = teacher.extra[GROUP_TOPK_IDS], teacher.extra[GROUP_TOPK_LOGP].to(x.dtype)
        valid = teacher.extra[CHUNK_VALID].bool()
        shared_vocab = teacher.extra[STUDENT_SHARED].bool()
        chunks = batch[STUDENT_CHUNKS]
        chunks = torch.where(scored, chunks, torch.full_like(chunks, -1))
        n_groups = ids.shape[1]
        log_sm = torch.log_softmax(x, -1)  # (B, L, V), once: observed tokens and merged distributions
        s_lp = picked_logprobs(log_sm, labels)
        last = group_last_positions(chunks, n_groups)  # (B, G)
        valid = valid & (last >= 0)
        lastc = last.clamp_min(0)
        # the student's merged distribution: its earlier observed tokens' log-probability + the last
        # position's distribution
        prefix = chunk_logliks(s_lp, chunks, n_groups) - s_lp.gather(1, lastc)
        at_last = log_sm.gather(1, lastc.unsqueeze(-1).expand(-1, -1, log_sm.shape[-1]))
        merged = at_last + prefix.unsqueeze(-1)
        shared = ids >= 0
        logq = merged.gather(2, ids.clamp_min(0))  # (B, G, k)
        p = torch.where(shared, t_logp.exp(), torch.zeros_like(t_logp))
        kl = torch.where(shared, generalised_kl(p, t_logp, logq), torch.zeros_like(logq)).sum(-1)
        # the rest: the teacher's top-k mass outside the shared tokens vs the student's on its own tokens
        p_u = torch.where(shared, torch.zeros_like(t_logp), t_logp.exp())
        q_all = torch.where(shared_vocab.to(merged.device), torch.full_like(merged, float("-inf")), merged)
        k = ids.shape[-1]
        q_u = q_all.topk(min(k, q_all.shape[-1]), dim=-1).values.exp()
        uld = sorted_l1(p_u, q_u)
        per = torch.where(valid, kl + self.unshared_weight * uld, torch.zeros_like(kl))
        return per.sum() / n_tokens.to(per.dtype)
