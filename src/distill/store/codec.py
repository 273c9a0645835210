"""Head-state codec: store what goes *into* the teacher's output layer, a few bits per coordinate.

A language-model teacher's next-token distribution is ``softmax(W h + b)``: ``h`` is the final hidden state
(H numbers, 576 for SmolLM2-135M) and ``W`` the output layer (V x H, V = 49,152 there). Top-k storage keeps
k of the V logits and has to guess the rest; for a small, uncertain teacher the missing mass is large (23%
of the probability at k = 32 on our benchmark text) and a uniform guess for it is far from the truth. This
codec keeps ``h`` instead, at ``bits`` per coordinate, plus ``W`` and ``b`` once per store. Reading a row
decodes ``h`` and multiplies by ``W``: every one of the V logits comes back, and the error is the quantisation
error of ``h`` seen through ``W``.

Coding one row (all steps fitted once on calibration rows of the same store, then frozen):

1. centre by the calibration mean and rotate by a fixed random orthogonal matrix ``R`` (seeded): a final
   hidden state has a few outlier channels, the rotation spreads their energy over all coordinates;
2. divide each rotated coordinate by its calibration standard deviation, then the whole row by its own RMS
   (kept as one float16 per row);
3. map each coordinate to the nearest of ``2**bits`` levels, the Lloyd-Max quantiser of the calibration
   values (1-D k-means): denser levels where values are common, which halves the squared error of a
   uniform grid at 4 bits;
4. pack the level numbers, two per byte at 4 bits.

Bytes per token: ``H * bits / 8 + 2`` (290 for H = 576 at 4 bits). Measured on SmolLM2-135M and 3,072
held-out tokens (bench/causal_lm.py's text), 4 bits: KL(teacher || reconstruction) 0.040 nats per token,
1.1% of the teacher's entropy; top-32 logits with the uniform tail: 0.90 nats at 196 bytes; top-128: 0.40
nats at 772 bytes. The codec needs the teacher's weights, so it is for open-weight teachers; a logit
soft-cap after the output layer (Gemma 2) is refused by the caller.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

CODEC_FILE = "codec.safetensors"
CODEC_BITS = {"head4": 4, "head8": 8}


def _random_rotation(dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()  # sign fix: a proper Haar sample, deterministic


def _lloyd_max(values: torch.Tensor, levels: int, iters: int = 60) -> torch.Tensor:
    """Levels (sorted) of the 1-D k-means quantiser of ``values``, started at evenly spaced quantiles."""
    x = values.double().flatten().sort().values
    c = torch.quantile(x, torch.linspace(0.5 / levels, 1 - 0.5 / levels, levels, dtype=x.dtype))
    for _ in range(iters):
        cells = torch.bucketize(x, (c[1:] + c[:-1]) / 2)
        sums = torch.zeros(levels, dtype=x.dtype).index_add_(0, cells, x)
        counts = torch.bincount(cells, minlength=levels).to(x.dtype)
        new = torch.where(counts > 0, sums / counts.clamp_min(1), c)
        if torch.allclose(new, c, rtol=0, atol=1e-9):
            break
        c = new.sort().values
    return c.float()


class HeadCodec:
    """Encode teacher final hidden states to packed codes and decode them back to full logits."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, mean: torch.Tensor, scale: torch.Tensor,
                 rotation: torch.Tensor, levels: torch.Tensor, bits: int):
        if bits not in (4, 8):
            raise ValueError(f"codec bits: {bits!r}; use 4 or 8")
        hidden = weight.shape[1]
        if bits == 4 and hidden % 2:
            raise ValueError(f"a 4-bit codec packs two coordinates per byte; hidden size {hidden} is odd")
        self.weight, self.bias = weight.float(), None if bias is None else bias.float()
        self.mean, self.scale, self.rotation = mean.float(), scale.float(), rotation.float()
        self.levels, self.bits = levels.float(), bits
        self._bounds = (self.levels[1:] + self.levels[:-1]) / 2

    @property
    def hidden_size(self) -> int:
        return self.weight.shape[1]

    @property
    def vocab_size(self) -> int:
        return self.weight.shape[0]

    @property
    def bytes_per_token(self) -> int:
        return self.hidden_size * self.bits // 8 + 2

    # ------------------------------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, bits: int = 4,
            seed: int = 0, max_values: int = 400_000) -> HeadCodec:
        """Fit on calibration hidden states ``hidden`` (N, H) (real tokens only) of the teacher whose output
        layer is ``weight`` (V, H) and ``bias`` (V,) or None."""
        h = hidden.detach().float().reshape(-1, hidden.shape[-1])
        if h.shape[0] < 2:
            raise ValueError("the head codec needs at least two calibration tokens")
        if h.shape[1] != weight.shape[1]:
            raise ValueError(f"hidden states have {h.shape[1]} features but the output layer takes {weight.shape[1]}")
        mean = h.mean(0)
        rotation = _random_rotation(h.shape[1], seed)
        z = (h - mean) @ rotation
        scale = z.std(0).clamp_min(1e-6)
        z = z / scale
        z = z / z.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)
        flat = z.flatten()
        if flat.numel() > max_values:  # a seeded subsample: the quantiser needs the shape, not every value
            g = torch.Generator().manual_seed(seed)
            flat = flat[torch.randperm(flat.numel(), generator=g)[:max_values]]
        levels = _lloyd_max(flat, 2 ** bits)
        return cls(weight.detach(), None if bias is None else bias.detach(), mean, scale, rotation, levels, bits)

    # ---------------------------------------------------------------------------------------- coding
    def encode(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, H) hidden states -> (codes (T, H*bits/8) uint8, row scales (T,) float16)."""
        z = ((hidden.detach().float() - self.mean) @ self.rotation) / self.scale
        rms = z.pow(2).mean(-1).sqrt().half()  # rounded first, so the codes are taken against the stored scale
        z = z / rms.float().clamp_min(1e-12).unsqueeze(-1)
        codes = torch.bucketize(z, self._bounds).to(torch.uint8)  # (T, H) level numbers
        if self.bits == 4:
            codes = codes[:, 0::2] | (codes[:, 1::2] << 4)
        return codes.contiguous(), rms

    def decode(self, codes: torch.Tensor, rms: torch.Tensor) -> torch.Tensor:
        """Codes (..., H*bits/8) and scales (...,) -> hidden states (..., H) float32."""
        codes = codes.to(torch.uint8)
        if self.bits == 4:
            codes = torch.stack([codes & 15, codes >> 4], dim=-1).flatten(-2)
        z = self.levels[codes.long()] * rms.float().unsqueeze(-1) * self.scale
        return z @ self.rotation.T + self.mean

    def logits(self, codes: torch.Tensor, rms: torch.Tensor) -> torch.Tensor:
        """Codes and scales -> the teacher's full logits (..., V) float32."""
        h = self.decode(codes, rms)
        out = h @ self.weight.T
        return out if self.bias is None else out + self.bias

    # ------------------------------------------------------------------------------------------- files
    def tensors(self) -> dict[str, torch.Tensor]:
        t = {"weight": self.weight, "mean": self.mean, "scale": self.scale, "rotation": self.rotation,
             "levels": self.levels, "bits": torch.tensor(self.bits)}
        if self.bias is not None:
            t["bias"] = self.bias
        return {k: v.contiguous() for k, v in t.items()}

    @classmethod
    def load(cls, path: str | Path) -> HeadCodec:
        from safetensors.torch import load_file

        t = load_file(str(path))
        return cls(t["weight"], t.get("bias"), t["mean"], t["scale"], t["rotation"], t["levels"], int(t["bits"]))


def output_layer(model: torch.nn.Module, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight (V, H), bias (V,) or None) of a Hugging Face LM's output layer, cut to ``vocab_size`` rows.

    Refuses models whose logits are not the output layer's plain result (a soft-cap after it, as in Gemma 2),
    since the codec rebuilds logits as ``W h + b``.
    """
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    if cap:
        raise ValueError(
            f"the teacher caps its logits after the output layer (final_logit_softcapping={cap}); the head codec "
            "cannot rebuild them: use store.codec: topk"
        )
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"the teacher's output layer is a {type(head).__name__}, not a Linear; use store.codec: topk")
    bias = None if head.bias is None else head.bias.detach()[:vocab_size]
    return head.weight.detach()[:vocab_size], bias


def forward_with_head_input(model: torch.nn.Module, **inputs: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """Run ``model(**inputs)`` and return (its outputs, the input its output layer received)."""
    seen: list[torch.Tensor] = []
    handle = model.get_output_embeddings().register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        out = model(**inputs)
    finally:
        handle.remove()
    if len(seen) != 1:
        raise RuntimeError(f"the output layer ran {len(seen)} times in one forward; expected once")
    return out, seen[0]
