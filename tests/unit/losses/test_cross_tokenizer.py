"""Cross-tokenizer arithmetic: golden values (TRL's merge examples, sorted L1, binary KL), ALM's exactness
(two models that define the same distribution over strings under different tokenizations give zero loss
and zero gradient), and gradient-accumulation invariance."""

from __future__ import annotations

import math
import random

import pytest
import torch

from distill.data.byte_align import align_spans
from distill.losses.cross_tokenizer import (
    alm_loss,
    binary_kl,
    chunk_logliks,
    merge_group_probs,
    observed_logprobs,
    sorted_l1,
)


def test_merge_golden_values_from_trl():
    # TRL tests/experimental/test_gold_trainer.py: probs [[.6,.3,.1],[.2,.5,.3]], group [0, 1], tokens [0, 1]
    probs = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]], dtype=torch.float64)
    ids = torch.tensor([0, 1])
    assert torch.allclose(merge_group_probs(probs, ids, "observed"),
                          torch.tensor([0.30, 0.15, 0.05], dtype=torch.float64), atol=1e-15)
    assert torch.allclose(merge_group_probs(probs, ids, "bayesian"),
                          torch.tensor([0.12, 0.30, 0.18], dtype=torch.float64), atol=1e-15)
    with pytest.raises(ValueError, match="bayesian or observed"):
        merge_group_probs(probs, ids, "first")


def test_bayesian_merge_is_the_chain_rule():
    # a group of three tokens: P(t0, t1, y) = P(t0) P(t1 | t0) P(y | t0 t1) for every y
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(3, 7, generator=g, dtype=torch.float64), -1)
    ids = torch.tensor([4, 2, 0])
    merged = merge_group_probs(probs, ids, "bayesian")
    assert torch.allclose(merged, probs[0, 4] * probs[1, 2] * probs[2], rtol=1e-15)
    assert math.isclose(float(merged.sum()), float(probs[0, 4] * probs[1, 2]), rel_tol=1e-14)


def test_sorted_l1_golden():
    p = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    q = torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64)
    assert float(sorted_l1(p, q)) == pytest.approx(0.2, abs=1e-15)
    # different widths: the shorter is zero-padded
    two = torch.tensor([0.5, 0.5], dtype=torch.float64)
    three = torch.tensor([0.4, 0.3, 0.3], dtype=torch.float64)
    assert float(sorted_l1(two, three)) == pytest.approx(0.6, abs=1e-15)


def test_binary_kl_golden_and_zero_at_equality():
    a, b = math.exp(-1.0), math.exp(-2.0)
    want = a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))
    got = binary_kl(torch.tensor(-1.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64))
    assert float(got) == pytest.approx(want, rel=1e-14)
    a2, b2 = math.exp(-1.0 / 4), math.exp(-2.0 / 4)
    want2 = a2 * math.log(a2 / b2) + (1 - a2) * math.log((1 - a2) / (1 - b2))
    got2 = binary_kl(torch.tensor(-1.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64),
                     tau=4.0)
    assert float(got2) == pytest.approx(want2, rel=1e-14)
    c = torch.tensor([-1e-9, -0.3, -5.0, -80.0], dtype=torch.float64)
    assert torch.allclose(binary_kl(c, c), torch.zeros(4, dtype=torch.float64), atol=1e-15)


def test_chunk_logliks():
    lp = torch.tensor([[-1.0, -2.0, -3.0, -4.0]], dtype=torch.float64)
    ids = torch.tensor([[-1, 0, 0, 1]])
    assert chunk_logliks(lp, ids, 3).tolist() == [[-5.0, -4.0, 0.0]]


# -- exactness: one distribution over strings, two tokenizations ------------------------------------------
ALPHABET = "ab c"


def _bigram(seed=0):
    g = torch.Generator().manual_seed(seed)
    start = torch.log_softmax(torch.randn(len(ALPHABET), generator=g, dtype=torch.float64), -1)
    trans = torch.log_softmax(torch.randn(len(ALPHABET), len(ALPHABET), generator=g, dtype=torch.float64), -1)
    return start, trans


def _char_logprobs(text, start, trans):
    idx = [ALPHABET.index(ch) for ch in text]
    return [float(start[idx[0]])] + [float(trans[idx[k - 1], idx[k]]) for k in range(1, len(idx))]


