"""Task-specific sections: ``causal_lm`` (chunking, sequence-level and on-policy KD, DDK) and ``vision``
(augmentation, augmented-view store, data-free students)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from distill.config.checks import check


@dataclass
class SequenceKDConfig:
    """``task: causal-lm``: sequence-level KD: the teacher continues a prefix of every training example once
    (kept on disk), and the student trains on those continuations (prompt tokens masked out)."""

    prompt_tokens: int = 32
    """Tokens of each training chunk given to the teacher as the prompt (chat rows use their own prompt)."""
    max_new_tokens: int = 64
    """Most tokens the teacher writes per prompt."""
    temperature: float = 0.0
    """Sampling temperature of the teacher (0: greedy)."""
    top_p: float = 1.0
    """Nucleus sampling threshold when temperature > 0."""
    keep_original: bool = True
    """Train on the original text as well as on the teacher's continuations."""

    def __post_init__(self) -> None:
        p = "causal_lm.sequence_kd"
        check(self.prompt_tokens > 0, f"{p}.prompt_tokens", self.prompt_tokens, "use a positive integer")
        check(self.max_new_tokens > 0, f"{p}.max_new_tokens", self.max_new_tokens, "use a positive integer")
        check(self.temperature >= 0, f"{p}.temperature", self.temperature, "use >= 0 (0 is greedy)")
        check(0 < self.top_p <= 1, f"{p}.top_p", self.top_p, "use (0, 1]")


@dataclass
class OnPolicyConfig:
    """``task: causal-lm``: on-policy distillation (GKD): part of the batches are written by the student
    and scored by the online teacher."""

    lmbda: float = 0.5
    """Probability that a batch is replaced by student-generated sequences (GKD's lambda; 1 = fully
    on-policy)."""
    max_new_tokens: int = 32
    """Tokens the student writes per prompt."""
    temperature: float = 1.0
    """Student sampling temperature (0: greedy)."""
    prompt_tokens: int = 16
    """Prompt length taken from plain-text chunks (chat rows use their own prompt)."""

    def __post_init__(self) -> None:
        p = "causal_lm.on_policy"
        check(0 <= self.lmbda <= 1, f"{p}.lmbda", self.lmbda, "use [0, 1]")
        check(self.max_new_tokens > 0, f"{p}.max_new_tokens", self.max_new_tokens, "use a positive integer")
        check(self.temperature >= 0, f"{p}.temperature", self.temperature, "use >= 0")
        check(self.prompt_tokens > 0, f"{p}.prompt_tokens", self.prompt_tokens, "use a positive integer")


@dataclass
class DDKConfig:
    """``task: causal-lm``: DDK domain re-weighting (METHODS.md 3.9): sample more from the domains where
    the student's loss trails the teacher's most, with a smoothed update and a floor per domain."""

    interval: int = 10
    """Optimisation steps between two re-weightings (the distillation interval K)."""
    alpha: float = 0.5
    """Smoothing: the new mixture is alpha * (re-weighted) + (1 - alpha) * uniform, so every domain keeps at
    least (1 - alpha) / N of the samples."""
    eval_chunks: int = 8
    """Held-out validation chunks per domain on which the student/teacher loss gap is measured."""

    def __post_init__(self) -> None:
        check(self.interval > 0, "causal_lm.ddk.interval", self.interval, "use a positive number of steps")
        check(0 < self.alpha <= 1, "causal_lm.ddk.alpha", self.alpha, "use (0, 1]; 0.5 is the usual value")
        check(self.eval_chunks > 0, "causal_lm.ddk.eval_chunks", self.eval_chunks, "use a positive integer")


