"""Data-free distillation after Genie (METHODS.md 3.11): make inputs from the teacher alone, then distil.

No training image is used. Images are synthesised batch by batch: a small generator ``G`` maps a *per-sample*
latent ``z_i`` to an image, and both ``G`` and the latents are optimised so that the statistics of every
BatchNorm layer's input on the synthetic batch match that layer's running statistics (what the teacher saw on
its real training data):

    L_BNS = sum_l ( ||mu_l(x) - mu_l^run||_2 + ||sigma_l(x) - sigma_l^run||_2 )

Genie optimises the generator and the latents jointly (the generator shares structure across samples, the
latents keep them diverse); so does this module: one Adam with two rates, Genie's effective 0.01 for the
generator and 0.1 for the latents (``learning_rate`` / ``latent_learning_rate``), cosine-annealed over
``steps``. The first BatchNorm layer's term is multiplied by ``first_bn_weight`` (default 10, DeepInversion's
``first_bn_multiplier``): it is the layer that sees the pixels. Images are made in the teacher's own input
space: the packaged CNNs are trained on [0, 1] pixels without normalisation, and the generator ends in a
sigmoid. Added to the statistics term:

- ``ce_weight`` (default 1.0): a cross-entropy of the teacher's prediction to a label drawn per image
  (class conditioning as in DeepInversion / ZeroQ). With the statistics term alone the images match the
  teacher's feature statistics but mostly fall in a few classes, and a student taught on them learns little
  of the others; 0 gives Genie's statistics-only objective.
- ``tv_weight`` (default 1.0) and ``l2_weight`` (default 0): DeepInversion's image priors, the mean squared
  difference of neighbouring pixels (total variation, smooth strokes instead of pixel noise) and the mean
  squared pixel value.
- ``jitter`` (default 2 px): each step the batch is shifted by a random offset (wrapping around) before the
  teacher sees it. Genie's swing convolution shifts the windows of the teacher's strided convolutions at
  random so the images do not fit one sampling grid; the packaged CNNs down-sample by max-pooling, so the
  same idea is applied to the input, as DeepInversion's jitter does.

Each BatchNorm2d layer of the teacher contributes to ``L_BNS`` (they are all hooked). After ``steps``
updates the batch is frozen; the student then learns with ``kd`` from the (online) teacher on seeded
augmented views of the images, for many epochs (``vision.datafree.epochs``, default 160): the set is small,
and on the MNIST bench the student's epochs mattered more than anything in the synthesis (bench/RESULTS.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class SynthesisSettings:
    num_images: int = 256
    batch_size: int = 128
    steps: int = 150
    learning_rate: float = 0.01
    latent_learning_rate: float | None = 0.1
    latent_dim: int = 64
    generator_width: int = 32
    first_bn_weight: float = 10.0
    ce_weight: float = 1.0
    tv_weight: float = 1.0
    l2_weight: float = 0.0
    jitter: int = 2
    seed: int = 0


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between horizontally and vertically neighbouring pixels."""
    return (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean()


class Generator(nn.Module):
    """latent (B, D) -> image (B, C, H, W) in [0, 1]: linear to a quarter-size map, two up-sampling convs
    (``base`` channels, then ``base // 2``)."""

    def __init__(self, latent_dim: int, channels: int, height: int, width: int, base: int = 64):
        super().__init__()
        self.h0, self.w0, self.base = max(height // 4, 1), max(width // 4, 1), base
        self.size = (height, width)
        self.fc = nn.Linear(latent_dim, base * self.h0 * self.w0)
        self.body = nn.Sequential(
            nn.BatchNorm2d(base),
            nn.Upsample(scale_factor=2), nn.Conv2d(base, base, 3, padding=1), nn.BatchNorm2d(base),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2), nn.Conv2d(base, base // 2, 3, padding=1), nn.BatchNorm2d(base // 2),
            nn.LeakyReLU(0.2),
            nn.Conv2d(base // 2, channels, 3, padding=1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(z.shape[0], self.base, self.h0, self.w0)
        x = self.body(x)
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return torch.sigmoid(x)


class BNStatistics:
    """Forward hooks on every BatchNorm2d of a model: the distance of each batch's input statistics to the
    layer's running statistics, summed over layers after each forward pass."""

    def __init__(self, model: nn.Module, first_weight: float = 1.0):
        self.losses: list[torch.Tensor] = []
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        self.weights = {id(m): (first_weight if i == 0 else 1.0) for i, m in enumerate(bns)}
        self.handles = [m.register_forward_hook(self._hook) for m in bns]
        if not self.handles:
            raise ValueError("data-free synthesis needs a teacher with BatchNorm2d layers (their running "
                             "statistics are the only trace of the training data)")

    def _hook(self, module: nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        x = inputs[0]
        mu = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
        self.losses.append(self.weights.get(id(module), 1.0) * (
            torch.norm(mu - module.running_mean, 2)
            + torch.norm(var.add(module.eps).sqrt() - module.running_var.add(module.eps).sqrt(), 2)))

    def pop(self) -> torch.Tensor:
        total = torch.stack(self.losses).sum()
        self.losses = []
        return total

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def synthesize(teacher: nn.Module, shape: tuple[int, int, int], num_classes: int, settings: SynthesisSettings,
               log: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Synthesise ``settings.num_images`` images for ``teacher`` (an ImageClassifier in eval mode, so its
    BatchNorm layers use — and keep — their running statistics). Returns images (N, C, H, W), the sampled
    labels (meaningful only with ce_weight > 0), the final BNS loss per batch, the share of images the teacher
    assigns to their drawn label, and the time taken."""
    c, h, w = shape
    teacher = teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    stats = BNStatistics(teacher, settings.first_bn_weight)
    gen = torch.Generator().manual_seed(settings.seed)
    images, labels, finals, hits = [], [], [], 0
    t0 = time.perf_counter()
    try:
        for b, start in enumerate(range(0, settings.num_images, settings.batch_size)):
            n = min(settings.batch_size, settings.num_images - start)
            torch.manual_seed(settings.seed * 100_003 + b)
            g = Generator(settings.latent_dim, c, h, w, base=settings.generator_width)
            z = torch.randn(n, settings.latent_dim, generator=gen).requires_grad_(True)
            y = torch.randint(0, num_classes, (n,), generator=gen)
            z_lr = settings.latent_learning_rate or settings.learning_rate
            opt = torch.optim.Adam([{"params": g.parameters()}, {"params": [z], "lr": z_lr}],
                                   lr=settings.learning_rate, betas=(0.5, 0.999))
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(settings.steps, 1))
            for _ in range(settings.steps):
                x = g(z)
                seen = x
                if settings.jitter:
                    dy, dx = torch.randint(-settings.jitter, settings.jitter + 1, (2,),
                                           generator=gen).tolist()
                    seen = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
                logits = teacher(pixel_values=seen).logits
                loss = stats.pop()
                if settings.ce_weight:
                    loss = loss + settings.ce_weight * F.cross_entropy(logits, y)
                if settings.tv_weight:
                    loss = loss + settings.tv_weight * total_variation(x)
                if settings.l2_weight:
                    loss = loss + settings.l2_weight * x.pow(2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            with torch.no_grad():  # in training mode, as optimised: the generator's BatchNorm layers use the
                x = g(z)  # batch's statistics (their running averages lag behind the last steps)
                hits += int((teacher(pixel_values=x).logits.argmax(-1) == y).sum())
                finals.append(float(stats.pop()))
            images.append(x.detach())
            labels.append(y)
            if log:
                log(f"data-free: batch {b + 1}, {start + n}/{settings.num_images} images, "
                    f"BNS loss {finals[-1]:.3f}")
    finally:
        stats.remove()
        for p in teacher.parameters():
            p.requires_grad_(True)
    return {"images": torch.cat(images), "labels": torch.cat(labels), "bns_loss": finals,
            "label_hit_rate": hits / max(settings.num_images, 1), "seconds": time.perf_counter() - t0}