def _tokenize(text, widths):
    """Cut ``text`` into tokens of the given widths (cycled): (token strings, byte spans)."""
    out, spans, pos, k = [], [], 0, 0
    while pos < len(text):
        w = widths[k % len(widths)]
        out.append(text[pos:pos + w])
        spans.append((pos, min(len(text), pos + w)))
        pos += w
        k += 1
    return out, spans


def _token_logprobs(text, spans, start, trans):
    chars = _char_logprobs(text, start, trans)
    return [sum(chars[s:e]) for s, e in spans]  # token prob = product of its characters' (chain rule)


def _student_logits(target_logprobs, vocab=50, observed_id=3):
    """Logits over a vocabulary whose softmax gives each observed token exactly ``target_logprobs`` (the rest
    of the mass spread evenly over the other tokens)."""
    rows = []
    for lp in target_logprobs:
        p = math.exp(lp)
        row = torch.full((vocab,), math.log((1 - p) / (vocab - 1)), dtype=torch.float64)
        row[observed_id] = lp
        rows.append(row)
    return torch.stack(rows).unsqueeze(0)


def _case(seed):
    start, trans = _bigram(seed)
    rng = random.Random(seed)
    text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(12, 30)))
    _, spans_t = _tokenize(text, [1])          # teacher: characters
    _, spans_s = _tokenize(text, [2, 3, 1])    # student: pieces of 2, 3 and 1 characters
    al = align_spans(spans_t, spans_s)
    ids_t, ids_s = al.chunk_ids(len(spans_t), len(spans_s))
    lp_t = torch.tensor([_token_logprobs(text, spans_t, start, trans)], dtype=torch.float64)
    lp_s = _token_logprobs(text, spans_s, start, trans)
    return lp_t, torch.tensor([ids_t]), lp_s, torch.tensor([ids_s]), len(al.groups)


@pytest.mark.parametrize("seed", range(4))
def test_alm_is_exact_when_both_models_define_the_same_distribution(seed):
    lp_t, ids_t, lp_s, ids_s, n = _case(seed)
    logits = _student_logits(lp_s).requires_grad_(True)
    labels = torch.full((1, len(lp_s)), 3)
    student_lp = observed_logprobs(logits, labels).double()
    assert torch.allclose(chunk_logliks(lp_t, ids_t, n), chunk_logliks(student_lp, ids_s, n), atol=1e-12)
    loss = alm_loss(lp_t, ids_t, student_lp, ids_s, n, n_student_tokens=len(lp_s))
    assert abs(float(loss.detach())) < 1e-13
    loss.backward()
    assert float(logits.grad.abs().max()) < 1e-10
    # move the student away and the loss rises, with a gradient
    noisy = (logits.detach() + 0.3 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(1),
                                                 dtype=torch.float64)).requires_grad_(True)
    worse = alm_loss(lp_t, ids_t, observed_logprobs(noisy, labels).double(), ids_s, n, len(lp_s))
    worse.backward()
    assert float(worse.detach()) > 1e-4 and float(noisy.grad.abs().max()) > 1e-6


def test_groups_with_an_unscored_token_are_left_out():
    lp_t, ids_t, lp_s, ids_s, n = _case(0)
    student = torch.tensor([lp_s], dtype=torch.float64)
    student_off = student.clone()
    student_off[0, 0] -= 5.0  # the student's first token: nothing predicts it in a chunk cut from a text
    scored = torch.ones_like(student, dtype=torch.bool)
    scored[0, 0] = False
    full = alm_loss(lp_t, ids_t, student_off, ids_s, n, student.shape[1])
    masked = alm_loss(lp_t, ids_t, student_off, ids_s, n, student.shape[1], student_scored=scored)
    assert float(full) > 1e-3 and abs(float(masked)) < 1e-13


