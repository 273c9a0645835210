"""train.dropout: the student's dropout while it trains, set on the modules (not the saved config)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.config import RecipeError, recipe_from_dict
from distill.models import set_dropout


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention_dropout = 0.1  # kept as a number (Llama-style), passed to the attention function


def test_sets_every_dropout_module_and_numeric_attention_dropout() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.Sequential(nn.Dropout(0.3)), _Attention())
    assert set_dropout(model, None) == 0 and model[1].p == 0.1  # None: the model's own
    assert set_dropout(model, 0.0) == 3
    assert model[1].p == 0.0 and model[2][0].p == 0.0 and model[3].attention_dropout == 0.0
    model.train()
    x = torch.ones(64, 4)
    torch.testing.assert_close(model[:3](x), model[:3](x))  # no dropout noise left in training mode


def test_bert_student_keeps_its_config_and_trains_without_noise(tiny_student) -> None:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_student)
    before = model.config.hidden_dropout_prob
    assert set_dropout(model, 0.0) > 0
    assert model.config.hidden_dropout_prob == before  # the exported student keeps its own dropout
    model.train()
    ids = torch.tensor([[2, 5, 6, 7, 3]])
    torch.testing.assert_close(model(input_ids=ids).last_hidden_state, model(input_ids=ids).last_hidden_state)


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5])
def test_bad_dropout_is_named(bad: float) -> None:
    with pytest.raises(RecipeError, match=r"train.dropout: .* \[0, 1\)"):
        recipe_from_dict({"teacher": {"model": "x"}, "student": {"model": "y"}, "data": {"train": "a.csv"},
                          "train": {"dropout": bad}})


def test_dropout_is_in_the_training_fingerprint_only_when_set() -> None:
    base = {"teacher": {"model": "x"}, "student": {"model": "y"}, "data": {"train": "a.csv"}}
    assert "dropout" not in recipe_from_dict(base).train.fingerprinted()  # older stages stay valid
    assert recipe_from_dict({**base, "train": {"dropout": 0.0}}).train.fingerprinted()["dropout"] == 0.0
