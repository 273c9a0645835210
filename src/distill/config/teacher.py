"""The teacher section: a model (fine-tuned here first when asked) or a black-box endpoint."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from distill._dataclass_io import RecipeError
from distill.config.checks import check


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
        check(self.epochs > 0, "teacher.finetune.epochs", self.epochs, "use a positive number")
        check(self.learning_rate > 0, "teacher.finetune.learning_rate", self.learning_rate, "use > 0")
        check(self.batch_size > 0, "teacher.finetune.batch_size", self.batch_size, "use a positive integer")
        check(0 <= self.warmup_ratio < 1, "teacher.finetune.warmup_ratio", self.warmup_ratio, "use [0, 1)")


DEFAULT_BLACKBOX_PROMPT = (
    "Classify the text into exactly one of these labels: {labels}.\n"
    "Answer with the label only.\n\n"
    "Text: {text}\n"
    "Label:"
)
_PROMPT_FIELDS = {"text", "text_pair", "labels"}
_PRICE_KEYS = {"input", "output"}
_MEMBER_FIELDS = {"name", "weight", "prompt", "system_prompt", "model", "base_url", "local_model",
                  "api_key_env", "temperature", "max_tokens", "demonstrations", "demonstration_selection"}


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
    """Most estimated spend (in the currency of ``prices``) over the whole response store; as
    ``max_calls``."""
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
    calibration: Literal["none", "prior", "contextual"] = "none"
    """Rescale the teacher's label distribution (one weight per class) before it becomes the target:
    ``prior`` matches the mean distribution over the training and unlabelled texts to ``calibration_prior``
    (default: the label shares of the labelled training rows); ``contextual`` divides by the teacher's
    answer distribution on content-free inputs (Zhao et al. 2021; a few extra calls, stored like every
    answer). Needs ``soft_labels``. The report shows the teacher's test accuracy, macro-F1 and confusion
    matrix before and after."""
    calibration_prior: dict[str, float] | None = None
    """``calibration: prior``: target label shares, e.g. ``{negative: 0.5, positive: 0.5}`` (normalised to
    sum to 1). Empty: estimated from the labelled training rows (what a user with a few labels has)."""
    keep_human_labels: bool = True
    """Where a training row has a human label, the student's hard label (``ce``) is that label and the
    teacher's distribution stays the soft target (``kd``): the few labels a user has are never overridden by
    the teacher. False: the teacher's labels everywhere (a student of the teacher alone)."""
    content_free_inputs: list[str] = field(default_factory=lambda: ["N/A", "", "[MASK]"])
    """``calibration: contextual``: the inputs that carry no content (Zhao et al. 2021's choice)."""
    demonstrations: int = 0
    """Show the teacher this many labelled training rows (human labels) before each text, as earlier turns
    of the chat: the prompt filled with the example's text, answered by its label. 0: zero-shot. The
    examples are part of the messages, so they are part of each answer's response-store key. A text is never
    shown as its own example."""
    demonstration_selection: Literal["balanced", "random", "nearest"] = "balanced"
    """How the examples are picked for each text: ``balanced`` cycles through the classes (a random example
    of each in turn, so no label dominates the prompt: few-shot prompts lean toward the majority label of
    their examples, Zhao et al. 2021), ``random`` draws uniformly, ``nearest`` takes the labelled rows
    closest to the text under ``demonstration_encoder`` (most similar last, next to the text). Seeded by
    ``demonstration_seed`` and the text itself, so a rerun asks the same prompts."""
    demonstration_encoder: str = "sentence-transformers/all-MiniLM-L6-v2"
    """``demonstration_selection: nearest``: the sentence encoder that finds the neighbours, run locally (a
    hub id, a local sentence-transformers directory, or ``packaged:NAME``)."""
    demonstration_seed: int = 0
    """Seed of the example draw (``balanced`` and ``random``)."""
    min_confidence: float = 0.0
    """Abstention: a training text whose teacher confidence (the largest label probability, after
    calibration; for an ensemble the combined one) is below this is treated as ``abstain`` says. Rows with a
    human label are never affected. Needs ``soft_labels`` or an ``ensemble``. 0: every answer counts."""
    abstain: Literal["drop", "soft_only"] = "drop"
    """What happens to a text below ``min_confidence``: ``drop`` leaves it out of the distilled student's
    training; ``soft_only`` keeps the teacher's distribution as its soft target (``kd``) but gives it no
    hard label, so ``ce`` skips it (the answer counts less than a confident one)."""
    ensemble: list[dict[str, Any]] = field(default_factory=list)
    """Several teachers or prompts answering the same texts. Each entry overrides fields of this section for
    one member: ``name``, ``weight`` (default 1), ``prompt``, ``system_prompt``, ``model``, ``base_url``,
    ``local_model``, ``api_key_env``, ``temperature``, ``max_tokens``, ``demonstrations``,
    ``demonstration_selection``. Every member is calibrated on its own (when ``calibration`` is set), then
    the answers are combined by ``combine``. The report shows each member's test accuracy and its agreement
    with the others and with the combination. Empty: one teacher, this section."""
    combine: Literal["mean", "vote"] = "mean"
    """``ensemble``: ``mean`` averages the members' label distributions (their soft labels, or one-hot of
    their answer), weighted by ``weight``; ``vote`` makes the weighted vote shares the distribution. The
    combined label is the arg-max; a text no member answered is left out."""

    def __post_init__(self) -> None:
        from urllib.parse import urlparse

        p = "teacher.blackbox"
        if self.local_model:
            check(not self.base_url, f"{p}.base_url", self.base_url,
                   f"give either {p}.base_url (an endpoint) or {p}.local_model, not both")
        else:
            url = urlparse(self.base_url)
            check(url.scheme in ("http", "https") and bool(url.netloc), f"{p}.base_url", self.base_url,
                   f"give an http(s) URL such as https://api.openai.com/v1, or set {p}.local_model")
            check(bool(self.model), f"{p}.model", self.model, "name the model the endpoint serves")
        if self.api_key_env:
            import re

            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", self.api_key_env):
                # it may be the key itself: never echo it
                raise RecipeError(f"{p}.api_key_env: give the *name* of an environment variable holding the "
                                  "key (e.g. OPENAI_API_KEY), not the key; the value given is not shown")
            if not os.environ.get(self.api_key_env):
                raise RecipeError(f"{p}.api_key_env: the environment variable {self.api_key_env} is not set; "
                                  f"run `export {self.api_key_env}=...` first (the key is read from the "
                                  "environment only, never from the recipe)")
        if self.calibration != "none":
            check(self.soft_labels, f"{p}.calibration", self.calibration,
                  f"calibration rescales the teacher's probabilities; set {p}.soft_labels: true (the "
                  "endpoint must return log-probabilities)")
        check(self.calibration_prior is None or self.calibration == "prior", f"{p}.calibration_prior",
              self.calibration_prior, f"it is the target of {p}.calibration: prior; set that or drop it")
        if self.calibration_prior is not None:
            check(bool(self.calibration_prior) and all(v > 0 for v in self.calibration_prior.values()),
                  f"{p}.calibration_prior", self.calibration_prior,
                  "give a positive share for every label, e.g. {negative: 0.5, positive: 0.5}")
        check(self.calibration != "contextual" or bool(self.content_free_inputs), f"{p}.content_free_inputs",
              self.content_free_inputs, 'give at least one input, e.g. ["N/A", "", "[MASK]"]')
        if "text" not in _prompt_fields(self.prompt, f"{p}.prompt"):
            raise RecipeError(f"{p}.prompt: the template has no {{text}} placeholder, so the teacher would "
                              "never see the input; add {text}")
        if self.system_prompt:
            _prompt_fields(self.system_prompt, f"{p}.system_prompt")
        for label, words in self.label_synonyms.items():
            check(isinstance(words, list) and all(isinstance(w, str) and w.strip() for w in words),
                   f"{p}.label_synonyms.{label}", words, "give a list of non-empty words")
        check(self.max_concurrency > 0, f"{p}.max_concurrency", self.max_concurrency,
               "use a positive integer")
        if self.max_calls is not None:
            check(self.max_calls >= 0, f"{p}.max_calls", self.max_calls, "use >= 0 (or leave it empty)")
        if self.max_cost is not None:
            check(self.max_cost >= 0, f"{p}.max_cost", self.max_cost, "use >= 0 (or leave it empty)")
            check(bool(self.prices), f"{p}.max_cost", self.max_cost,
                   f"a cost cap needs {p}.prices, e.g. {{input: 0.15, output: 0.60}} per million tokens")
        for key, value in self.prices.items():
            check(key in _PRICE_KEYS, f"{p}.prices", key, f"use the keys {sorted(_PRICE_KEYS)}")
            check(isinstance(value, (int, float)) and value >= 0, f"{p}.prices.{key}", value,
                   "use a non-negative price per million tokens")
        check(self.timeout > 0, f"{p}.timeout", self.timeout, "use a positive number of seconds")
        check(self.max_retries >= 0, f"{p}.max_retries", self.max_retries, "use >= 0")
        check(self.temperature >= 0, f"{p}.temperature", self.temperature, "use >= 0")
        check(self.max_tokens > 0, f"{p}.max_tokens", self.max_tokens, "use a positive integer")
        check(1 <= self.top_logprobs <= 20, f"{p}.top_logprobs", self.top_logprobs, "use 1 to 20")
        check(0 <= self.demonstrations <= 64, f"{p}.demonstrations", self.demonstrations,
              "use 0 (zero-shot) to 64 examples per prompt, e.g. 4")
        check(0 <= self.min_confidence < 1, f"{p}.min_confidence", self.min_confidence,
              "use a probability in [0, 1), e.g. 0.6")
        if self.min_confidence > 0:
            check(self.soft_labels or bool(self.ensemble), f"{p}.min_confidence", self.min_confidence,
                  f"a confidence needs a distribution: set {p}.soft_labels: true or give {p}.ensemble")
        self.members()  # every ensemble entry checked now, before anything loads

    def members(self) -> list[tuple[str, float, BlackBoxConfig]]:
        """The ensemble as (name, weight, configuration) per member; one member (this section, weight 1)
        without ``ensemble``."""
        import dataclasses

        p = "teacher.blackbox.ensemble"
        if not self.ensemble:
            return [(self.model or str(self.local_model), 1.0, self)]
        check(len(self.ensemble) >= 2, p, f"{len(self.ensemble)} entry",
              "give at least two members, or leave ensemble out for one teacher")
        out, names = [], set()
        for i, entry in enumerate(self.ensemble):
            check(isinstance(entry, dict), f"{p}.{i}", entry, "give a mapping, e.g. {prompt: ..., weight: 1}")
            unknown = sorted(set(entry) - _MEMBER_FIELDS)
            check(not unknown, f"{p}.{i}", unknown[0] if unknown else None,
                  f"a member may set {sorted(_MEMBER_FIELDS)}")
            weight = entry.get("weight", 1.0)
            check(isinstance(weight, (int, float)) and weight > 0, f"{p}.{i}.weight", weight,
                  "use a positive number")
            overrides = {k: v for k, v in entry.items() if k not in ("name", "weight")}
            if "local_model" in overrides:
                overrides.setdefault("base_url", "")
            elif "base_url" in overrides:
                overrides.setdefault("local_model", None)
            try:
                member = dataclasses.replace(self, ensemble=[], **overrides)
            except RecipeError as exc:
                raise RecipeError(f"{p}.{i}: {exc}") from None
            name = str(entry.get("name") or f"member{i}")
            check(name not in names, f"{p}.{i}.name", name, "give each member its own name")
            names.add(name)
            out.append((name, float(weight), member))
        return out


