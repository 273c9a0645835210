"""Behaviour of the relation losses that the registry-wide contract cannot check with one call: TRG's
temperature annealing (state across calls) and token sampling (random)."""

from __future__ import annotations

import pytest
import torch

from distill.losses import LOSSES
from distill.outputs import ModelOutputs

MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])


def _outputs(seed: int, width: int = 4) -> ModelOutputs:
    g = torch.Generator().manual_seed(seed)
    return ModelOutputs(hidden_states=(torch.randn(2, 5, width, generator=g),), attention_mask=MASK)


def test_trg_tau_falls_linearly_during_training_only():
    loss = LOSSES.get("trg")(tau=0.2, tau_start=1.0, anneal_steps=4)
    s, t = _outputs(0), _outputs(1)
    seen = []
    for _ in range(6):
        seen.append(loss.current_tau())
        loss(s, t, {})
    assert seen == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2, 0.2])
    loss.eval()
    loss(s, t, {})
    with torch.no_grad():
        loss.train()(s, t, {})
    assert int(loss.step) == 6  # neither evaluation nor no_grad calls advance the schedule
    assert "step" in loss.state_dict()  # saved with the distiller, so a resumed run continues the schedule


def test_trg_without_tau_start_keeps_tau():
    loss = LOSSES.get("trg")(tau=0.3, anneal_steps=10)
    for _ in range(3):
        loss(_outputs(0), _outputs(1), {})
    assert loss.current_tau() == 0.3


def test_trg_samples_real_tokens_only():
    loss = LOSSES.get("trg")(tokens_per_example=2)
    torch.manual_seed(0)
    for _ in range(20):
        nodes = loss._nodes(MASK != 0)
        assert len(nodes) == 4
        rows, cols = nodes // 5, nodes % 5
        assert (rows == torch.tensor([0, 0, 1, 1])).all()
        assert bool((MASK[rows, cols] == 1).all())
    everything = LOSSES.get("trg")(tokens_per_example=5)._nodes(MASK != 0)
    assert everything.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    value = loss(_outputs(0), _outputs(1), {})
    assert all(torch.isfinite(v) for v in value.values())


def test_trg_same_layer_identity_is_zero_without_the_global_term():
    s = _outputs(2)
    value = LOSSES.get("trg")(global_weight=0.0)(s, s, {})
    assert set(value) == {"inner", "local"} and all(float(v) < 1e-6 for v in value.values())
