"""Several teachers read as one: each teacher's outputs stay in its own store, and their class distributions
are combined when a batch is read, by an explicit rule.

Rules (``combine:`` in a recipe), for K teachers with fixed weights ``w_k`` (normalised to sum to 1):

``mean_probs`` / ``weights``
    ``p = sum_k w_k p_k``: the arithmetic mean of the teachers' probabilities. Distilling it is the same as
    averaging the per-teacher forward-KL losses, up to a constant that does not depend on the student:
    ``sum_k w_k KL(p_k || q) = KL(p || q) + H(p) - sum_k w_k H(p_k)`` (H: entropy).
    ``weights`` is the same rule, named for recipes that set unequal ``weight``s on purpose.
``mean_logits``
    ``p ∝ exp(sum_k w_k log p_k)``: the normalised geometric mean (a product of experts), what averaging
    logits gives (TextBrewer's multi-teacher rule). Sharper than ``mean_probs``; a class any teacher rules
    out is ruled out.
``confidence``
    per example, the teacher that is more sure of the right answer counts more (CA-MKD, Zhang et al. 2022):
    ``w_k(i) ∝ w_k (1 - softmax_k(-log p_k(y_i))) / (K - 1)``, with the label ``y_i`` where the row has one
    and the teacher's own arg-max on unlabelled rows, then ``p = sum_k w_k(i) p_k``.
``entropy``
    per example, the less uncertain teacher counts more (EBKD, Kwon et al. 2020):
    ``w_k(i) ∝ w_k (1 - H(p_k(i)) / sum_j H(p_j(i))) / (K - 1)``, then ``p = sum_k w_k(i) p_k``.

Temperature: a loss that softens the teacher by T (``kd``) must see the combination *of the softened*
teachers, ``sum_k w_k softmax(z_k / T)``, for the identity above to hold. :meth:`TeacherEnsemble.bind` reads
T from the losses and :meth:`TeacherEnsemble.fetch` then returns dense logits ``T log p_T``, so that the
loss's own ``softmax(. / T)`` gives back exactly ``p_T``. Per-example weights are always computed at T = 1
(the teachers' real confidence). Changing the rule or the weights changes only this reading: no teacher runs
again.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Sequence

import torch

from distill.outputs import ModelOutputs, SparseLogits

RULES = ("mean_probs", "mean_logits", "confidence", "entropy", "weights")
PER_EXAMPLE_RULES = ("confidence", "entropy")


def dense_log_probs(logits: torch.Tensor | SparseLogits, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(..., C) log-probabilities at temperature 1 from dense logits or the store's top-k. Classes outside a
    top-k share the left-over mass equally (the store's ``spread`` reading). ``dtype``: float64 for class
    distributions, float32 for a language model's vocabulary (the tensors are large)."""
    if isinstance(logits, torch.Tensor):
        return torch.log_softmax(logits.to(dtype), dim=-1)
    s = logits
    kept = (s.values.to(dtype) - s.logsumexp.to(dtype).unsqueeze(-1))  # (..., k) exact log-probabilities
    if s.k >= s.num_classes:
        out = torch.empty(*kept.shape[:-1], s.num_classes, dtype=dtype, device=kept.device)
        return out.scatter_(-1, s.indices, kept)
    rest = (1.0 - kept.exp().sum(-1)).clamp_min(1e-12) / (s.num_classes - s.k)  # (B,)
    out = rest.log().unsqueeze(-1).expand(*kept.shape[:-1], s.num_classes).clone()
    return out.scatter_(-1, s.indices, kept)