@dataclass
class CausalLMConfig:
    """``task: causal-lm``: how text becomes next-token training data, and the LM-only distillation modes."""

    format: Literal["text", "chat"] = "text"
    """``text``: plain corpora (``data.text_column``) cut into chunks of ``chunk_length`` tokens; ``chat``:
    prompt/response rows (``prompt_column``, ``response_column``), only the response is trained."""
    chunk_length: int = 128
    """Tokens per training chunk (``text``), or most tokens per row (``chat``)."""
    prompt_column: str = "prompt"
    """``chat``: column with the instruction / user turn."""
    response_column: str = "response"
    """``chat``: column with the answer the student learns to write."""
    chat_template: bool = True
    """``chat``: render the prompt with the tokenizer's chat template when it has one."""
    domain_column: str | None = None
    """Column naming each row's domain: perplexity is reported per domain, and DDK re-weights them."""
    sequence_kd: SequenceKDConfig | None = None
    """Sequence-level KD from teacher-written continuations (generated once, stored)."""
    on_policy: OnPolicyConfig | None = None
    """On-policy distillation (GKD): needs the online teacher (``store.enabled: false``)."""
    ddk: DDKConfig | None = None
    """DDK domain re-weighting; needs ``domain_column``."""
    sample_prompts: list[str] = field(default_factory=lambda: ["To be, or not to be,", "The movie was"])
    """Prompts whose greedy continuations (from the saved models, via ``pipeline('text-generation')``) go
    into the report."""
    sample_tokens: int = 32
    """Tokens generated per sample prompt."""
    curve_steps: list[int] = field(default_factory=list)
    """Steps at which the distilled and the no-KD student are also scored on the held-out rows while they
    train: a learning curve in the report (and a paired test at each step), so a run shows which side of a
    KD / no-KD crossover its budget lands on. Reported only, never used to choose anything; with a
    constant learning rate (``train.lr_scheduler: constant_with_warmup`` and a warm-up in steps) each point is
    exactly what a run of that many steps gives."""

    def __post_init__(self) -> None:
        check(self.chunk_length >= 2, "causal_lm.chunk_length", self.chunk_length, "use at least 2 tokens")
        check(all(int(s) > 0 for s in self.curve_steps), "causal_lm.curve_steps", self.curve_steps,
               "give positive step numbers, e.g. [50, 100, 200]")
        check(self.sample_tokens > 0, "causal_lm.sample_tokens", self.sample_tokens, "use a positive integer")
        if self.ddk is not None:
            check(bool(self.domain_column), "causal_lm.domain_column", self.domain_column,
                   "DDK re-weights domains: name the column that holds each row's domain")


@dataclass
class AugmentConfig:
    """Per-sample seeded augmentation of image runs (the same seed always gives the same view)."""

    pad: int = 2
    """Random shift of up to ``pad`` pixels each way (zero padding, then crop). 0: no shift."""
    rotate: float = 0.0
    """Random rotation of up to this many degrees each way. 0: none."""
    cutout: int = 0
    """Side of a random square set to zero (cut-out). 0: none."""

    def __post_init__(self) -> None:
        check(self.pad >= 0, "vision.augment.pad", self.pad, "use >= 0 pixels")
        check(0 <= self.rotate <= 180, "vision.augment.rotate", self.rotate, "use 0-180 degrees")
        check(self.cutout >= 0, "vision.augment.cutout", self.cutout, "use >= 0 pixels")


