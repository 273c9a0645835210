"""Golden values for attention_mse, minilm, minilm_v2, trg and the PKD form of hidden: distill against the
plain-``math`` formulas of ``golden_relations.py`` on tiny inputs (B = 2, L = 3, 1-2 heads of width 2), plus
cases worked out by hand in closed form."""

from __future__ import annotations

import math
import random

import pytest
import torch

from distill.losses import LOSSES, LossContext
from distill.outputs import ModelOutputs

from . import golden_relations as ref

# The inputs are float64 (``t``) and the losses keep float64. In float32 a minilm value (a KL of two softmaxes
# over scores) came out 1e-7 from the reference, a tenth of a 1e-6 bound, and that error moves with the
# summation order (SIMD width, threads); in float64 these sums (<= 50 terms of size <= 10) err by < 1e-13
# (2e-16 seen), so 1e-12 holds anywhere and a wrong scale, mask or head split is still off by > 1e-3.
ATOL = 1e-12
MASK = [[1, 1, 1], [1, 1, 0]]  # example 2 has a padded last token


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def qkv_outputs(layers: list[tuple], mask=MASK) -> ModelOutputs:
    return ModelOutputs(qkv=tuple(tuple(t(x) for x in layer) for layer in layers),
                        attention_mask=torch.tensor(mask))


def random_qkv(seed: int, heads: int, dim: int, b: int = 2, length: int = 3):
    rng = random.Random(seed)
    return tuple(ref.random_tensor(rng, b, heads, length, dim) for _ in range(3))


def values(out) -> dict[str, float]:
    if isinstance(out, dict):
        return {k: float(v) for k, v in out.items()}
    return {"loss": float(out)}


# ------------------------------------------------------------------------------------------------- minilm
def test_minilm_closed_form() -> None:
    # one head, d = 1, L = 2. Teacher q = v = 0: uniform attention and value relations. Student k = [1, 0] and
    # q = ln 2 give scores [ln 2, 0] in both rows: softmax [2/3, 1/3], KL(uniform || it) = 0.5 ln(9/8) per
    # row. Student v = [sqrt(ln 2), 0]: row 1 is [ln 2, 0] again, row 2 all zeros (uniform, KL 0).
    ln2 = math.log(2.0)
    zero = [[[[0.0], [0.0]]]]
    student = qkv_outputs([([[[[ln2], [ln2]]]], [[[[1.0], [0.0]]]], [[[[math.sqrt(ln2)], [0.0]]]])], [[1, 1]])
    teacher = qkv_outputs([(zero, [[[[1.0], [0.0]]]], zero)], [[1, 1]])
    out = values(LOSSES.get("minilm")()(student, teacher, {}))
    assert out["attention"] == pytest.approx(0.5 * math.log(9 / 8), abs=ATOL)
    assert out["value"] == pytest.approx(0.25 * math.log(9 / 8), abs=ATOL)


@pytest.mark.parametrize("heads", [1, 2])
def test_minilm_matches_reference(heads: int) -> None:
    s, tq = random_qkv(1, heads, 2), random_qkv(2, heads, 2)
    got = values(LOSSES.get("minilm")()(qkv_outputs([s]), qkv_outputs([tq]), {}))
    want = ref.minilm_v1(s, tq, MASK)
    assert got == pytest.approx(want, abs=ATOL)


def test_minilm_reads_the_chosen_layers() -> None:
    s1, s2 = random_qkv(3, 2, 2), random_qkv(4, 2, 2)
    t1, t2 = random_qkv(5, 2, 2), random_qkv(6, 2, 2)
    loss = LOSSES.get("minilm").build({"teacher_layer": 1, "student_layer": 2},
                                      LossContext(student_num_layers=2, teacher_num_layers=2))
    got = values(loss(qkv_outputs([s1, s2]), qkv_outputs([t1, t2]), {}))
    assert got == pytest.approx(ref.minilm_v1(s2, t1, MASK), abs=ATOL)
    assert loss.qkv_layers("student") == [2] and loss.qkv_layers("teacher") == [1]


def test_minilm_needs_equal_heads() -> None:
    with pytest.raises(ValueError, match="minilm_v2"):
        LOSSES.get("minilm")()(qkv_outputs([random_qkv(1, 1, 4)]), qkv_outputs([random_qkv(2, 2, 2)]), {})


# ---------------------------------------------------------------------------------------------- minilm_v2
@pytest.mark.parametrize(("s_heads", "s_dim", "t_heads", "t_dim", "rel_heads"),
                         [(2, 2, 2, 2, 2), (1, 2, 2, 2, 2), (2, 2, 1, 2, 1), (1, 4, 2, 3, 2)])