def example_weights(log_probs: torch.Tensor, rule: str, weights: Sequence[float],
                    labels: torch.Tensor | None = None, answered: torch.Tensor | None = None) -> torch.Tensor:
    """(B, K) per-example teacher weights, each row summing to 1.

    ``log_probs`` (K, B, C) are the teachers' log-probabilities at temperature 1; ``labels`` (B,) holds the
    class of labelled rows and -1 elsewhere (``confidence`` only; absent: every row is unlabelled);
    ``answered`` (K, B) is False where a teacher has no answer for a row (a black-box teacher that failed or
    was not asked): it gets weight 0 there, and the others share its weight.
    """
    k, b, _ = log_probs.shape
    fixed = torch.as_tensor(list(weights), dtype=torch.float64, device=log_probs.device).reshape(1, k)
    if rule not in PER_EXAMPLE_RULES:
        return _renormalise(fixed.expand(b, k), answered, fixed)
    if k < 2:
        raise ValueError("per-example weighting needs at least two teachers")
    present = None if answered is None else answered.T.bool()  # (B, K): a teacher absent from a row is
    # left out of that row's comparison (the others' relative weights never depend on it)
    if rule == "confidence":
        own = log_probs.max(-1).values  # (K, B): log-probability of each teacher's own answer
        if labels is not None:
            y = labels.to(torch.long).reshape(1, b, 1)
            has = (y >= 0).reshape(1, b)
            gold = log_probs.gather(-1, y.clamp_min(0).expand(k, b, 1)).squeeze(-1)  # (K, B)
            own = torch.where(has, gold, own)
        ce = -own.T.double()  # (B, K): cross-entropy of each teacher to the (pseudo-)label
        if present is not None:  # out of the softmax; a row nobody answered keeps its values
            ce = torch.where(present.any(-1, keepdim=True), ce.masked_fill(~present, float("-inf")), ce)
        w = (1.0 - torch.softmax(ce, dim=-1)) / (k - 1)  # CA-MKD: a lower CE weighs more; rows sum to 1
    else:  # entropy
        h = -(log_probs.exp() * log_probs).sum(-1).T.double()  # (B, K)
        if present is not None:
            h = h.masked_fill(~present, 0.0)
        total = h.sum(-1, keepdim=True)
        share = torch.where(total > 0, h / total.clamp_min(1e-300), torch.full_like(h, 1.0 / k))
        w = (1.0 - share) / (k - 1)
    return _renormalise(w * fixed, answered, fixed)


def _renormalise(w: torch.Tensor, answered: torch.Tensor | None, fixed: torch.Tensor) -> torch.Tensor:
    """Rows of ``w`` (B, K) zeroed where a teacher did not answer, then scaled to sum to 1 (a row no teacher
    answered keeps the fixed shares: its target is then uninformative, not undefined)."""
    fallback = fixed.expand_as(w)
    if answered is not None:
        w = w * answered.T.to(w.dtype)
        mine = fallback * answered.T.to(w.dtype)  # the fixed shares among the teachers that answered
        fallback = torch.where(mine.sum(-1, keepdim=True) > 0, mine, fallback)
    w = torch.where(w.sum(-1, keepdim=True) > 0, w, fallback)
    return w / w.sum(-1, keepdim=True)


