"""One shard's teacher outputs, collected batch by batch and already cut and cast to what the store keeps:
sparse top-k logits (with the exact log-normaliser), dense logits, embeddings, hidden states and Q/K/V of
the kept layers (valid tokens only, with per-example offsets), or the head codec's codes."""

from __future__ import annotations

from typing import Any

import torch

from distill.outputs import ModelOutputs, SparseLogits
from distill.store.codec import HeadCodec
from distill.store.spec import StoreError, StoreSpec


class ShardAccumulator:
    """Collects one shard's teacher outputs batch by batch, already truncated/cast for storage."""

    def __init__(self, spec: StoreSpec, codec: tuple[HeadCodec, str] | None = None):
        self.spec = spec
        self.codec = codec
        self.parts: dict[str, list[torch.Tensor]] = {}
        self.lengths: list[torch.Tensor] = []
        self.layout: dict[str, Any] | None = None
        self.count = 0  # examples added

    def _put(self, name: str, tensor: torch.Tensor) -> None:
        self.parts.setdefault(name, []).append(tensor.contiguous().cpu())

    def _cast(self, name: str, x: torch.Tensor) -> torch.Tensor:
        y = x.to(self.spec.torch_dtype)
        bad = ~torch.isfinite(y)
        if bool(bad.any()) and bool(torch.isfinite(x[bad]).any()):
            raise StoreError(
                f"teacher {name} overflow {self.spec.dtype} (max |value| {x.abs().max().item():.4g}); "
                "set store.dtype to bfloat16 or float32"
            )
        return y

    def add(self, out: ModelOutputs, n: int) -> None:
        spec = self.spec
        self.count += n
        layout: dict[str, Any] = {}
        mask: torch.Tensor | None = None  # (B, L) bool, for per-token fields

        def token_mask(like: torch.Tensor, what: str) -> torch.Tensor:
            nonlocal mask
            if mask is None:
                if out.attention_mask is None:
                    mask = torch.ones(like.shape[:2], dtype=torch.bool, device=like.device)
                else:
                    mask = out.attention_mask.to(like.device) != 0
            if tuple(mask.shape) != tuple(like.shape[:2]):
                raise ValueError(
                    f"{what} has shape {tuple(like.shape)} but attention_mask {tuple(mask.shape)}"
                )
            return mask

        if "logits" in spec.capture and self.codec is not None:
            codec, sha = self.codec
            h = out.extra.get("head_input")
            if h is None or h.dim() != 3 or h.shape[0] != n or h.shape[-1] != codec.hidden_size:
                got = None if h is None else tuple(h.shape)
                raise ValueError(
                    f"store codec {spec.codec!r}: compute must return extra['head_input'] of shape "
                    f"({n}, L, {codec.hidden_size}) (the input of the teacher's output layer); got {got}"
                )
            codes, scales = codec.encode(h.detach()[token_mask(h, "head_input")])
            self._put("head_codes", codes)
            self._put("head_scale", scales)
            layout["logits"] = {"num_classes": codec.vocab_size, "per_token": True, "sparse": False,
                                "k": codec.vocab_size, "codec": spec.codec, "codec_sha256": sha,
                                "hidden_size": codec.hidden_size}
        elif "logits" in spec.capture:
            z = out.logits
            if z is None or isinstance(z, SparseLogits):
                raise ValueError(
                    "compute must return dense teacher logits (a tensor) when the store keeps logits"
                )
            z = z.detach()
            if z.shape[0] != n or z.dim() not in (2, 3):
                raise ValueError(
                    f"compute returned logits of shape {tuple(z.shape)} for {n} examples; "
                    "expected (B, C) or (B, L, V)"
                )
            per_token = z.dim() == 3
            if per_token:
                z = z[token_mask(z, "logits")]  # (T, V): valid tokens, example-major
            c = z.shape[-1]
            sparse = spec.is_sparse(c)
            layout["logits"] = {
                "num_classes": c,
                "per_token": per_token,
                "sparse": sparse,
                "k": spec.topk if sparse else c,
            }
            if sparse:
                zf = z.float()  # ranking and log-normaliser in float32, over the full vector
                values, indices = zf.topk(spec.topk, dim=-1)  # (.., k) sorted descending
                stored = self._cast("logits", values)
                # The normaliser is taken over the full logits with the kept k replaced by their stored
                # (rounded) values: then exp(values - logsumexp) are exact probabilities of one logit vector
                # and never sum past 1. With the raw float32 normaliser, float16 rounding of large logits
                # (spacing 1/64 near 20) makes the kept mass exceed 1 by ~1%. Identical for float32 storage.
                lse = torch.logsumexp(zf.scatter(-1, indices, stored.float()), dim=-1)  # (..,)
                self._put("topk_values", stored)
                self._put("topk_indices", indices.to(torch.int32))  # int16 overflows LM vocabularies
                self._put("logsumexp", lse)
            else:
                self._put("logits", self._cast("logits", z))

        if "embeddings" in spec.capture:
            e = out.embeddings
            if e is None or e.dim() != 2 or e.shape[0] != n:
                got = None if e is None else tuple(e.shape)
                raise ValueError(
                    f"compute must return embeddings of shape ({n}, D) when the store keeps them; got {got}"
                )
            layout["embeddings"] = {"dim": e.shape[1]}
            self._put("embeddings", self._cast("embeddings", e.detach()))

        if "hidden_states" in spec.capture:
            hs = out.hidden_states
            if hs is None or len(hs) <= spec.layers[-1]:
                got = "none" if hs is None else f"{len(hs)}"
                raise ValueError(
                    f"the store keeps hidden_states layers {list(spec.layers)} but compute returned {got}; "
                    "run the teacher with output_hidden_states=True (item 0 = embeddings, i = layer i)"
                )
            hidden_size = None
            for layer in spec.layers:
                h = hs[layer]
                if h is None or h.dim() != 3 or h.shape[0] != n:
                    raise ValueError(f"hidden_states[{layer}] must be (B, L, H) for {n} examples")
                hidden_size = h.shape[-1]
                h = h.detach()[token_mask(h, f"hidden_states[{layer}]")]  # (T, H)
                self._put(f"hidden_{layer}", self._cast(f"hidden_states[{layer}]", h))
            layout["hidden_states"] = {"layers": list(spec.layers), "hidden_size": hidden_size}

        if "qkv" in spec.capture:
            qkv = out.qkv
            have = [] if qkv is None else [i + 1 for i, item in enumerate(qkv) if item is not None]
            missing = [layer for layer in spec.qkv_layers if layer not in have]
            if missing:
                raise ValueError(
                    f"the store keeps qkv layers {list(spec.qkv_layers)} but compute returned layers {have}; "
                    "run the teacher with forward_outputs(..., qkv_layers=spec.qkv_layers)"
                )
            assert qkv is not None
            shape = None
            for layer in spec.qkv_layers:
                for name, x in zip("qkv", qkv[layer - 1]):
                    if x.dim() != 4 or x.shape[0] != n:
                        raise ValueError(f"qkv layer {layer} {name} must be (B, heads, L, head_dim) "
                                         f"for {n} examples")
                    if shape is None:
                        shape = (x.shape[1], x.shape[3])
                    elif (x.shape[1], x.shape[3]) != shape:
                        raise ValueError(f"qkv layer {layer} {name} has {x.shape[1]} heads of {x.shape[3]}, "
                                         f"other layers {shape[0]} of {shape[1]}")
                    tokens = x.detach().transpose(1, 2)  # (B, L, heads, head_dim)
                    tokens = tokens[token_mask(tokens, f"qkv layer {layer} {name}")]  # (T, heads, head_dim)
                    self._put(f"{name}_{layer}", self._cast(f"qkv layer {layer} {name}", tokens))
            assert shape is not None
            layout["qkv"] = {"layers": list(spec.qkv_layers), "heads": shape[0], "head_dim": shape[1]}

        layout["per_token"] = mask is not None
        if mask is not None:
            self.lengths.append(mask.sum(dim=1).to(torch.int64).cpu())  # (B,)
        if self.layout is None:
            self.layout = layout
        elif self.layout != layout:
            raise ValueError(f"teacher outputs changed shape between batches: {self.layout} then {layout}")

    def _row_level(self, name: str) -> bool:
        """Whether part ``name`` has one entry per example (else one per valid token)."""
        if name == "embeddings":
            return True
        if name in ("logits", "topk_values", "topk_indices", "logsumexp"):
            return not self.layout["logits"]["per_token"]
        return False  # hidden states, Q/K/V and head codes are per token

    def finish(self, order: list[int] | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any], int | None]:
        """The shard's tensors. ``order[j]``: the position in the shard of the j-th example added (batches run
        in another order than the rows, e.g. by length); the tensors come back in row order."""
        assert self.layout is not None, "a shard has at least one batch"
        tensors = {name: torch.cat(chunks) for name, chunks in self.parts.items()}
        lengths = torch.cat(self.lengths) if self.layout["per_token"] else None
        if order is not None:
            perm = torch.argsort(torch.as_tensor(order, dtype=torch.int64))  # added index of row 0, 1, ...
            if sorted(order) != list(range(self.count)):
                raise ValueError(f"order must be a permutation of the shard's {self.count} rows")
            token_index = None
            if lengths is not None:
                starts = torch.cumsum(lengths, 0) - lengths  # (N,) first token of each added row
                token_index = torch.cat([torch.arange(int(starts[j]), int(starts[j] + lengths[j]))
                                         for j in perm.tolist()])
                lengths = lengths[perm]
            tensors = {name: t[perm] if self._row_level(name) else t[token_index]
                       for name, t in tensors.items()}
        num_tokens = None
        if lengths is not None:
            offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int64)
            torch.cumsum(lengths, dim=0, out=offsets[1:])
            tensors["offsets"] = offsets  # (N+1,)
            num_tokens = int(offsets[-1])
        return tensors, self.layout, num_tokens


# ------------------------------------------------------------------------------------------------ manifest
