"""The sections that shape training and what comes after it: losses, store, train, eval, export."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from distill.config.checks import check


@dataclass
class LossConfig:
    """One distillation signal. Extra keys are the loss's own parameters (``distill methods NAME``)."""

    name: str = ""
    """Registered loss name; ``distill methods`` lists them."""
    weight: float = 1.0
    """Multiplier of this loss in the total."""
    params: dict[str, Any] = field(default_factory=dict)
    """The loss's parameters (e.g. temperature); in YAML they may also be written beside ``name``."""

    def __post_init__(self) -> None:
        check(self.weight >= 0, f"losses[{self.name}].weight", self.weight, "use a non-negative weight")


@dataclass
class StoreConfig:
    """The teacher-output store: the teacher runs once, students train from disk."""

    enabled: bool = True
    """Train from stored teacher outputs (built first when missing). ``false``: run the teacher every step."""
    dir: str | None = None
    """Root folder of stores; each store lives in a sub-folder named by its key. Default
    ``$DISTILL_CACHE`` or ``~/.cache/distill/stores``."""
    topk: int = 0
    """Logits kept per example (per token for LMs). 0 or >= the number of classes keeps them all, exactly."""
    dtype: Literal["float16", "float32"] = "float16"
    """Storage precision of logits and features."""
    capture: list[str] = field(default_factory=lambda: ["logits"])
    """What to keep: ``logits``, ``embeddings``, ``hidden_states`` (the layers the losses use)."""
    reconstruct: Literal["spread", "topk"] = "spread"
    """How a top-k store becomes a target distribution: ``spread`` puts the missing mass evenly on the other
    classes (TinyViT); ``topk`` restricts teacher and student to the kept classes and renormalises."""
    shard_size: int = 4096
    """Examples per shard file (a killed build resumes at shard granularity)."""
    codec: Literal["topk", "head3", "head4", "head8"] = "topk"
    """Causal LMs: how per-token logits are kept. ``topk`` keeps the ``topk`` largest; ``head3`` / ``head4``
    / ``head8`` keep the input of the teacher's output layer at 3 / 4 / 8 bits per coordinate on average
    (218 / 290 / 578 bytes per token for a 576-wide model) plus the output layer once, and rebuild every
    logit when read: KL error 0.74% / 0.22% / 0.02% of the teacher's entropy on SmolLM2, against 24% for
    top-32 logits (bench/RESULTS.md). Needs the teacher's weights; ``topk`` must be 0."""

    def __post_init__(self) -> None:
        check(self.topk >= 0, "store.topk", self.topk, "use 0 (keep all) or a positive k")
        check(self.codec == "topk" or self.topk == 0, "store.topk", self.topk,
               f"codec {self.codec!r} keeps every logit; set store.topk: 0 (or use codec: topk)")
        check(self.shard_size > 0, "store.shard_size", self.shard_size, "use a positive integer")
        allowed = {"logits", "embeddings", "hidden_states"}
        for item in self.capture:
            check(item in allowed, "store.capture", item, f"choose from {sorted(allowed)}")


@dataclass
class FSDPConfig:
    """Fully sharded data parallel (FSDP2) when the run is launched on several processes (``torchrun`` or
    ``accelerate launch``); a single-process run ignores it, so one recipe serves both. The student's
    parameters, gradients and optimizer state are sharded over the processes, and an online teacher
    (``store.enabled: false``) is sharded with the same layer policy, frozen. Works on GPUs (NCCL) and on
    CPU processes (gloo)."""

    enabled: bool = False
    """Shard with FSDP2 instead of replicating with DDP."""
    layer_classes: list[str] = field(default_factory=list)
    """Module class names that each become one shard unit (e.g. ``[LlamaDecoderLayer]``); default: the
    model's own ``_no_split_modules``, its transformer block."""
    reshard_after_forward: bool = True
    """Free each unit's gathered weights after its forward (ZeRO-3-like memory); false keeps the student's
    gathered until the backward (ZeRO-2-like: faster, more memory). The teacher always reshards."""
    cpu_offload: bool = False
    """Keep the shards (and the optimizer state) in CPU memory between uses."""
    state_dict_type: Literal["FULL_STATE_DICT", "SHARDED_STATE_DICT"] = "FULL_STATE_DICT"
    """How checkpoints are written: one gathered file (loads anywhere) or one shard per process (faster,
    resumes with the same number of processes)."""


# fields left out of a stage fingerprint while off: stages finished before they existed stay valid
OFF_UNLESS_SET = ("group_by_length", "anchor", "neighbour_group")


