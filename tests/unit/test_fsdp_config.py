"""train.fsdp: validated in the recipe, mapped to TrainingArguments only when several processes run, and the
optimizer-group helper that keeps projectors out of FSDP's sharded optimizer state."""

from __future__ import annotations

import pytest
import torch

from distill._dataclass_io import RecipeError, from_dict
from distill.config import TrainConfig
from distill.training import fsdp
from distill.training.args import fsdp_arguments


def test_fsdp_section_is_validated():
    cfg = from_dict(TrainConfig, {"fsdp": {"enabled": True, "layer_classes": ["LlamaDecoderLayer"],
                                           "state_dict_type": "SHARDED_STATE_DICT"}})
    assert cfg.fsdp.enabled and cfg.fsdp.layer_classes == ["LlamaDecoderLayer"]
    with pytest.raises(RecipeError, match="train.fsdp.state_dict_type"):
        from_dict(TrainConfig, {"fsdp": {"state_dict_type": "LOCAL"}}, "train")
    with pytest.raises(RecipeError, match="unknown field train.fsdp.shard"):
        from_dict(TrainConfig, {"fsdp": {"shard": True}}, "train")


def test_fsdp_arguments_only_with_several_processes(monkeypatch):
    cfg = from_dict(TrainConfig, {"fsdp": {"enabled": True, "reshard_after_forward": False}})
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert fsdp_arguments(cfg) == {}  # one process: the Trainer would refuse to shard; the recipe still runs
    monkeypatch.setenv("WORLD_SIZE", "4")
    got = fsdp_arguments(cfg)
    assert got["fsdp"] is True
    assert got["fsdp_config"] == {"version": 2, "reshard_after_forward": False, "cpu_offload": False,
                                  "state_dict_type": "FULL_STATE_DICT"}
    assert fsdp_arguments(TrainConfig()) == {}  # off by default


def test_without_group_takes_the_projector_group_out_and_puts_it_back():
    model, proj = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    opt = torch.optim.AdamW([{"params": model.parameters()}])
    opt.add_param_group({"params": list(proj.parameters()), "weight_decay": 0.0})
    for p in [*model.parameters(), *proj.parameters()]:
        p.grad = torch.ones_like(p)
    opt.step()
    before = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in proj.parameters()}
    with fsdp.without_group(opt, list(proj.parameters())) as taken:
        assert len(opt.param_groups) == 1 and all(p not in opt.state for p in proj.parameters())
        saved = fsdp.group_state_dict(taken)
        # what a resumed run does: fresh state for the group, then the saved one loaded into it
        for p in taken["group"]["params"]:
            taken["state"][p] = {"step": torch.tensor(0.0)}
        fsdp.load_group_state(taken, saved)
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["weight_decay"] == 0.0
    for p in proj.parameters():
        for k, v in before[id(p)].items():
            torch.testing.assert_close(opt.state[p][k], v)
    with fsdp.without_group(opt, []) as nothing:
        assert nothing is None and len(opt.param_groups) == 2


def test_load_group_state_refuses_another_recipe():
    proj = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD([{"params": list(proj.parameters())}], lr=0.1)
    with fsdp.without_group(opt, list(proj.parameters())) as taken:
        with pytest.raises(ValueError, match="1 projector parameters saved, 2 in this run"):
            fsdp.load_group_state(taken, {"hyper": {}, "state": [{}]})