@dataclass
class DataFreeConfig:
    """Data-free distillation (Genie): synthesise inputs from the teacher's BatchNorm statistics, distil on
    them, and report that student beside the one distilled on real data."""

    num_images: int = 256
    """Synthetic images to make. 256 (with the steps and epochs below) keeps the bench's data-free part to a
    few CPU minutes per seed; the student makes up for the small set by many augmented epochs
    (``epochs``)."""
    batch_size: int = 128
    """Images optimised together (one generator and one latent per image per batch); Genie's 128."""
    steps: int = 150
    """Optimisation steps per synthetic batch. Genie uses 4,000 at 224 px; on the MNIST bench, with the other
    defaults, 150 steps left the teacher agreeing with the drawn labels on ~80% of the images (three seeds;
    the earlier 50-step setting: 29-40%), at ~1 s a step for a batch of 128 on one busy CPU core."""
    learning_rate: float = 0.01
    """Adam learning rate of the generator; 0.01 is Genie's effective generator rate (METHODS.md Appendix A.8:
    the names of its two rate arguments are swapped in the code)."""
    latent_learning_rate: float | None = 0.1
    """Adam learning rate of the per-image latents (Genie's effective latent rate, 0.1); empty:
    ``learning_rate``."""
    latent_dim: int = 64
    """Width of each image's latent vector."""
    generator_width: int = 32
    """Channels of the generator's first feature map (halved in its last up-sampling stage). 32 rather than
    64: with 64 the generator cost as much per step as the teacher at 28x28; 32 did as well on the MNIST
    bench."""
    first_bn_weight: float = 10.0
    """Multiplier of the first BatchNorm layer's term in the statistics loss: DeepInversion's
    ``first_bn_multiplier`` (10). The first layer sees the pixels, so its statistics pin down stroke contrast
    and coverage. Chosen together with the two rates, the width and the steps (0.75 -> 0.94 on the bench,
    seed 0); its own share was not measured apart."""
    ce_weight: float = 1.0
    """Weight of a cross-entropy of the teacher's prediction to a label drawn per image (class conditioning,
    as in DeepInversion / ZeroQ; 0: Genie's statistics-only objective, which on MNIST gives images of few
    classes). Bench, seed 0, 150 steps, 40 student epochs: 1.0 -> 0.70, 0.3 -> 0.69, 5.0 -> 0.47."""
    tv_weight: float = 1.0
    """Weight of the total-variation image prior (mean squared difference of neighbouring pixels;
    DeepInversion)."""
    l2_weight: float = 0.0
    """Weight of the L2 image prior (mean squared pixel value; DeepInversion)."""
    jitter: int = 2
    """Random shift (pixels, wrapping) of the batch at each step before the teacher sees it; 0: none."""
    epochs: int | None = 160
    """Student epochs over the synthetic images (kd from the online teacher on seeded augmented views); empty:
    ``train.epochs``. The synthetic set is small, so the student needs many passes: on the bench (256 images,
    batch 64) 5 / 40 / 80 / 160 epochs gave 0.10 / 0.70 / 0.87 / 0.94 test accuracy (seed 0)."""

    def __post_init__(self) -> None:
        for name in ("num_images", "batch_size", "steps", "latent_dim"):
            check(getattr(self, name) > 0, f"vision.datafree.{name}", getattr(self, name),
                   "use a positive integer")
        check(self.learning_rate > 0, "vision.datafree.learning_rate", self.learning_rate, "use > 0")
        check(self.latent_learning_rate is None or self.latent_learning_rate > 0,
               "vision.datafree.latent_learning_rate", self.latent_learning_rate,
               "use > 0, or leave it empty")
        check(self.generator_width >= 2, "vision.datafree.generator_width", self.generator_width, "use >= 2")
        check(self.first_bn_weight >= 0, "vision.datafree.first_bn_weight", self.first_bn_weight, "use >= 0")
        check(self.ce_weight >= 0, "vision.datafree.ce_weight", self.ce_weight, "use >= 0")
        for name in ("tv_weight", "l2_weight", "jitter"):
            check(getattr(self, name) >= 0, f"vision.datafree.{name}", getattr(self, name), "use >= 0")
        check(self.epochs is None or self.epochs > 0, "vision.datafree.epochs", self.epochs, "use > 0")


@dataclass
class VisionConfig:
    """``task: image-classification``: augmentation, the TinyViT store of augmented views, data-free KD."""

    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Seeded augmentation applied to every training view (teacher and students see the same view)."""
    store_epochs: int | None = None
    """Epochs of augmented views kept in the store (seed + top-k teacher probabilities per image per epoch);
    training longer replays them in order. Default: ``train.epochs``."""
    datafree: DataFreeConfig | None = None
    """When set, also distil a student from synthetic images only (no training data) and report it."""

    def __post_init__(self) -> None:
        check(self.store_epochs is None or self.store_epochs > 0, "vision.store_epochs", self.store_epochs,
               "use a positive number of epochs, or leave it empty")