def test_gradient_accumulation_invariance():
    """One batch of 8 rows vs 4 micro-batches of 2, each weighted by its share of the student tokens (what
    the trainer does for token-level losses): the same loss and the same gradient."""
    g = torch.Generator().manual_seed(0)
    rows, n_chunks = 8, 6
    lengths = [5, 9, 7, 12, 6, 10, 8, 11]
    lt, ls = 16, 12
    t_lp = -torch.rand(rows, lt, generator=g, dtype=torch.float64) * 3
    t_ids = torch.randint(-1, n_chunks, (rows, lt), generator=g)
    s_ids = torch.randint(-1, n_chunks, (rows, ls), generator=g)
    logits = torch.randn(rows, ls, 20, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 20, (rows, ls), generator=g)
    for r, n in enumerate(lengths):
        labels[r, n:] = -100
        s_ids[r, n:] = -1
    tokens = (labels >= 0).sum()

    def loss_of(sl, x):
        lp = observed_logprobs(x, labels[sl]).double()
        return alm_loss(t_lp[sl], t_ids[sl], lp, s_ids[sl], n_chunks, (labels[sl] >= 0).sum(), tau=2.0)

    x1 = logits.clone().requires_grad_(True)
    full = loss_of(slice(0, rows), x1)
    full.backward()
    x2 = logits.clone().requires_grad_(True)
    acc = torch.zeros((), dtype=torch.float64)
    for start in range(0, rows, 2):
        sl = slice(start, start + 2)
        part = loss_of(sl, x2[sl]) * (labels[sl] >= 0).sum() / tokens
        part.backward()
        acc += part.detach()
    assert float(acc) == pytest.approx(float(full.detach()), rel=1e-12)
    assert torch.allclose(x1.grad, x2.grad, rtol=1e-10, atol=1e-15)


# -- the registered loss against the plain-math reference (golden_cross_tokenizer.py) ----------------------
def _random_lm_batch(seed: int, b: int = 2, length: int = 6, vocab: int = 5):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, length, vocab, generator=g, dtype=torch.float64) * 1.5
    t = torch.randn(b, length, vocab, generator=g, dtype=torch.float64) * 1.5
    labels = torch.randint(0, vocab, (b, length), generator=g)
    labels[0, -1] = -100  # the last position of a row predicts nothing
    labels[1, 3:] = -100  # padding
    return s, t, labels


@pytest.mark.parametrize(("seed", "tau"), [(0, 1.0), (1, 0.5), (2, 2.0)])
def test_alm_loss_same_tokenizer_matches_reference(seed, tau):
    from distill.losses import LOSSES, LossContext
    from distill.outputs import ModelOutputs

    from . import golden_cross_tokenizer as ref

    s, t, labels = _random_lm_batch(seed)
    loss = LOSSES.get("alm").build({"tau": tau}, LossContext())
    got = loss(ModelOutputs(logits=s), ModelOutputs(logits=t), {"labels": labels})
    want = ref.alm_same_tokenizer(s.tolist(), t.tolist(), labels.tolist(), tau)
    assert float(got) == pytest.approx(want, rel=1e-12, abs=1e-14)


@pytest.mark.parametrize(("seed", "tau"), [(0, 1.0), (3, 0.7)])
def test_alm_loss_over_aligned_groups_matches_reference(seed, tau):
    from distill.losses import LOSSES, LossContext
    from distill.losses.cross_tokenizer import CHUNK_LOGLIK, CHUNK_VALID, STUDENT_CHUNKS
    from distill.outputs import ModelOutputs

    from . import golden_cross_tokenizer as ref

    s, _, labels = _random_lm_batch(seed)
    chunks = torch.tensor([[0, 0, 1, -1, 2, 2], [0, 1, 1, 2, 2, 2]])  # row 2: positions 3.. untrained
    ll = torch.tensor([[-2.5, -0.4, -3.0], [-1.2, -6.0, -0.9]], dtype=torch.float64)
    valid = torch.tensor([[True, True, False], [True, True, True]])
    loss = LOSSES.get("alm").build({"tau": tau}, LossContext())
    teacher = ModelOutputs(extra={CHUNK_LOGLIK: ll, CHUNK_VALID: valid})
    got = loss(ModelOutputs(logits=s), teacher, {"labels": labels, STUDENT_CHUNKS: chunks})
    want = ref.alm_groups(s.tolist(), labels.tolist(), chunks.tolist(), ll.tolist(), valid.tolist(), tau)
    assert float(got) == pytest.approx(want, rel=1e-12, abs=1e-14)


def test_alm_loss_closed_form_one_position():
    # one trained position, vocabulary of 2: student p(label) = 1/2, teacher p(label) = e / (e + 1)
    from distill.losses import LOSSES, LossContext
    from distill.outputs import ModelOutputs

    s = torch.zeros(1, 1, 2, dtype=torch.float64)
    t = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    labels = torch.tensor([[0]])
    a, b = math.e / (math.e + 1), 0.5
    want = a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))
    loss = LOSSES.get("alm").build({}, LossContext())
    assert float(loss(ModelOutputs(logits=s), ModelOutputs(logits=t), {"labels": labels})) == pytest.approx(
        want, rel=1e-14)