@dataclass
class TrainConfig:
    """Student training (passed on to ``transformers.TrainingArguments``)."""

    epochs: float = 3.0
    """Passes over the training data. Measured on the text-classification bench (MiniLM-L6 student of a
    fine-tuned mpnet teacher, 18,557 rows with teacher-labelled in-domain text, 3 seeds each; runs of
    2026-12-01 and 12-02): 2 epochs 0.8647 test accuracy, 3 epochs 0.8731; the no-KD student with the same
    steps 0.8532 and 0.8584. The 3-layer student (layers 1, 3, 5 of MiniLM-L6), same rows: 2 epochs 0.8264,
    3 epochs 0.8341 (no-KD 0.8106 and 0.8092). More than 3 was not measured on 3 seeds."""
    max_steps: int = -1
    """Stop after this many optimisation steps (overrides epochs when > 0)."""
    batch_size: int = 32
    """Examples per device per micro-batch."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimisation step."""
    learning_rate: float = 5e-5
    """Peak AdamW learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    anchor: float = 0.0
    """Pull the student's weights toward where training started (L2-SP, Li et al. 2018): adds
    ``anchor * sum((w - w_start)**2)`` over every trained weight to each step's loss, so the student keeps
    more of what it knew before (e.g. a static or pre-trained student that should not forget general text
    while it learns the transfer text). Costs one copy of the trained weights. 0: off. Not for image students
    or sharded (FSDP / DeepSpeed) training."""
    warmup_ratio: float = 0.1
    """Fraction of steps spent warming up."""
    lr_scheduler: str = "linear"
    """Learning-rate schedule name understood by transformers (linear, cosine, constant, ...)."""
    seed: int = 42
    """Seed for initialisation, dropout and data order."""
    eval_batch_size: int = 64
    """Batch size for evaluation and for running the teacher into the store."""
    logging_steps: int = 25
    """Log every loss part every N steps."""
    save_steps: int = 200
    """Checkpoint every N steps so an interrupted run resumes (keeps the last two)."""
    resume: bool = True
    """Resume from the newest checkpoint in the output directory when one exists."""
    bf16: bool = False
    """Mixed precision in bfloat16 (GPU, or a CPU with bfloat16 instructions: AMX / AVX512-BF16). The forward
    runs in autocast; weights, optimiser state and the losses stay float32. Measured on 2 cores of an Intel
    Xeon with AMX (2026-12-03, bench/embeddings.py): MiniLM-L6 sentence-embedding training 1.8x the fp32 step
    speed with the same held-out agreement (seed 0). Not measured on CPUs without those instructions, where
    bfloat16 is converted in software and may be slower than float32: time a few steps first."""
    fp16: bool = False
    """Mixed precision in float16 (GPU)."""
    dropout: float | None = None
    """Dropout probability of the student while it trains (every ``nn.Dropout`` and the attention-dropout
    probabilities; :func:`distill.models.set_dropout`); ``None`` keeps the model's own (0.1 for BERT-like
    models). The exported student keeps its own config. Measured on MiniLM-L6 distilled from mpnet
    (bench/embeddings.py, 2026-12-04, seed 0): dropout 0 fits faster (2 epochs: held-out Spearman 0.810 and
    recall@10 0.344 against 0.805 and 0.336 with the model's 0.1) but generalises worse over a long run
    (16 epochs: 0.831 and 0.382 against 0.844 and 0.400; 0.2 gave 0.830 and 0.386), so the default keeps
    the model's own."""
    group_by_length: bool = False
    """Batch rows of similar length together (:class:`distill.training.sampling.LengthBucketSampler`: rows
    shuffled, sorted by length within buckets of 50 batches, the batches then shuffled each epoch), so a batch
    pads to less. Measured on the demo's 2-layer MiniLM student over short movie snippets, 2 CPU cores: 100
    steps in 28.9 s instead of 47.3 s. Off by default so a batch is a uniform sample of the rows; text rows of
    very mixed length gain the most; packed causal-LM chunks (all one length) gain nothing."""
    neighbour_group: int = 0
    """``task: sentence-embedding`` with a store: batches made of groups of this many rows the teacher finds
    nearest each other (:class:`distill.training.sampling.NeighbourGroupSampler`; every row still once per
    epoch), so the in-batch similarity losses see close pairs and not only unrelated ones: what nearest-
    neighbour recall depends on. The neighbours come from the stored teacher vectors (exact search within
    pools of 16,384 rows). 0: off (random batches); e.g. 8 with batch 32. Not with ``group_by_length``."""
    report_to: list[str] | None = None
    """Experiment trackers fed by transformers' own integrations (tensorboard, mlflow, wandb, ...; [] for
    none); logs go to OUTPUT_DIR/logs/<stage>. Default: [tensorboard] when it is installed, else []."""
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    """Sharded training over several processes (see :class:`FSDPConfig`); off: DDP."""
    extra_args: dict[str, Any] = field(default_factory=dict)
    """Any other ``TrainingArguments`` field, passed through (e.g. ``gradient_checkpointing: true``)."""

    def fingerprinted(self) -> dict[str, Any]:
        """The fields a training stage's fingerprint is built from: all but ``fsdp``, which changes where the
        weights live, not what training computes (tests/integration/test_fsdp.py), so a finished stage is
        reused whichever way it is launched, and stages finished before the field existed stay valid.
        The fields of ``OFF_UNLESS_SET`` are left out while off (how every stage trained before they existed),
        for the same reason."""
        return {k: v for k, v in self.__dict__.items()
                if k != "fsdp" and not (k in OFF_UNLESS_SET and not v) and not (k == "dropout" and v is None)}

    def __post_init__(self) -> None:
        check(self.epochs > 0, "train.epochs", self.epochs, "use a positive number")
        check(self.batch_size > 0, "train.batch_size", self.batch_size, "use a positive integer")
        check(self.gradient_accumulation_steps > 0, "train.gradient_accumulation_steps",
               self.gradient_accumulation_steps, "use a positive integer")
        check(self.learning_rate > 0, "train.learning_rate", self.learning_rate, "use > 0")
        number = isinstance(self.dropout, (int, float)) and not isinstance(self.dropout, bool)
        check(self.dropout is None or (number and 0 <= self.dropout < 1), "train.dropout", self.dropout,
              "use a probability in [0, 1), e.g. 0.0, or leave it out for the model's own")
        check(not isinstance(self.neighbour_group, bool) and isinstance(self.neighbour_group, int)
              and (self.neighbour_group == 0 or self.neighbour_group >= 2), "train.neighbour_group",
              self.neighbour_group, "use 0 (random batches) or a whole number >= 2, e.g. 8")
        check(not (self.neighbour_group and self.group_by_length), "train.neighbour_group",
              self.neighbour_group, "batches are grouped either by teacher neighbours or by length; set "
              "group_by_length: false or neighbour_group: 0")
        check(self.anchor >= 0, "train.anchor", self.anchor, "use 0 (off) or a positive weight, e.g. 0.01")
        check(not (self.anchor and (self.fsdp.enabled or self.extra_args.get("deepspeed"))), "train.anchor",
              self.anchor, "the pull toward the starting weights reads whole weights, which sharded training "
              "(train.fsdp, deepspeed) splits over processes; set anchor: 0")
        check(0 <= self.warmup_ratio < 1, "train.warmup_ratio", self.warmup_ratio, "use [0, 1)")
        check(not (self.bf16 and self.fp16), "train.fp16", self.fp16, "choose bf16 or fp16, not both")


@dataclass
class EvalConfig:
    """The comparison every run ends with: teacher vs distilled student vs no-KD student."""

    baseline: bool = True
    """Also train the same student on the labels alone with the same budget (the no-distillation baseline)."""
    latency_batch_sizes: list[int] = field(default_factory=lambda: [1, 32])
    """Batch sizes at which CPU latency is measured."""
    latency_repeats: int = 20
    """Rounds of timing (after warm-up): each round runs every model once per batch size, in random order,
    so load from other work lands on all models alike; the median over the rounds is reported, with the
    spread."""
    latency_min_seconds: float = 3.0
    """Keep adding timing rounds until this many seconds have passed (cheap models get more rounds, at most
    1000)."""
    latency_precision: float = 0.025
    """Then keep adding rounds until every median is known to this relative standard error (a busy machine
    needs more rounds), unless ``latency_max_seconds`` have passed; 0 turns it off."""
    latency_max_seconds: float = 60.0
    """The most time the rounds added for ``latency_precision`` may take."""
    latency_threads: int | None = None
    """torch threads during latency timing (default: what torch uses)."""
    probe_sets: list[str] = field(default_factory=lambda: [
        "movie_snippets", "tweet_snippets", "amazon_snippets", "nyt_snippets"])
    """``task: sentence-embedding``: packaged labelled sets on which a logistic-regression probe over each
    model's frozen embeddings is scored; empty to skip. Rows that are also training text are left out."""
    probe_rows: int = 1000
    """Rows drawn (stratified, fixed seed) from each probe set; 80% fit the probe, 20% score it."""
    agreement_pairs: int = 20000
    """Random pairs of held-out sentences whose cosine similarities are compared with the teacher's
    (Spearman)."""
    retrieval_k: int = 10
    """k of the retrieval agreement: recall of the teacher's k nearest held-out neighbours."""
    throughput_sentences: int = 512
    """Held-out sentences encoded (tokenising included, batch 32) to measure sentences per second."""

    def __post_init__(self) -> None:
        known = ("movie_snippets", "tweet_snippets", "amazon_snippets", "nyt_snippets")
        check(all(p in known for p in self.probe_sets), "eval.probe_sets", self.probe_sets,
               f"choose from {', '.join(known)}")
        check(self.probe_rows >= 20, "eval.probe_rows", self.probe_rows, "use at least 20 rows")
        check(self.agreement_pairs > 0, "eval.agreement_pairs", self.agreement_pairs, "use > 0")
        check(self.retrieval_k > 0, "eval.retrieval_k", self.retrieval_k, "use > 0")
        check(self.throughput_sentences > 0, "eval.throughput_sentences", self.throughput_sentences,
               "use > 0")
        check(all(b > 0 for b in self.latency_batch_sizes), "eval.latency_batch_sizes",
               self.latency_batch_sizes, "use positive batch sizes")
        check(self.latency_repeats > 0, "eval.latency_repeats", self.latency_repeats, "use > 0")
        check(self.latency_min_seconds >= 0, "eval.latency_min_seconds", self.latency_min_seconds, "use >= 0")
        check(0 <= self.latency_precision < 1, "eval.latency_precision", self.latency_precision,
              "use a relative error in [0, 1), e.g. 0.025; 0 turns it off")
        check(self.latency_max_seconds > 0, "eval.latency_max_seconds", self.latency_max_seconds, "use > 0")


@dataclass
class SelectConfig:
    """Choose the distillation weight and temperature on the validation split before the final training.

    Each candidate (a kd weight w, the ce term getting 1 - w, and a temperature) trains the student for a
    share of the full budget from the same start, reading the teacher from the store; the best on the
    validation split (``metric``) is then trained in full. Weight 0 (labels alone; for a causal LM the text
    alone) is always a candidate, so a teacher that would make the student worse is not followed blindly.
    Applies to classification and causal-LM recipes whose losses are one ``kd`` and one ``ce``."""

    enabled: bool = True
    """Run the selection (when the recipe's losses are kd + ce and a validation split exists)."""
    kd_weights: list[float] = field(default_factory=lambda: [0.0, 0.5, 0.9])
    """Weights of the kd term tried (ce gets 1 - w); 0 is added when missing. On the demo data (2026-11-30)
    0.9 won at 10% and 15% of the labels and 0.5 at 5%, so both stay in the grid; 0 keeps a blind teacher
    from being followed (tests/integration/test_blind_spot.py)."""
    temperatures: list[float] | None = None
    """Temperatures tried for every weight > 0. Default: [2.0] for classification, [1.0] for a causal LM
    (the temperature its kd default uses)."""
    fraction: float = 0.25
    """Share of the full training budget each candidate trains for (the demo uses 0.1 to fit its time; the
    final runs were not repeated per candidate, so how well a short run ranks them is not measured)."""
    metric: str | None = None
    """Validation metric: ``macro_f1`` (weighs every class alike, so a class the teacher misses counts) or
    ``accuracy``, maximised, for classification (default ``macro_f1``); ``perplexity`` of the validation
    chunks, minimised, for a causal LM (its default and only choice)."""

    def __post_init__(self) -> None:
        check(len(self.kd_weights) > 0 and all(0 <= w <= 1 for w in self.kd_weights), "select.kd_weights",
              self.kd_weights, "give weights in [0, 1], e.g. [0.0, 0.5, 0.9]")
        if self.temperatures is not None:
            check(len(self.temperatures) > 0 and all(t > 0 for t in self.temperatures),
                  "select.temperatures", self.temperatures, "give temperatures > 0, e.g. [1.0, 2.0, 4.0]")
        check(0 < self.fraction <= 1, "select.fraction", self.fraction, "use a share in (0, 1]")
        check(self.metric in (None, "macro_f1", "accuracy", "perplexity"), "select.metric", self.metric,
              "use macro_f1 or accuracy (classification) or perplexity (causal-lm)")

    def metric_for(self, task: str) -> str:
        """The validation metric this selection scores with for ``task``."""
        return self.metric or ("perplexity" if task == "causal-lm" else "macro_f1")

    def candidates(self, task: str = "text-classification") -> list[tuple[float, float | None]]:
        """(kd weight, temperature) pairs, labels alone (0, None) first."""
        temps = self.temperatures or ([1.0] if task == "causal-lm" else [2.0])
        out: list[tuple[float, float | None]] = [(0.0, None)]
        for w in self.kd_weights:
            if w > 0:
                out += [(float(w), float(t)) for t in temps]
        return out


@dataclass
class ExportConfig:
    """What is written for the student."""

    onnx: bool = False
    """Also export ``model.onnx`` (needs the ``onnx`` extra)."""
    model_card: bool = True
    """Write README.md with the recipe, the metrics and the citations of the losses used."""