def test_minilm_v2_matches_reference(s_heads, s_dim, t_heads, t_dim, rel_heads) -> None:
    s, tq = random_qkv(7, s_heads, s_dim), random_qkv(8, t_heads, t_dim)
    loss = LOSSES.get("minilm_v2")(relation_heads=rel_heads)
    got = values(loss(qkv_outputs([s]), qkv_outputs([tq]), {}))
    assert got == pytest.approx(ref.minilm_v2(s, tq, MASK, rel_heads), abs=ATOL)


def test_minilm_v2_cross_relations_match_reference() -> None:
    s, tq = random_qkv(9, 2, 2), random_qkv(10, 1, 4)
    loss = LOSSES.get("minilm_v2")(relation_heads=2, relations=["qk", "vq"])
    got = values(loss(qkv_outputs([s]), qkv_outputs([tq]), {}))
    assert got == pytest.approx(ref.minilm_v2(s, tq, MASK, 2, ("qk", "vq")), abs=ATOL)


def test_minilm_v2_with_one_relation_head_per_attention_head_is_minilm_attention_on_qk() -> None:
    # relation_heads = heads and relation qk: R_qk is exactly MiniLM v1's attention distribution
    s, tq = random_qkv(11, 2, 2), random_qkv(12, 2, 2)
    v2 = values(LOSSES.get("minilm_v2")(relation_heads=2, relations=["qk"])(qkv_outputs([s]),
                                                                            qkv_outputs([tq]), {}))
    v1 = values(LOSSES.get("minilm")()(qkv_outputs([s]), qkv_outputs([tq]), {}))
    assert v2["qk"] == pytest.approx(v1["attention"], abs=ATOL)


def test_minilm_v2_rejects_relation_heads_that_do_not_divide() -> None:
    with pytest.raises(ValueError, match="relation_heads"):
        LOSSES.get("minilm_v2").build({"relation_heads": 48}, LossContext(student_hidden_size=40,
                                                                          teacher_hidden_size=96))
    loss = LOSSES.get("minilm_v2")(relation_heads=3)
    with pytest.raises(ValueError, match="relation_heads"):
        loss(qkv_outputs([random_qkv(1, 2, 2)]), qkv_outputs([random_qkv(2, 2, 3)]), {})


# ------------------------------------------------------------------------------------------ attention_mse
@pytest.mark.parametrize("on", ["scores", "probs"])
def test_attention_mse_matches_reference(on: str) -> None:
    s1, s2 = random_qkv(13, 2, 2), random_qkv(14, 2, 2)
    t1, t2, t3 = random_qkv(15, 2, 3), random_qkv(16, 2, 3), random_qkv(17, 2, 3)
    loss = LOSSES.get("attention_mse").build({"on": on},
                                             LossContext(student_num_layers=2, teacher_num_layers=3))
    assert loss.pairs == [(1, 2), (2, 3)]  # uniform map, 2 of 3
    got = float(loss(qkv_outputs([s1, s2]), qkv_outputs([t1, t2, t3]), {}))
    want = ref.attention_mse([s1[:2], s2[:2]], [t2[:2], t3[:2]], MASK, on=on)
    assert got == pytest.approx(want, abs=ATOL)


def test_attention_mse_head_mean_matches_reference() -> None:
    s, tq = random_qkv(18, 1, 4), random_qkv(19, 2, 2)
    loss = LOSSES.get("attention_mse")(layer_map="last", on="probs", head_mode="mean")
    got = float(loss(qkv_outputs([s]), qkv_outputs([tq]), {}))
    assert got == pytest.approx(ref.attention_mse([s[:2]], [tq[:2]], MASK, on="probs", head_mean=True),
                                abs=ATOL)
    with pytest.raises(ValueError, match="head_mode: mean"):
        LOSSES.get("attention_mse")(layer_map="last")(qkv_outputs([s]), qkv_outputs([tq]), {})


def test_attention_mse_closed_form() -> None:
    # one head, d = 1, L = 2, no padding: student scores q_i k_j = [[1, 0], [2, 0]], teacher all zero:
    # mean of squares (1 + 0 + 4 + 0) / 4 = 1.25
    student = qkv_outputs([([[[[1.0], [2.0]]]], [[[[1.0], [0.0]]]], [[[[0.0], [0.0]]]])], [[1, 1]])
    zero = [[[[0.0], [0.0]]]]
    teacher = qkv_outputs([(zero, zero, zero)], [[1, 1]])
    assert float(LOSSES.get("attention_mse")(layer_map="last")(student, teacher, {})) == pytest.approx(1.25)