@pytest.mark.parametrize("seed", [0, 1])
def test_hybrid_same_tokenizer_is_forward_kl_and_matches_reference(seed):
    from distill.losses import LOSSES, LossContext
    from distill.outputs import ModelOutputs

    from . import golden_cross_tokenizer as ref

    s, t, labels = _random_lm_batch(seed)
    loss = LOSSES.get("hybrid_kl").build({}, LossContext())
    got = loss(ModelOutputs(logits=s), ModelOutputs(logits=t), {"labels": labels})
    assert float(got) == pytest.approx(ref.hybrid_same_tokenizer(s.tolist(), t.tolist(), labels.tolist()),
                                       rel=1e-12)
    kd = LOSSES.get("kd").build({"temperature": 1.0}, LossContext(num_classes=s.shape[-1]))
    mask = (labels >= 0).long()
    want = kd(ModelOutputs(logits=s, attention_mask=mask), ModelOutputs(logits=t, attention_mask=mask),
              {"attention_mask": mask, "loss_mask": mask})
    assert float(got) == pytest.approx(float(want), rel=1e-9)


@pytest.mark.parametrize(("seed", "weight"), [(0, 1.0), (2, 0.3)])
def test_hybrid_over_aligned_groups_matches_reference(seed, weight):
    from distill.losses import LOSSES, LossContext
    from distill.losses.cross_tokenizer import (
        CHUNK_VALID,
        GROUP_TOPK_IDS,
        GROUP_TOPK_LOGP,
        STUDENT_CHUNKS,
        STUDENT_SHARED,
    )
    from distill.outputs import ModelOutputs

    from . import golden_cross_tokenizer as ref

    s, _, labels = _random_lm_batch(seed)
    g = torch.Generator().manual_seed(seed + 7)
    chunks = torch.tensor([[0, 0, 1, -1, 2, 2], [0, 1, 1, 2, 2, 2]])
    ids = torch.tensor([[[1, 3, -1], [0, -1, 4], [2, 3, 1]], [[4, 0, -1], [1, 2, 3], [-1, -1, 0]]])
    logp = -torch.rand(2, 3, 3, generator=g, dtype=torch.float64) * 4
    valid = torch.tensor([[True, True, False], [True, True, True]])
    shared = torch.tensor([True, True, False, True, True])  # token 2 has no teacher counterpart
    teacher = ModelOutputs(extra={GROUP_TOPK_IDS: ids, GROUP_TOPK_LOGP: logp, CHUNK_VALID: valid,
                                  STUDENT_SHARED: shared})
    loss = LOSSES.get("hybrid_kl").build({"unshared_weight": weight}, LossContext())
    batch = {"labels": labels, STUDENT_CHUNKS: chunks}
    got = loss(ModelOutputs(logits=s.requires_grad_(True)), teacher, batch)
    want = ref.hybrid_groups(s.tolist(), labels.tolist(), chunks.tolist(), ids.tolist(), logp.tolist(),
                             valid.tolist(), shared.tolist(), weight)
    assert float(got.detach()) == pytest.approx(want, rel=1e-12)
    got.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert not s.grad[1, 3:].any()  # untrained positions get no gradient


def test_hybrid_is_zero_when_the_student_matches_the_merged_teacher():
    # one group of two student positions; the teacher's top-k holds the student's own merged probabilities
    from distill.losses import LOSSES, LossContext
    from distill.losses.cross_tokenizer import (
        CHUNK_VALID,
        GROUP_TOPK_IDS,
        GROUP_TOPK_LOGP,
        STUDENT_CHUNKS,
        STUDENT_SHARED,
    )
    from distill.outputs import ModelOutputs

    g = torch.Generator().manual_seed(3)
    s = torch.randn(1, 2, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([[2, 1]])
    chunks = torch.tensor([[0, 0]])
    lsm = torch.log_softmax(s, -1)
    merged = lsm[0, 0, 2] + lsm[0, 1]  # P(first token) * P(. | first token)
    ids = torch.tensor([[[0, 1, 2, 3]]])
    teacher = ModelOutputs(extra={GROUP_TOPK_IDS: ids, GROUP_TOPK_LOGP: merged.view(1, 1, 4),
                                  CHUNK_VALID: torch.tensor([[True]]),
                                  STUDENT_SHARED: torch.ones(4, dtype=torch.bool)})
    loss = LOSSES.get("hybrid_kl").build({}, LossContext())
    value = loss(ModelOutputs(logits=s), teacher, {"labels": labels, STUDENT_CHUNKS: chunks})
    assert abs(float(value)) < 1e-14
