"""Forward-hook capture of what a Hugging Face encoder computes inside its layers.

:func:`capture_qkv` hooks the query / key / value projections of chosen self-attention layers and hands their
outputs to the losses (``ModelOutputs.qkv``). Those outputs are the projections themselves: taken before the
softmax and before attention dropout, which HF's ``output_attentions`` cannot give in training mode
(METHODS.md, pitfall 12: the returned attention probabilities are post-dropout). MiniLM, MiniLMv2 and the
attention-map MSE recompute what they need from them.

The projections are found by name, not by model class: in each transformer layer, the module whose direct
children are linear layers called ``query/key/value`` (BERT, RoBERTa, ELECTRA, XLM-R), ``q/k/v`` (MPNet),
``q_lin/k_lin/v_lin`` (DistilBERT) or ``q_proj/k_proj/v_proj`` (many newer models). Models with one fused
QKV matrix are not supported and say so.

:func:`use_eager_attention` is the other half: transformers 5 runs ``sdpa`` by default, which returns no
attention probabilities, so a model asked for ``output_attentions`` is switched to the ``eager`` kernel.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from distill.outputs import QKV

PROJECTION_NAMES: tuple[tuple[str, str, str], ...] = (
    ("query", "key", "value"),
    ("q", "k", "v"),
    ("q_lin", "k_lin", "v_lin"),
    ("q_proj", "k_proj", "v_proj"),
)
_HEAD_ATTRS = ("num_attention_heads", "n_heads", "num_heads")


@dataclass(frozen=True)
class AttentionProjections:
    """One self-attention block: its query / key / value linear modules and how many heads it has."""

    path: str
    query: nn.Module
    key: nn.Module
    value: nn.Module
    num_heads: int


def _config(model: nn.Module):
    for module in model.modules():  # the model itself, or the HF model inside a wrapper
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "to_dict"):
            return config
    return None


def _heads(module: nn.Module, path: str, config) -> int:
    for attr in _HEAD_ATTRS:
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    for attr in ("num_attention_heads", "n_heads", "num_heads"):
        value = getattr(config, attr, None) if config is not None else None
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(f"cannot tell how many attention heads {path or 'the model'} has")


def find_attention_projections(model: nn.Module) -> list[AttentionProjections]:
    """The self-attention blocks of ``model`` in layer order (item i-1 is layer i)."""
    config = _config(model)
    found: list[AttentionProjections] = []
    for path, module in model.named_modules():
        children = dict(module.named_children())
        for names in PROJECTION_NAMES:
            mods = [children.get(n) for n in names]
            if all(isinstance(m, nn.Linear) for m in mods):
                found.append(AttentionProjections(path, *mods, num_heads=_heads(module, path, config)))
                break
    if not found:
        raise ValueError(
            f"no query/key/value projections found in {type(model).__name__}: capture looks for linear "
            f"layers named {', '.join('/'.join(n) for n in PROJECTION_NAMES)} inside each attention block; "
            "models with a fused QKV matrix are not supported"
        )
    expected = None
    if config is not None:
        for attr in ("num_hidden_layers", "n_layers", "num_layers", "n_layer"):
            if isinstance(getattr(config, attr, None), int):
                expected = getattr(config, attr)
                break
    if expected is not None and len(found) != expected:
        raise ValueError(
            f"found {len(found)} query/key/value blocks in {type(model).__name__} but its config has "
            f"{expected} layers (cross-attention or a decoder?); capture supports encoder models with one "
            "self-attention per layer"
        )
    return found


class QKVCapture:
    """What :func:`capture_qkv` collected; :meth:`result` turns it into ``ModelOutputs.qkv``."""

    def __init__(self, blocks: list[AttentionProjections], layers: list[int]):
        self.blocks = blocks
        self.layers = layers
        # (layer, 0=q 1=k 2=v) -> (B, L, heads * head_dim)
        self._raw: dict[tuple[int, int], torch.Tensor] = {}

    def _hook(self, layer: int, which: int):
        def hook(module: nn.Module, args, output: torch.Tensor) -> None:
            # The projection output itself: computed from the layer's input, before softmax and dropout.
            self._raw[(layer, which)] = output

        return hook

    def result(self) -> tuple[QKV | None, ...]:
        """One entry per layer of the model: ``(q, k, v)`` each (B, heads, L, head_dim), None where not
        captured."""
        items: list[QKV | None] = [None] * len(self.blocks)
        for layer in self.layers:
            raw = [self._raw.get((layer, w)) for w in range(3)]
            if any(r is None for r in raw):
                continue  # the layer did not run (e.g. a truncated forward)
            heads = self.blocks[layer - 1].num_heads
            split = []
            for r in raw:
                b, length, width = r.shape  # (B, L, heads * head_dim)
                if width % heads:
                    raise ValueError(f"layer {layer}: projection width {width} is not a multiple of "
                                     f"{heads} heads")
                # (B, heads, L, head_dim)
                split.append(r.view(b, length, heads, width // heads).transpose(1, 2))
            items[layer - 1] = (split[0], split[1], split[2])
        return tuple(items)


@contextmanager
def capture_qkv(model: nn.Module, layers: Sequence[int] | str = "all") -> Iterator[QKVCapture]:
    """Hook the Q/K/V projections of ``layers`` (1-based, as in ``hidden_states``; ``"all"``: every layer) for
    the forward passes run inside the block; the hooks are removed on exit, also on error.

    ::

        with capture_qkv(model, [6]) as cap:
            out = model(**inputs)
        q, k, v = cap.result()[5]  # layer 6, each (B, heads, L, head_dim)
    """
    blocks = find_attention_projections(model)
    wanted = list(range(1, len(blocks) + 1)) if layers == "all" else sorted({int(i) for i in layers})
    for layer in wanted:
        if not 1 <= layer <= len(blocks):
            raise ValueError(f"qkv layer {layer} is out of range 1..{len(blocks)}")
    cap = QKVCapture(blocks, wanted)
    handles = []
    try:
        for layer in wanted:
            block = blocks[layer - 1]
            for which, module in enumerate((block.query, block.key, block.value)):
                handles.append(module.register_forward_hook(cap._hook(layer, which)))
        yield cap
    finally:
        for handle in handles:
            handle.remove()


def use_eager_attention(model: nn.Module) -> bool:
    """Switch every HF model inside ``model`` to the eager attention kernel, the only one that returns
    attention probabilities in transformers 5 (``sdpa`` returns none). Returns True when something was
    switched.

    The switch is permanent (it is what the caller asked attentions for) and costs speed: eager attention
    materialises the (B, heads, L, L) matrix. Models with their own attention code (MPNet) return attention
    probabilities anyway and are left alone."""
    switched = False
    for module in model.modules():
        config = getattr(module, "config", None)
        setter = getattr(module, "set_attn_implementation", None)
        if config is None or setter is None:
            continue
        if getattr(config, "_attn_implementation", "eager") in (None, "eager"):
            continue
        setter("eager")
        switched = True
    return switched