def combine_log_probs(log_probs: torch.Tensor, rule: str, weights: Sequence[float],
                      labels: torch.Tensor | None = None, temperature: float = 1.0,
                      answered: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C) log-probabilities of the combined teacher at ``temperature``.

    ``log_probs`` (K, B, C) are the teachers' log-probabilities at temperature 1 (so the softened teacher k is
    ``softmax(log_probs[k] / T)``, the same as softening its logits). More leading row dimensions (K, B, L, C:
    a language model's positions) are combined row by row, each position on its own, and kept in the result.
    """
    if rule not in RULES:
        raise ValueError(f"combine: {rule!r} is not a rule; use one of {', '.join(RULES)}")
    if log_probs.dim() > 3:  # every position is a row of its own (labels and answers are per row: absent)
        k, *rows, c = log_probs.shape
        flat = combine_log_probs(log_probs.reshape(k, -1, c), rule, weights, temperature=temperature)
        return flat.reshape(*rows, c)
    w = example_weights(log_probs, rule, weights, labels, answered).to(log_probs.dtype)  # (B, K)
    soft = torch.log_softmax(log_probs / temperature, dim=-1)  # (K, B, C)
    if rule == "mean_logits":
        return torch.log_softmax((w.T.unsqueeze(-1) * soft).sum(0), dim=-1)
    return torch.logsumexp(soft + w.T.clamp_min(1e-300).log().unsqueeze(-1), dim=0)


class TeacherEnsemble:
    """K teacher-output stores read as one teacher. Each store is indexed by the same training rows (every
    teacher ran over the same text, each with its own tokenizer); ``labels`` (one per row, -1 when
    unlabelled) feed the ``confidence`` rule.

    It has the reading side of :class:`~distill.store.TeacherStore` (``fetch``, ``key``, ``path``, ``info``,
    ``len``), so the trainer reads it like one store. Only the teachers' class distributions are combined:
    a loss that reads hidden states or embeddings of a teacher is refused when the run is planned.
    """

    def __init__(self, stores: Sequence[Any], names: Sequence[str], weights: Sequence[float], rule: str,
                 labels: Sequence[int] | torch.Tensor | None = None, temperature: float = 1.0):
        if len(stores) != len(names) or len(stores) != len(weights) or len(stores) < 2:
            raise ValueError("give at least two stores, each with a name and a weight")
        if rule not in RULES:
            raise ValueError(f"combine: {rule!r} is not a rule; use one of {', '.join(RULES)}")
        sizes = {len(s) for s in stores}
        if len(sizes) != 1:
            raise ValueError(f"the teachers' stores hold different numbers of rows ({sorted(sizes)}); each "
                             "teacher must have run over the same rows")
        self.stores, self.names, self.weights = list(stores), list(names), [float(w) for w in weights]
        self.rule, self.temperature = rule, float(temperature)
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        if self.labels is not None and len(self.labels) != len(self):
            raise ValueError(f"{len(self.labels)} labels for {len(self)} stored rows")

    # -- what a store has ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.stores[0])

    @property
    def key(self) -> str:
        """Names the combination: every member's store key, its weight and the rule (not the temperature,
        which the student's own losses fingerprint)."""
        members = [[n, s.key, w] for n, s, w in zip(self.names, self.stores, self.weights, strict=True)]
        rule = "mean_probs" if self.rule == "weights" else self.rule  # the same rule under two names
        blob = json.dumps({"members": members, "rule": rule}, sort_keys=True)
        return "ensemble-" + hashlib.sha256(blob.encode()).hexdigest()[:20]

    @property
    def path(self):
        return self.stores[0].path

    @property
    def num_classes(self) -> int | None:
        return getattr(self.stores[0], "num_classes", None)

    def info(self) -> dict[str, Any]:
        """The first teacher's store description (what it keeps: spec, tokens, classes), with the bytes of
        every store summed and one entry per teacher."""
        members, first = [], None
        for name, store, weight in zip(self.names, self.stores, self.weights, strict=True):
            i = store.info()
            first = first or i
            members.append({"name": name, "weight": weight, "key": store.key, "path": str(store.path),
                            "bytes": i.get("bytes", i.get("disk_bytes")),
                            "num_examples": i.get("num_examples", i.get("examples"))})
        return {**(first or {}), "rule": self.rule, "num_examples": len(self), "members": members,
                "bytes": sum(m["bytes"] or 0 for m in members), "key": self.key}

    def fixed_shares(self) -> dict[str, float]:
        """Each teacher's fixed weight as a share of them all."""
        total = sum(self.weights)
        return {name: w / total for name, w in zip(self.names, self.weights, strict=True)}

    # -- reading ------------------------------------------------------------------------------------------
    def bind(self, distiller: Any) -> TeacherEnsemble:
        """This ensemble at the temperature of ``distiller``'s logit losses (they must agree: the combined
        distribution is one per temperature)."""
        temps = {float(loss.temperature) for loss in distiller.losses
                 if "logits" in loss.teacher_needs and hasattr(loss, "temperature")}
        if len(temps) > 1:
            raise ValueError(f"the losses read the combined teacher at temperatures {sorted(temps)}; with "
                             "several teachers give every loss the same temperature")
        t = temps.pop() if temps else 1.0
        return type(self)(self.stores, self.names, self.weights, self.rule, self.labels, temperature=t)

    def member_log_probs(self, indices: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, B, C) float64 log-probabilities of every teacher on the rows ``indices`` (temperature 1) and
        the (K, B) mask of the rows each teacher answered."""
        return stack_members([s.fetch(indices) for s in self.stores])

    def row_labels(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor | None:
        if self.labels is None or self.rule != "confidence":
            return None
        return self.labels[torch.as_tensor(indices, dtype=torch.long).reshape(-1)]

    def fetch(self, indices: Sequence[int] | torch.Tensor, device: torch.device | str | None = None,
              **_: Any) -> ModelOutputs:
        """The combined teacher on the rows ``indices``, as dense logits ``T log p_T`` (float32)."""
        z = self.combined_logits(*self.member_log_probs(indices), indices)
        return ModelOutputs(logits=z if device is None else z.to(device))

    def combined_logits(self, log_probs: torch.Tensor, answered: torch.Tensor,
                        indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """(B, C) float32 logits ``T log p_T`` of the combination of ``log_probs`` (K, B, C)."""
        combined = combine_log_probs(log_probs, self.rule, self.weights, self.row_labels(indices),
                                     self.temperature, answered)
        return (self.temperature * combined).float()

    def mean_weights(self, batch_size: int = 1024) -> dict[str, float]:
        """Each teacher's average weight over the stored rows under this rule: the fixed shares, unless the
        rule weighs per example or a black-box teacher left rows unanswered (then every row is read)."""
        if self.rule not in PER_EXAMPLE_RULES and not any(isinstance(s, AnswerStore) for s in self.stores):
            return self.fixed_shares()
        total = torch.zeros(len(self.stores), dtype=torch.float64)
        n = len(self)
        for start in range(0, n, batch_size):
            idx = list(range(start, min(n, start + batch_size)))
            lp, answered = self.member_log_probs(idx)
            w = example_weights(lp, self.rule, self.weights, self.row_labels(idx), answered)
            total += w.sum(0)
        return {name: float(v) for name, v in zip(self.names, (total / max(n, 1)).tolist())}


class AugmentedEnsemble(TeacherEnsemble):
    """Several augmented-view stores (image runs, :class:`~distill.store.augment.AugmentedStore`) read as one:
    every teacher saw the same views (the view seeds depend on the run's seed, the epoch and the example, not
    on the teacher), so ``fetch(epoch, indices)`` returns those seeds and the combined teacher on them."""

    @property
    def epochs(self) -> int:
        return min(s.epochs for s in self.stores)

    @property
    def augment(self) -> Any:
        return self.stores[0].augment

    def views(self, images: torch.Tensor, epoch: int, indices: Any) -> torch.Tensor:
        return self.stores[0].views(images, epoch, indices)

    def member_log_probs(self, indices: Any, epoch: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        return stack_members([s.fetch(epoch, indices)[1] for s in self.stores])

    def fetch(self, epoch: int, indices: Any, **_: Any) -> tuple[Any, ModelOutputs]:  # type: ignore[override]
        import numpy as np

        parts = [s.fetch(epoch, indices) for s in self.stores]
        seeds = parts[0][0]
        if any(not np.array_equal(seeds, p[0]) for p in parts[1:]):
            raise ValueError("the teachers' stores hold different augmented views; build them with the same "
                             "train.seed and vision settings")
        lp, answered = stack_members([p[1] for p in parts])
        return seeds, ModelOutputs(logits=self.combined_logits(lp, answered, indices))


def stack_members(outputs: Sequence[ModelOutputs],
                  dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, B, C) log-probabilities from each teacher's outputs on the same rows, and the (K, B) mask of
    answered rows (``extra["answered"]``, kept by :class:`AnswerStore`; every row otherwise). An unanswered
    row's distribution is uniform (it gets no weight anyway)."""
    lps = [dense_log_probs(o.require("logits", "multi-teacher"), dtype) for o in outputs]
    shapes = {tuple(lp.shape) for lp in lps}
    if len(shapes) != 1:
        raise ValueError(f"the teachers' outputs have different shapes {sorted(shapes)}; multi-teacher runs "
                         "need teachers over the same classes")
    lp = torch.stack(lps)
    answered = torch.stack([o.extra.get("answered", torch.ones(lp.shape[1], dtype=torch.bool,
                                                               device=lp.device)).bool() for o in outputs])
    if bool(answered.all()):
        return lp, answered
    uniform = torch.full_like(lp, -math.log(lp.shape[-1]))
    mask = answered.reshape(*answered.shape, *([1] * (lp.dim() - 2)))  # (K, B, 1[, 1])
    return torch.where(mask, lp, uniform), answered


class TokenEnsemble(TeacherEnsemble):
    """Several language models' token stores (same tokenizer) read as one: at every position, their
    next-token distributions combined by the rule (per-example rules weigh each position on its own; the
    ``confidence`` rule uses each teacher's own top token there). The combination is dense over the
    vocabulary, built per batch from each teacher's top-k (the rest of its mass spread) or head codec."""

    def fetch(self, indices: Any, pad_to: int | None = None, padding_side: str = "right",
              device: torch.device | str | None = None, **_: Any) -> ModelOutputs:
        outs = [s.fetch(indices, pad_to=pad_to, padding_side=padding_side, device=device)
                for s in self.stores]
        lp, _ = stack_members(outs, torch.float32)  # (K, B, L, V)
        combined = combine_log_probs(lp, self.rule, self.weights, temperature=self.temperature)
        return ModelOutputs(logits=(self.temperature * combined).float(),
                            attention_mask=outs[0].attention_mask)

    def mean_weights(self, batch_size: int = 2, rows: int = 16) -> dict[str, float]:
        """Each teacher's average weight over the real tokens of the first ``rows`` stored rows (the fixed
        shares for the rules that do not weigh per position)."""
        if self.rule not in PER_EXAMPLE_RULES:
            return self.fixed_shares()
        total = torch.zeros(len(self.stores), dtype=torch.float64)
        count = 0
        for start in range(0, min(rows, len(self)), batch_size):
            idx = list(range(start, min(rows, len(self), start + batch_size)))
            outs = [s.fetch(idx) for s in self.stores]
            lp, _ = stack_members(outs, torch.float32)
            mask = outs[0].attention_mask.reshape(-1).bool() if outs[0].attention_mask is not None else None
            k, b, length, v = lp.shape
            w = example_weights(lp.reshape(k, b * length, v), self.rule, self.weights).cpu()
            w = w[mask] if mask is not None else w
            total += w.sum(0)
            count += w.shape[0]
        return {name: float(x) for name, x in zip(self.names, (total / max(count, 1)).tolist(), strict=True)}


class AnswerStore:
    """A black-box teacher's answers read like a store: (N, C) probabilities per training row (its soft
    labels, or one-hot of its label) and which rows it answered. The answers themselves live in the durable
    response store; this is their view aligned to the run's rows."""

    def __init__(self, probs: Any, answered: Any, name: str):
        import numpy as np

        self.probs = torch.as_tensor(np.asarray(probs, dtype=np.float64))
        self.answered = torch.as_tensor(np.asarray(answered, dtype=bool))
        digest = hashlib.sha256(self.probs.numpy().tobytes() + self.answered.numpy().tobytes())
        self.key = f"answers-{name}-{digest.hexdigest()[:16]}"
        self.path = f"(answers of {name})"

    def __len__(self) -> int:
        return len(self.probs)

    def fetch(self, indices: Any, device: Any = None, **_: Any) -> ModelOutputs:
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        return ModelOutputs(logits=self.probs[idx].clamp_min(1e-12).log(),
                            extra={"answered": self.answered[idx]})

    def info(self) -> dict[str, Any]:
        return {"bytes": 0, "num_examples": len(self), "answered": int(self.answered.sum())}


def concat_embeddings(embeddings: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """(B, sum D_k) from each teacher's (B, D_k) sentence vectors: each L2-normalised, scaled by the square
    root of its weight share and concatenated (Jasper/Stella's multi-teacher target). The result has unit
    norm, and its cosine similarities are the weighted mean of the teachers' own cosine similarities."""
    total = float(sum(weights))
    return torch.cat([torch.nn.functional.normalize(e.double(), dim=-1) * math.sqrt(w / total)
                      for e, w in zip(embeddings, weights, strict=True)], dim=-1)


class EmbeddingEnsemble(TeacherEnsemble):
    """Several sentence-embedding teachers' stores read as one: the rows' vectors joined by
    :func:`concat_embeddings` (``combine: concat``)."""

    def __init__(self, stores: Sequence[Any], names: Sequence[str], weights: Sequence[float],
                 rule: str = "concat", labels: Any = None, temperature: float = 1.0):
        if len(stores) < 2 or len({len(s) for s in stores}) != 1:
            raise ValueError("give at least two stores over the same rows")
        self.stores, self.names, self.weights = list(stores), list(names), [float(w) for w in weights]
        self.rule, self.temperature, self.labels = "concat", 1.0, None

    def bind(self, distiller: Any) -> EmbeddingEnsemble:
        return self

    def fetch(self, indices: Sequence[int] | torch.Tensor, device: torch.device | str | None = None,
              **_: Any) -> ModelOutputs:
        parts = [s.fetch(indices).require("embeddings", "multi-teacher") for s in self.stores]
        z = concat_embeddings(parts, self.weights).float()
        return ModelOutputs(embeddings=z if device is None else z.to(device))

    def mean_weights(self, batch_size: int = 1024) -> dict[str, float]:
        return self.fixed_shares()


def agreement(predictions: dict[str, Any]) -> dict[str, float]:
    """Share of rows on which each pair of ``predictions`` (name -> (N,) class ids) agree, keyed
    ``"a | b"``."""
    import numpy as np

    names = list(predictions)
    return {f"{a} | {b}": float(np.mean(np.asarray(predictions[a]) == np.asarray(predictions[b])))
            for i, a in enumerate(names) for b in names[i + 1:]}
