"""Loading Hugging Face classifiers and their configs, and running them into :class:`ModelOutputs`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from distill._dataclass_io import RecipeError
from distill.outputs import ModelOutputs
from distill.packaged import resolve_model


def load_config(name: str, field: str, revision: str | None = None, trust_remote_code: bool = False):
    """Load only the config (cheap), so shape and label checks run before any weights load."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(resolve_model(name), revision=revision,
                                          trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise RecipeError(
            f"{field}: could not load a model config from {name!r} ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0]}); give a hub id, a local directory with config.json, or "
            "packaged:NAME"
        ) from None


def load_tokenizer(name: str, revision: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(name), revision=revision,
                                         trust_remote_code=trust_remote_code)


def is_sequence_classifier(config) -> bool:
    archs = getattr(config, "architectures", None) or []
    return any(a.endswith("ForSequenceClassification") for a in archs)


def num_layers(config) -> int:
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        if hasattr(config, attr):
            return int(getattr(config, attr))
    raise RecipeError(f"cannot tell how many layers a {type(config).__name__} has")


def hidden_size(config) -> int | None:
    for attr in ("hidden_size", "d_model", "n_embd", "dim"):
        if hasattr(config, attr):
            return int(getattr(config, attr))
    return None


def label_maps(labels: list[str]) -> dict[str, Any]:
    return {
        "num_labels": len(labels),
        "id2label": {i: n for i, n in enumerate(labels)},
        "label2id": {n: i for i, n in enumerate(labels)},
    }


def config_labels(config) -> list[str] | None:
    """Class names of a fine-tuned classifier in id order, or None when it has generic LABEL_i names."""
    id2label = {int(k): v for k, v in (getattr(config, "id2label", None) or {}).items()}
    names = [str(id2label[i]) for i in sorted(id2label)]
    if not names or all(n == f"LABEL_{i}" for i, n in enumerate(names)):
        return None
    return names


def load_classifier(name: str, labels: list[str] | None = None, revision: str | None = None,
                    trust_remote_code: bool = False) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    kwargs = label_maps(labels) if labels else {}
    return AutoModelForSequenceClassification.from_pretrained(
        resolve_model(name), revision=revision, trust_remote_code=trust_remote_code, **kwargs
    )


def model_inputs(batch: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    keys = ("input_ids", "attention_mask", "token_type_ids")
    return {k: batch[prefix + k] for k in keys if prefix + k in batch}


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of every token counted over the real tokens only: a row left-padded inside a batch gets the
    positions it would have alone (0, 1, 2, ... from its first real token). Padding is masked out anyway: left
    padding gets 0, padding after the last real token repeats that token's position."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def accepts_position_ids(model: nn.Module) -> bool:
    """Whether ``model``'s forward takes ``position_ids`` (most causal LMs; not ALiBi models such as
    Bloom)."""
    import inspect

    try:
        return "position_ids" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


DROPOUT_ATTRIBUTES = ("attention_dropout", "dropout_prob", "dropout_p")
"""Numbers some modules keep as their attention-dropout probability instead of an ``nn.Dropout`` module."""


def set_dropout(model: nn.Module, p: float | None) -> int:
    """``train.dropout``: every ``nn.Dropout`` of ``model`` (and the attention-dropout probabilities its
    modules keep as numbers) set to ``p`` for training; ``None`` leaves the model's own. Only the modules
    change, not the saved config, so the exported student keeps its own dropout for later fine-tuning.
    Returns how many places were set (0 for ``None``)."""
    if p is None:
        return 0
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = float(p)
            count += 1
        for attr in DROPOUT_ATTRIBUTES:
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, float(p))
                count += 1
    return count


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Masked mean over tokens: (B, L, H) -> (B, H) (the sentence-transformers pooling)."""
    if mask is None:
        return hidden.mean(dim=1)
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def _upcast(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    if isinstance(x, (tuple, list)):
        return type(x)(_upcast(v) for v in x)
    return x


def _float32(out: ModelOutputs) -> ModelOutputs:
    """The half-precision tensors of a distill module's outputs as float32. Under ``train.bf16`` / ``fp16``
    accelerate runs the model's forward in autocast and converts a transformers model's outputs (a mapping)
    back to float32, but not a dataclass: without this, the losses of a sentence encoder would compute
    their cosines from bfloat16 vectors (3 significant digits), blurring the small similarity differences
    the similarity-structure losses train on."""
    for name in ("embeddings", "hidden_states", "attentions"):
        setattr(out, name, _upcast(getattr(out, name)))
    return out


def forward_outputs(model: nn.Module, inputs: dict[str, torch.Tensor], hidden: bool = False,
                    attentions: bool = False, embeddings: bool = False,
                    qkv_layers: Sequence[int] | str | None = None) -> ModelOutputs:
    """Run a HF model and wrap what the losses may read. ``embeddings`` are the mask-averaged last hidden
    states (B, H). ``attentions`` switches the model to eager attention first (sdpa returns none).
    ``qkv_layers`` (1-based layer numbers, or ``"all"``) captures those layers' query / key / value
    projections with forward hooks (:func:`distill.capture.capture_qkv`) into ``ModelOutputs.qkv``."""
    kwargs: dict[str, Any] = {}
    if hidden or embeddings:
        kwargs["output_hidden_states"] = True
    if attentions:
        from distill.capture import use_eager_attention

        use_eager_attention(model)
        kwargs["output_attentions"] = True
    qkv = None
    if qkv_layers is not None and (qkv_layers == "all" or len(qkv_layers)):
        from distill.capture import capture_qkv

        with capture_qkv(model, qkv_layers) as captured:
            out = model(**inputs, **kwargs)
        qkv = captured.result()
    else:
        out = model(**inputs, **kwargs)
    if isinstance(out, ModelOutputs):  # distill's own modules (sentence encoders) already speak ModelOutputs
        if qkv is not None:
            out.qkv = qkv
        return _float32(out)
    states = tuple(out.hidden_states) if out.hidden_states is not None and (hidden or embeddings) else None
    return ModelOutputs(
        logits=out.logits,
        hidden_states=states if hidden else None,
        attentions=tuple(out.attentions) if attentions and out.attentions else None,
        qkv=qkv,
        embeddings=mean_pool(states[-1], inputs.get("attention_mask")) if embeddings and states else None,
        attention_mask=inputs.get("attention_mask"),
    )
