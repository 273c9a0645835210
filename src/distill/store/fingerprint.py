"""Fingerprints that name a teacher-output store: same key <=> same stored bytes.

The key (:func:`store_key`) is the sha256 of a canonical JSON document holding

- the teacher's weights (:func:`fingerprint_model`: every state-dict tensor's name, dtype, shape and bytes,
  plus the model class and its config: e.g. ``layer_norm_eps`` changes outputs without changing weights);
- the tokenizer (:func:`fingerprint_tokenizer`: its full serialisation, special tokens, padding side,
  maximum length);
- the data (:func:`fingerprint_rows`: the text of every example, in order, and any other input field);
- the maximum sequence length and whatever else the caller passes as a keyword part;
- what is captured, the kept layers, k, storage dtype, shard size and reconstruction (all
  :class:`~distill.store.spec.StoreSpec` fields);
- :data:`FORMAT_VERSION`, so a change of on-disk layout never reads an old store.

Hashing never falls back to a random or time-based key: an input that cannot be hashed raises, because a
wrong key silently trains students on another teacher's outputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from distill.store.spec import StoreSpec

FORMAT_VERSION = 1
"""Bump whenever the on-disk layout or the meaning of a stored tensor changes."""

KEY_LENGTH = 20  # hex chars of sha256 kept in folder names: 80 bits, collisions are not a concern

# Config entries that name where or with what a model was saved, not what it computes.
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "_commit_hash")


def _canonical(value: Any) -> Any:
    """Turn a value into plain JSON types, deterministically, or raise."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, StoreSpec):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_canonical(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, bytes):
        return value.hex()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _canonical(dataclasses.asdict(value))
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # numpy arrays and scalars
        return value.tolist()
    if hasattr(value, "__fspath__"):
        return str(value)
    raise TypeError(
        f"cannot fingerprint a {type(value).__name__}; pass plain JSON-like values (str, numbers, lists, "
        "dicts, tensors) or a fingerprint string"
    )


def _canonical_json(value: Any) -> bytes:
    return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _tensor_bytes(name: str, tensor: torch.Tensor) -> memoryview:
    if tensor.device.type == "meta":
        raise ValueError(f"cannot fingerprint the model: {name!r} is on the meta device (weights not loaded)")
    if tensor.is_quantized or tensor.layout != torch.strided:
        raise ValueError(f"cannot fingerprint the model: {name!r} is not a dense tensor ({tensor.layout})")
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    # via uint8 so that dtypes numpy lacks (bfloat16, float8) hash too
    return memoryview(flat.view(torch.uint8).numpy())


def fingerprint_model(model: torch.nn.Module) -> str:
    """sha256 of the model class, its config and every state-dict tensor (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    h.update(f"{type(model).__module__}.{type(model).__qualname__}\n".encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        cfg = dict(config.to_dict())
        for key in _VOLATILE_CONFIG_KEYS:
            cfg.pop(key, None)
        h.update(_canonical_json(cfg) + b"\n")
    state = model.state_dict()
    if not state:
        raise ValueError(f"cannot fingerprint {type(model).__name__}: it has no weights (empty state dict)")
    for name in sorted(state):
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(
                f"cannot fingerprint the model: state-dict entry {name!r} is a {type(tensor).__name__}"
            )
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        h.update(_tensor_bytes(name, tensor))
    return h.hexdigest()


def fingerprint_tokenizer(tokenizer: Any) -> str:
    """sha256 of everything about a tokenizer that changes the ids or the padding the teacher sees."""
    parts: dict[str, Any] = {"class": f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}"}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # the full serialisation: vocab, merges, normaliser, pre-tokeniser, post-processor, added tokens
        parts["backend"] = backend.to_str()
    elif callable(getattr(tokenizer, "get_vocab", None)):
        parts["vocab"] = sorted(tokenizer.get_vocab().items())
        for attr in ("do_lower_case", "add_prefix_space"):
            if hasattr(tokenizer, attr):
                parts[attr] = getattr(tokenizer, attr)
    else:
        raise TypeError(
            f"cannot fingerprint a {type(tokenizer).__name__}: it has neither backend_tokenizer nor "
            "get_vocab(); pass a transformers tokenizer"
        )
    special = getattr(tokenizer, "special_tokens_map", None)
    if special is not None:
        parts["special_tokens"] = {
            k: (v if isinstance(v, (str, list)) else str(v)) for k, v in special.items()
        }
    for attr in ("padding_side", "truncation_side", "model_max_length", "chat_template"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            parts[attr] = value
    return hashlib.sha256(_canonical_json(parts)).hexdigest()


def fingerprint_rows(rows: Iterable[Any]) -> str:
    """sha256 of the examples, in order, as canonical JSON (one line per row; streamed, never all in memory).

    Pass whatever reaches the teacher: the text(s) and any other input field (e.g. ``{"text": ..., "pair":
    ...}``); labels can be left out, they do not change teacher outputs.
    """
    h = hashlib.sha256()
    count = 0
    for row in rows:
        h.update(_canonical_json(row))
        h.update(b"\n")
        count += 1
    h.update(f"rows={count}".encode())
    return h.hexdigest()


def store_key(*, spec: StoreSpec, **parts: Any) -> str:
    """Short sha256 naming a store: canonical JSON of ``parts`` + :data:`FORMAT_VERSION` + every spec field.

    Typical parts: ``teacher=fingerprint_model(m), tokenizer=fingerprint_tokenizer(t),
    data=fingerprint_rows(texts), max_length=128``. ``spec`` is required (keyword) so that what is captured,
    k and dtype can never be forgotten.
    """
    if not isinstance(spec, StoreSpec):
        raise TypeError(f"store_key needs spec=StoreSpec(...), got {type(spec).__name__}")
    doc = {"format_version": FORMAT_VERSION, "spec": spec.to_dict(), "parts": parts}
    return hashlib.sha256(_canonical_json(doc)).hexdigest()[:KEY_LENGTH]
