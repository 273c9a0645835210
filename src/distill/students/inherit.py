"""Build a student from the teacher: same embeddings and head, a chosen subset of its layers.

Works for any HF model whose layers live in one ``nn.ModuleList`` of ``num_hidden_layers`` blocks
(BERT, RoBERTa, MPNet, DistilBERT, ELECTRA, DeBERTa, Llama, GPT-2, ...): the list is found by its length,
and state-dict keys are renumbered, so no per-architecture code is needed.
"""

from __future__ import annotations

import copy

from torch import nn

from distill._dataclass_io import RecipeError
from distill.models import num_layers


def _layer_list_name(model: nn.Module, n: int) -> str:
    candidates = [name for name, mod in model.named_modules()
                  if isinstance(mod, nn.ModuleList) and len(mod) == n]
    if not candidates:
        raise RecipeError(f"could not find the {n} transformer layers of {type(model).__name__}")
    # the shortest name is the main stack (e.g. 'bert.encoder.layer', not a per-layer sub-list)
    return min(candidates, key=len)


def set_num_layers(config, n: int):
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        if hasattr(config, attr):
            setattr(config, attr, n)
            break
    # models with per-layer settings (e.g. layer_types in newer configs) must shrink with the stack
    for attr in ("layer_types",):
        value = getattr(config, attr, None)
        if isinstance(value, list) and len(value) > n:
            setattr(config, attr, value[:n])
    return config


def check_layers(layers: list[int], source_layers: int, source: str = "the teacher") -> None:
    bad = [i for i in layers if not 0 <= i < source_layers]
    if bad:
        raise RecipeError(
            f"student.layers: {bad} out of range; {source} has {source_layers} layers "
            f"(valid 0..{source_layers - 1})"
        )


def student_from_teacher(teacher: nn.Module, layers: list[int]) -> nn.Module:
    """A copy of ``teacher`` keeping only ``layers`` (0-based, in the given order)."""
    n = num_layers(teacher.config)
    check_layers(layers, n)
    prefix = _layer_list_name(teacher, n)
    config = set_num_layers(copy.deepcopy(teacher.config), len(layers))
    student = type(teacher)(config)
    state = {}
    for key, value in teacher.state_dict().items():
        if key.startswith(prefix + "."):
            idx_str, rest = key[len(prefix) + 1:].split(".", 1)
            idx = int(idx_str)
            if idx not in layers:
                continue
            key = f"{prefix}.{layers.index(idx)}.{rest}"
        state[key] = value.clone()
    missing, unexpected = student.load_state_dict(state, strict=False)
    # buffers that are recomputed (e.g. position ids) may be absent from the state dict; weights may not
    missing = [k for k in missing if not k.endswith(("position_ids", "inv_freq"))]
    if missing or unexpected:
        raise RecipeError(f"layer inheritance failed: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return student