@dataclass
class TeacherConfig:
    """The model whose behaviour the student learns."""

    model: str = ""
    """Hugging Face model id or local directory. A fine-tuned sequence classifier, or (with ``finetune``) a
    pre-trained encoder to fine-tune first. Leave empty with ``blackbox``."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to pin; part of the store key."""
    finetune: FinetuneConfig | None = None
    """When set, fine-tune ``model`` on the labelled train split first (``distill finetune`` does this
    alone)."""
    trust_remote_code: bool = False
    """Passed to ``from_pretrained``; only enable for code you trust."""
    blackbox: BlackBoxConfig | None = None
    """A teacher you can only query (an API, or a local generative model) instead of a classifier; its
    answers become the labels the student learns from (``distill label``)."""
    name: str | None = None
    """Several teachers (``teachers:``): how this one is called in logs and the report. Default: the last part
    of ``model``."""
    weight: float = 1.0
    """Several teachers: this teacher's share in the combination (normalised over the teachers; with
    ``combine: confidence`` or ``entropy`` it multiplies the per-example weight)."""

    def __post_init__(self) -> None:
        check(isinstance(self.weight, (int, float)) and self.weight > 0, "teacher.weight", self.weight,
              "use a positive number")
        if self.blackbox is not None:
            check(not self.model, "teacher.model", self.model,
                   "leave teacher.model empty with teacher.blackbox "
                   "(the black-box teacher names its own model)")
            check(self.finetune is None, "teacher.finetune", self.finetune,
                   "a black-box teacher cannot be fine-tuned; remove teacher.finetune")
            return
        check(bool(self.model), "teacher.model", self.model,
               "give a hub id or a local directory, or a teacher.blackbox section for an API or "
               "generative teacher")