def test_attention_mse_rejects_layer_zero() -> None:
    with pytest.raises(ValueError, match="layer 0"):
        LOSSES.get("attention_mse").build({"layer_map": [[0, 0]]}, LossContext(student_num_layers=2,
                                                                               teacher_num_layers=2))


# ------------------------------------------------------------------------------------------ hidden (PKD)
def test_pkd_normalized_cls_matches_reference() -> None:
    rng = random.Random(20)
    hs = [ref.random_tensor(rng, 2, 3, 2) for _ in range(3)]  # hidden_states 0..2, (B, L, H)
    ht = [ref.random_tensor(rng, 2, 3, 2) for _ in range(5)]
    mask = [[0, 1, 1], [1, 1, 0]]  # example 1 is left-padded: its first real token is position 1
    student = ModelOutputs(hidden_states=tuple(t(h) for h in hs), attention_mask=torch.tensor(mask))
    teacher = ModelOutputs(hidden_states=tuple(t(h) for h in ht), attention_mask=torch.tensor(mask))
    loss = LOSSES.get("hidden").build({"pooling": "cls", "normalize": True, "layer_map": {"last": 2}},
                                      LossContext(student_hidden_size=2, teacher_hidden_size=2,
                                                  student_num_layers=2, teacher_num_layers=4))
    assert loss.pairs == [(1, 3), (2, 4)]
    got = float(loss(student, teacher, {}))
    assert got == pytest.approx(ref.pkd_hidden([hs[1], hs[2]], [ht[3], ht[4]], mask), abs=ATOL)


def test_normalized_mse_of_unit_vectors_is_two_minus_two_cos_over_width() -> None:
    # closed form: ||a - b||^2 = 2 - 2 cos for unit vectors; the mean over H = 2 features halves it
    s = ModelOutputs(hidden_states=(t([[[3.0, 4.0]]]),) * 2)
    tt = ModelOutputs(hidden_states=(t([[[1.0, 0.0]]]),) * 2)
    loss = LOSSES.get("hidden")(pooling="cls", normalize=True, layer_map="last")
    assert float(loss(s, tt, {})) == pytest.approx((2 - 2 * 0.6) / 2, abs=ATOL)


# ---------------------------------------------------------------------------------------------------- trg
def trg_inputs(seed: int, width_s: int = 2, width_t: int = 2):
    rng = random.Random(seed)
    hs, ht = ref.random_tensor(rng, 2, 3, width_s), ref.random_tensor(rng, 2, 3, width_t)
    student = ModelOutputs(hidden_states=(t(hs),), attention_mask=torch.tensor(MASK))
    teacher = ModelOutputs(hidden_states=(t(ht),), attention_mask=torch.tensor(MASK))
    return hs, ht, student, teacher


@pytest.mark.parametrize(("k", "sigma", "tau"), [(2, 1.0, 0.1), (1, 0.5, 0.5), (8, 2.0, 1.0)])
def test_trg_parts_match_reference(k: int, sigma: float, tau: float) -> None:
    hs, ht, student, teacher = trg_inputs(21)
    loss = LOSSES.get("trg")(k=k, sigma=sigma, tau=tau, inner_weight=0.5, local_weight=2.0,
                             global_weight=0.25)
    got = values(loss(student, teacher, {}))
    assert got["inner"] == pytest.approx(0.5 * ref.trg_inner(hs, ht, MASK), abs=ATOL)
    assert got["local"] == pytest.approx(2.0 * ref.trg_local(hs, ht, MASK, k, sigma), abs=ATOL)
    assert got["global"] == pytest.approx(0.25 * ref.trg_global(hs, ht, MASK, tau), abs=ATOL)


def test_trg_contextual_term_has_different_widths() -> None:
    hs, ht, student, teacher = trg_inputs(22, width_s=2, width_t=3)
    got = values(LOSSES.get("trg")(local_weight=0.0, global_weight=0.0)(student, teacher, {}))
    assert got == pytest.approx({"inner": ref.trg_inner(hs, ht, MASK)}, abs=ATOL)


def test_trg_global_at_identity_is_the_infonce_floor() -> None:
    # student == teacher: inner and local are 0, global is the teacher's own InfoNCE (> 0), as documented
    hs, _, student, _ = trg_inputs(23)
    got = values(LOSSES.get("trg")()(student, student, {}))
    assert got["inner"] == pytest.approx(0.0, abs=ATOL) and got["local"] == pytest.approx(0.0, abs=ATOL)
    assert got["global"] == pytest.approx(ref.trg_global(hs, hs, MASK, 0.1), abs=ATOL) and got["global"] > 0
