"""Token-level LM losses: skew KL golden values (hand-computed in plain math), next-token masking, and the
exact equivalence of 4 accumulated micro-batches with one 4x batch."""

from __future__ import annotations

import math

import pytest
import torch

from distill.config import RecipeError
from distill.data.text_lm import CausalLMCollator
from distill.losses import KDLoss, check_params
from distill.outputs import ModelOutputs

from .lm_helpers import assert_same_step, one_lm_step

Z_T = [[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 3.0, -2.0]]
Z_S = [[0.0, 1.0, 0.5, -0.5], [1.5, -1.0, 0.0, 0.3]]


def _softmax(row, t=1.0):
    m = max(x / t for x in row)
    e = [math.exp(x / t - m) for x in row]
    return [x / sum(e) for x in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def _skew_value(direction: str, a: float, t: float) -> float:
    vals = []
    for zt, zs in zip(Z_T, Z_S):
        p, q = _softmax(zt, t), _softmax(zs, t)
        if direction == "forward":
            vals.append(_kl(p, [a * x + (1 - a) * y for x, y in zip(p, q)]))
        else:
            vals.append(_kl(q, [a * y + (1 - a) * x for x, y in zip(p, q)]))
    return t * t * sum(vals) / len(vals)


@pytest.mark.parametrize("divergence,direction", [("forward_kl", "forward"), ("reverse_kl", "reverse")])
@pytest.mark.parametrize("skew,t", [(0.1, 1.0), (0.5, 2.0), (0.0, 1.0)])
def test_skew_kl_golden(divergence, direction, skew, t):
    # float64 against the plain-math value: sums of 4 terms of order 1 err by ~1e-15 there, so 1e-12 is tight
    loss = KDLoss(temperature=t, divergence=divergence, skew=skew)
    zs, zt = torch.tensor(Z_S, dtype=torch.float64), torch.tensor(Z_T, dtype=torch.float64)
    got = loss(ModelOutputs(logits=zs), ModelOutputs(logits=zt), {})
    assert float(got) == pytest.approx(_skew_value(direction, skew, t), abs=1e-12, rel=1e-12)


def test_skew_is_zero_at_identity_and_rejected_elsewhere():
    # at identity the KL is a difference of equal entropy-sized sums: ~1e-16 in float64 (float32 gave 5.8e-8)
    z = torch.tensor(Z_T, dtype=torch.float64)
    assert (float(KDLoss(skew=0.3)(ModelOutputs(logits=z), ModelOutputs(logits=z), {}))
            == pytest.approx(0, abs=1e-12))
    for bad in (-0.1, 1.0, "0.1", True):
        with pytest.raises(RecipeError, match="skew"):
            check_params("kd", {"skew": bad}, "losses[0]")
    with pytest.raises(RecipeError, match="skew"):
        check_params("kd", {"skew": 0.1, "divergence": "jsd"}, "losses[0]")


def test_lm_kd_uses_the_next_token_mask():
    """Prompt and padding positions (loss_mask 0) make no difference; the last real token predicts nothing."""
    collate = CausalLMCollator(pad_token_id=0)
    batch = collate([{"input_ids": [5, 6, 7, 8, 9], "prompt_length": 2},
                     {"input_ids": [5, 6, 7], "prompt_length": 0}])
    assert batch["labels"].tolist() == [[-100, 7, 8, 9, -100], [6, 7, -100, -100, -100]]
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    loss = KDLoss(temperature=1.0)
    base = loss(ModelOutputs(logits=zs), ModelOutputs(logits=zt), batch)
    zs2 = zs.clone()
    zs2[batch["loss_mask"] == 0] = 100.0  # garbage at untrained positions
    assert torch.allclose(loss(ModelOutputs(logits=zs2), ModelOutputs(logits=zt), batch), base)
    # equals the mean of per-position KLs at the trained positions
    m = batch["loss_mask"].bool()
    per = torch.nn.functional.kl_div(zs.log_softmax(-1), zt.log_softmax(-1), log_target=True,
                                     reduction="none").sum(-1)
    assert torch.allclose(base, per[m].mean(), atol=1e-6)


# -- gradient accumulation ---------------------------------------------------------------------------------
def _rows(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = int(torch.randint(4, 12, (1,), generator=g))
        ids = torch.randint(3, 30, (length,), generator=g).tolist()
        rows.append({"input_ids": ids, "prompt_length": i % 3, "domain": 0, "example_index": i})
    return rows


def _one_step(tmp_path, tiny_llama, lm_tokenizer, batch, accum, losses):
    return one_lm_step(tmp_path, tiny_llama, lm_tokenizer, _rows(), batch, accum, losses)


@pytest.mark.parametrize("losses", [
    [{"name": "kd", "weight": 1.0, "params": {"temperature": 2.0}}, {"name": "ce", "weight": 0.5}],
    [{"name": "kd", "weight": 1.0, "params": {"divergence": "jsd", "beta": 0.3}}],
    [{"name": "alm", "weight": 1.0, "params": {"tau": 2.0}}, {"name": "ce", "weight": 0.5}],
])
def test_four_micro_batches_equal_one_big_batch(tmp_path, tiny_llama, lm_tokenizer, losses):
    big, t_big = _one_step(tmp_path, tiny_llama, lm_tokenizer, batch=8, accum=1, losses=losses)
    small, t_small = _one_step(tmp_path, tiny_llama, lm_tokenizer, batch=2, accum=4, losses=losses)
    assert_same_step(big, t_big, small, t_small)
