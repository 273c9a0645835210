"""Head-state codec: store what goes *into* the teacher's output layer, a few bits per coordinate.

A language-model teacher's next-token distribution is ``softmax(W h + b)``: ``h`` is the final hidden state
(H numbers, 576 for SmolLM2-135M) and ``W`` the output layer (V x H, V = 49,152 there). Top-k storage keeps
k of the V logits and has to guess the rest; for a small, uncertain teacher the missing mass is large (23%
of the probability at k = 32 on our benchmark text) and a uniform guess for it is far from the truth. This
codec keeps ``h`` instead, at ``bits`` per coordinate on average, plus ``W`` and ``b`` once per store.
Reading a row decodes ``h`` and multiplies by ``W``: every one of the V logits comes back, and the error is
the quantisation error of ``h`` seen through ``W``.

It is transform coding aimed at the quantity training uses, KL(teacher || reconstruction). All steps are
fitted once on calibration rows of the same store, then frozen:

1. a metric: for a small error ``e`` in ``h``, the KL is about ``e^T F e / 2`` with ``F`` the Fisher
   information of the softmax through ``W``; averaged over the calibration tokens, ``F`` turns "which
   directions of ``h`` matter to the distribution" into a matrix (some matter a thousand times more than
   others);
2. centre ``h`` and rotate it onto the principal axes of the calibration rows *in that metric*: coordinates
   that are uncorrelated and whose variances say how much KL each one's error costs;
3. share the bit budget (``bits * H`` per row) out greedily: each next bit goes to the coordinate whose
   expected error it lowers most (a Gaussian Lloyd-Max error table), so high-variance coordinates get 5 to 8
   bits and the tail 2 to 3;
4. divide each coordinate by its standard deviation and the row by its own RMS (one float16 per row), then
   map each coordinate to the nearest level of a Lloyd-Max quantiser (1-D k-means) fitted per bit width;
5. pack the level numbers as one bit stream: ``ceil(bits * H / 8)`` bytes.

Bytes per token: ``ceil(H * bits / 8) + 2``: 290 for H = 576 at 4 bits, 218 at 3. Measured on SmolLM2-135M
and 3,072 held-out tokens (bench/codec_variants.py): KL 0.0082 nats per token at 4 bits, 0.22% of the
teacher's entropy (3 bits: 0.74%; the same 4 bits with one width for all coordinates after a random
rotation: 1.08%; top-32 logits with the uniform tail: 24% at 196 bytes). The codec needs the teacher's
weights, so it is for open-weight teachers; a logit soft-cap after the output layer (Gemma 2) is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

CODEC_FILE = "codec.safetensors"
CODEC_BITS = {"head3": 3, "head4": 4, "head8": 8}


# Mean squared error of the Lloyd-Max quantiser of a unit Gaussian with 0..8 bits: 1..5 from Max (1960),
# 6..8 from the high-rate formula (pi * sqrt(3) / 2) * 4**-b. Used only to share the bit budget out.
_GAUSSIAN_MSE = (1.0, 0.3634, 0.1175, 0.03454, 0.009497, 0.002499, 0.000664, 0.000166, 0.0000415)
MAX_WIDTH = 8
FORMAT = 2  # format 1 (a random rotation, the same width for every coordinate) was never released


class CodecFormatError(ValueError):
    """A codec file this version cannot read (written by an older one): the store must be re-coded."""


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


def output_fisher(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  chunk: int = 256) -> torch.Tensor:
    """Mean over rows of the Fisher information of ``softmax(W h + b)`` with respect to ``h`` (H x H).

    For a small error ``e`` in ``h``, ``KL(p || p_hat) ~ e^T F e / 2`` with ``F = W^T (diag(p) - p p^T) W``;
    the mean over tokens is ``W^T diag(mean p) W - mean (W^T p)(W^T p)^T``, one V-sized pass per chunk.
    """
    w = weight.float()
    p_sum = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
    outer = torch.zeros(w.shape[1], w.shape[1], dtype=torch.float64, device=w.device)
    for i in range(0, hidden.shape[0], chunk):
        z = hidden[i:i + chunk].to(w.device).float() @ w.T
        p = torch.softmax(z if bias is None else z + bias.float(), dim=-1)
        p_sum += p.sum(0).double()
        g = (p @ w).double()
        outer += g.T @ g
    n = hidden.shape[0]
    w64 = w.double()
    return (w64.T * (p_sum / n)) @ w64 - outer / n


def allocate_widths(variances: torch.Tensor, budget: int, max_width: int = MAX_WIDTH) -> torch.Tensor:
    """Integer bit widths (summing to ``budget``) for coordinates of the given variances.

    Each extra bit of a coordinate lowers the expected squared error by ``variance * (mse[b] - mse[b + 1])``;
    those gains shrink with ``b``, so taking the ``budget`` largest gains over all (coordinate, bit) pairs
    gives every coordinate a prefix of its bits: the greedy (and, for these convex steps, optimal) split.
    """
    mse = torch.tensor(_GAUSSIAN_MSE[:max_width + 1], dtype=torch.float64)
    gains = variances.double().clamp_min(0).unsqueeze(1) * (mse[:-1] - mse[1:]).unsqueeze(0)  # (H, max_width)
    if not 0 <= budget <= gains.numel():
        raise ValueError(f"a budget of {budget} bits does not fit {variances.numel()} coordinates "
                         f"x {max_width}")
    order = torch.sort(gains.flatten(), descending=True, stable=True).indices[:budget]
    return torch.bincount(order // max_width, minlength=variances.numel())


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_WIDTH:
        raise ValueError(f"codec bits: {bits!r}; use 1 to {MAX_WIDTH} (stores offer 3, 4 and 8)")


def _width_groups(widths: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """(width, the coordinates of that width) for every width 1..8 some coordinate has."""
    return [(w, cols) for w in range(1, MAX_WIDTH + 1)
            if (cols := (widths == w).nonzero().squeeze(1)).numel()]


class HeadCodec:
    """Encode teacher final hidden states to packed codes and decode them back to full logits.

    Fitted pieces (all frozen after :meth:`fit`): ``mean`` (H,), ``transform`` (H, H) taking a centred row to
    decorrelated coordinates, ``inverse`` (H, H) back, ``std`` (H,) of each coordinate, ``widths`` (H,) bits
    per coordinate (0..8, summing to ``bits * H``) and ``levels`` (9, 256): row ``w`` holds the ``2**w``
    quantiser levels shared by the coordinates of width ``w``.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, mean: torch.Tensor,
                 transform: torch.Tensor, inverse: torch.Tensor, std: torch.Tensor, widths: torch.Tensor,
                 levels: torch.Tensor, bits: int):
        _check_bits(bits)
        hidden = weight.shape[1]
        widths = widths.long()
        if widths.shape != (hidden,) or int(widths.sum()) != bits * hidden:
            raise ValueError(f"codec widths must be {hidden} values summing to {bits * hidden} bits")
        self.weight, self.bias = weight.float(), None if bias is None else bias.float()
        self.mean, self.transform, self.inverse = mean.float(), transform.float(), inverse.float()
        self.std, self.widths, self.levels, self.bits = std.float(), widths, levels.float(), bits
        # bit i of the packed row is bit _bit[i] of coordinate _coord[i]
        dev = widths.device
        self._coord = torch.repeat_interleave(torch.arange(hidden, device=dev), widths)
        self._bit = torch.cat([torch.arange(int(w), device=dev) for w in widths.tolist()])
        self._groups = _width_groups(widths)

    @property
    def hidden_size(self) -> int:
        return self.weight.shape[1]

    @property
    def vocab_size(self) -> int:
        return self.weight.shape[0]

    @property
    def bytes_per_token(self) -> int:
        return (self.hidden_size * self.bits + 7) // 8 + 2

    # ------------------------------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, bits: int = 4,
            seed: int = 0, max_values: int = 400_000, metric: str = "fisher",
            fisher_tokens: int = 2048) -> HeadCodec:
        """Fit on calibration hidden states ``hidden`` (N, H) (real tokens only) of the teacher whose output
        layer is ``weight`` (V, H) and ``bias`` (V,) or None. ``metric="euclidean"`` skips the Fisher
        weighting (plain PCA of ``h``; kept for comparison, it loses about twice the KL).

        The Fisher information is averaged over ``fisher_tokens`` calibration tokens (a seeded subset; on
        SmolLM2 512 tokens code as well as 6,144) on the device of ``weight``: for a large vocabulary pass
        the output layer where it lives (a GPU). The codec itself is kept on the CPU."""
        h = hidden.detach().float().reshape(-1, hidden.shape[-1])
        if h.shape[0] < 2:
            raise ValueError("the head codec needs at least two calibration tokens")
        if h.shape[1] != weight.shape[1]:
            raise ValueError(f"hidden states have {h.shape[1]} features but the output layer takes "
                             f"{weight.shape[1]}")
        _check_bits(bits)
        if metric not in ("fisher", "euclidean"):
            raise ValueError(f"codec metric: {metric!r}; use 'fisher' or 'euclidean'")
        mean = h.mean(0)
        centred = (h - mean).double()
        # 1. a metric in which squared error is KL: whiten by the head's mean Fisher information
        if metric == "fisher":
            pick = torch.randperm(h.shape[0], generator=torch.Generator().manual_seed(seed))[:fisher_tokens]
            fisher = output_fisher(h[pick.sort().values].to(weight.device), weight.detach(),
                                   None if bias is None else bias.detach())
            f, u = torch.linalg.eigh(fisher.cpu())
        else:
            f, u = torch.ones(h.shape[1], dtype=torch.float64), torch.eye(h.shape[1], dtype=torch.float64)
        root = f.clamp_min(float(f.max()) * 1e-8).sqrt()
        # 2. principal axes of the calibration rows in that metric, largest variance first
        lam, q = torch.linalg.eigh(torch.cov((centred @ (u * root)).T, correction=0))
        lam, q = lam.flip(0).clamp_min(0), q.flip(1)
        transform = (u * root) @ q
        inverse = q.T @ (u / root).T
        std = lam.sqrt().clamp_min(float(lam.max().sqrt()) * 1e-6 + 1e-12)
        # 3. bits where the variance is: about half a bit more per doubling of a coordinate's std
        widths = allocate_widths(lam, bits * h.shape[1])
        z = (centred @ transform) / std
        z = (z / z.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-12)).float()
        # 4. a Lloyd-Max quantiser per width, over the calibration values of that width's coordinates
        levels = torch.zeros(MAX_WIDTH + 1, 2 ** MAX_WIDTH)
        g = torch.Generator().manual_seed(seed)
        for w, cols in _width_groups(widths):
            flat = z[:, cols].flatten()
            # a seeded subsample: the quantiser needs the shape, not every value
            if flat.numel() > max_values:
                flat = flat[torch.randperm(flat.numel(), generator=g)[:max_values]]
            levels[w, :2 ** w] = _lloyd_max(flat, 2 ** w)
        return cls(weight.detach().cpu(), None if bias is None else bias.detach().cpu(), mean,
                   transform.float(), inverse.float(), std.float(), widths, levels, bits)

    # ---------------------------------------------------------------------------------------- coding
    def encode(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, H) hidden states -> (codes (T, ceil(H*bits/8)) uint8, row scales (T,) float16)."""
        z = ((hidden.detach().float().to(self.mean.device) - self.mean) @ self.transform) / self.std
        # rounded first, so the codes are taken against the stored scale
        rms = z.pow(2).mean(-1).sqrt().half()
        z = z / rms.float().clamp_min(1e-12).unsqueeze(-1)
        codes = torch.zeros(z.shape, dtype=torch.long, device=z.device)
        for w, cols in self._groups:
            lv = self.levels[w, :2 ** w]
            codes[:, cols] = torch.bucketize(z[:, cols], (lv[1:] + lv[:-1]) / 2)
        bitrow = (codes[:, self._coord] >> self._bit) & 1  # (T, bits * H)
        pad = (-bitrow.shape[1]) % 8
        bitrow = torch.nn.functional.pad(bitrow, (0, pad)).view(z.shape[0], -1, 8)
        packed = (bitrow << torch.arange(8, device=z.device)).sum(-1).to(torch.uint8)
        return packed.contiguous(), rms

    def decode(self, codes: torch.Tensor, rms: torch.Tensor) -> torch.Tensor:
        """Codes (..., bytes) and scales (...,) -> hidden states (..., H) float32."""
        lead, dev = codes.shape[:-1], self.mean.device
        flat = codes.reshape(-1, codes.shape[-1]).to(dev, torch.uint8)
        shifts = torch.arange(8, dtype=torch.uint8, device=dev)
        bitrow = ((flat.unsqueeze(-1) >> shifts) & 1).flatten(1)[:, :self._coord.numel()]
        values = torch.zeros(flat.shape[0], self.hidden_size, dtype=torch.long, device=dev)
        values.index_add_(1, self._coord, bitrow.long() << self._bit)
        z = self.levels.flatten()[self.widths * 2 ** MAX_WIDTH + values]  # width-0 coordinates read 0
        z = z * rms.reshape(-1, 1).to(dev).float() * self.std
        return (z @ self.inverse + self.mean).reshape(*lead, self.hidden_size)

    def logits(self, codes: torch.Tensor, rms: torch.Tensor) -> torch.Tensor:
        """Codes and scales -> the teacher's full logits (..., V) float32."""
        h = self.decode(codes, rms)
        out = h @ self.weight.T
        return out if self.bias is None else out + self.bias

    def to(self, device: torch.device | str) -> HeadCodec:
        """A copy that decodes on ``device`` (a GPU run decodes there: the V-wide product is the cost)."""
        t = {k: v.to(device) for k, v in self.tensors().items() if k not in ("bits", "format")}
        return HeadCodec(t["weight"], t.get("bias"), t["mean"], t["transform"], t["inverse"], t["std"],
                         t["widths"], t["levels"], self.bits)

    # ------------------------------------------------------------------------------------------- files
    def tensors(self) -> dict[str, torch.Tensor]:
        t = {"weight": self.weight, "mean": self.mean, "transform": self.transform, "inverse": self.inverse,
             "std": self.std, "widths": self.widths, "levels": self.levels, "bits": torch.tensor(self.bits),
             "format": torch.tensor(FORMAT)}
        if self.bias is not None:
            t["bias"] = self.bias
        return {k: v.contiguous() for k, v in t.items()}

    @classmethod
    def load(cls, path: str | Path) -> HeadCodec:
        from safetensors.torch import load_file

        t = load_file(str(path))
        if "format" not in t or int(t["format"]) != FORMAT:
            found = int(t["format"]) if "format" in t else 1
            raise CodecFormatError(f"{path} is a format-{found} head codec; this distill reads format "
                                   f"{FORMAT}: rebuild the store (the next run re-codes it)")
        return cls(t["weight"], t.get("bias"), t["mean"], t["transform"], t["inverse"], t["std"], t["widths"],
                   t["levels"], int(t["bits"]))


def output_layer(model: torch.nn.Module, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight (V, H), bias (V,) or None) of a Hugging Face LM's output layer, cut to ``vocab_size`` rows.

    Refuses models whose logits are not the output layer's plain result (a soft-cap after it, as in Gemma 2),
    since the codec rebuilds logits as ``W h + b``.
    """
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    if cap:
        raise ValueError(
            f"the teacher caps its logits after the output layer (final_logit_softcapping={cap}); the head "
            "codec cannot rebuild them: use store.codec: topk"
        )
    head = model.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"the teacher's output layer is a {type(head).__name__}, not a Linear; "
                         "use store.codec: topk")
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
