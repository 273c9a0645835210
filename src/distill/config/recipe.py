"""The whole recipe: its sections, checks across sections, YAML in and out, and CLI-style overrides."""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distill._dataclass_io import RecipeError, from_dict, to_dict
from distill.config.checks import check
from distill.config.data import DataConfig
from distill.config.student import StudentConfig
from distill.config.tasks import CausalLMConfig, VisionConfig
from distill.config.teacher import TeacherConfig
from distill.config.training import (
    EvalConfig,
    ExportConfig,
    LossConfig,
    SelectConfig,
    StoreConfig,
    TrainConfig,
)
from distill.tasks import recipe_task_names  # the registry alone: no task module is imported


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
    """Distillation signals and their weights; the total loss is their weighted sum. Default kd 0.5 (T = 2) +
    ce 0.5; for classification ``select`` (on by default) then picks the kd weight per run on the validation
    split. Measured on the demo (movie snippets, 2-layer student, 2026-11-30): the validation choice was 0.9
    at 10% and 15% of the labels and 0.5 at 5% (a weaker teacher); labels alone never won."""
    task: str = "text-classification"
    """What the models do, one of the registered tasks (``distill.tasks.TASKS``): ``text-classification`` (a
    classifier teacher, an encoder fine-tuned first, or a black-box teacher: ``teacher.blackbox``) or
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
    select: SelectConfig = field(default_factory=SelectConfig)
    """Classification: the kd weight and temperature chosen on the validation split (weight 0 included)."""
    causal_lm: CausalLMConfig = field(default_factory=CausalLMConfig)
    """``task: causal-lm`` only: chunking, chat prompt masks, domains, sequence-level / on-policy KD, DDK."""
    teachers: list[TeacherConfig] = field(default_factory=list)
    """Several teachers instead of one (text and image classification, sentence embedding): each runs once
    into its own store, and their outputs are combined when the student reads them, by ``combine``.
    ``teacher`` is then the first of them (give either). Each entry is a teacher section, plus ``name`` and
    ``weight``."""
    combine: str | None = None
    """How several ``teachers`` become one target. Classification: ``mean_probs`` (the default: the weighted
    mean of their probabilities, the same as averaging their KD losses), ``mean_logits`` (the normalised
    geometric mean: averaging logits), ``confidence`` (per example, the teacher surer of the label, or of its
    own answer on unlabelled rows, counts more; CA-MKD), ``entropy`` (per example, the less uncertain teacher
    counts more; EBKD) or ``weights`` (``mean_probs`` with the teachers' ``weight``s). Sentence embedding:
    ``concat`` (the default and only rule: each teacher's unit vectors scaled by the square root of its
    weight share and concatenated, so cosine similarities are the weighted mean of the teachers'). Changing
    it never runs a teacher again."""
    vision: VisionConfig | None = None
    """``task: image-classification`` only: augmentation, augmented-view store, data-free KD (defaults are
    filled in for image runs when left out)."""

    def __post_init__(self) -> None:
        check(self.task in recipe_task_names(), "task", self.task,
               f"choose from {', '.join(recipe_task_names())}")
        check(len(self.losses) > 0, "losses", self.losses, "give at least one loss, e.g. [{name: kd}]")
        validate_teachers(self)
        if self.teacher.blackbox is not None:
            check(not self.student.from_teacher, "student.from_teacher", self.student.from_teacher,
                   "a black-box teacher has no layers to inherit; give student.model instead")
        if self.task == "sentence-embedding":
            check(self.teacher.blackbox is None and self.teacher.finetune is None, "teacher",
                   self.teacher.model,
                   "a sentence-embedding teacher is used as it is: drop teacher.finetune / teacher.blackbox")
            check(not self.export.onnx, "export.onnx", self.export.onnx,
                   "ONNX export covers text-classification students; the embedding student is saved as a "
                   "sentence-transformers directory (set export.onnx: false)")
        else:
            check(not self.student.static, "student.static", self.student.static,
                   "static students are for task: sentence-embedding")
        if self.task == "causal-lm":
            validate_causal_lm(self)
        else:
            check(self.select.metric != "perplexity", "select.metric", self.select.metric,
                   "perplexity is for task: causal-lm; use macro_f1 or accuracy")
            check(self.store.codec == "topk", "store.codec", self.store.codec,
                   "the head codec codes a language model's per-token logits (task: causal-lm); "
                   "use codec: topk")
        grouped_ok = self.task == "sentence-embedding" and self.store.enabled
        check(not self.student.dense or self.task == "sentence-embedding", "student.dense",
              self.student.dense,
              "the linear output layer is for task: sentence-embedding students; set dense: false")
        check(not self.train.neighbour_group or grouped_ok,
              "train.neighbour_group", self.train.neighbour_group,
              "batches of teacher neighbours are built from a sentence-embedding run's stored teacher "
              "vectors (task: sentence-embedding, store.enabled: true); set neighbour_group: 0")
        check(self.data.augment is None or self.task in ("text-classification", "sentence-embedding"),
               "data.augment", "set",
               f"word-replaced variants are made for task: text-classification or sentence-embedding, not "
               f"{self.task}; drop data.augment (image runs: vision.augment)")
        validate_vision(self)
        validate_losses(self.losses)

    @property
    def label_free(self) -> bool:
        """True when no loss reads the labels (the student can learn from unlabelled text alone)."""
        from distill.losses import LOSSES

        return not any(LOSSES.get(spec.name).needs_labels for spec in self.losses)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def validate_teachers(r: "Recipe") -> None:
    """``teachers:``: at least two model teachers with their own names, a known rule, a task that combines
    class distributions, and ``teacher`` equal to the first of them."""
    from distill.store.ensemble import RULES

    if r.combine is None:
        r.combine = "concat" if r.task == "sentence-embedding" else "mean_probs"
    if r.task == "sentence-embedding":
        check(r.combine == "concat", "combine", r.combine,
              "sentence-embedding teachers are combined by concat (or leave combine out)")
    else:
        check(r.combine in RULES, "combine", r.combine, f"choose from {', '.join(RULES)}")
    if not r.teachers:
        return
    check(len(r.teachers) >= 2, "teachers", f"{len(r.teachers)} teacher",
          "give at least two teachers, or one `teacher:` section")
    from distill.tasks import CROSS_TOKENIZER_LOSSES

    cross = sorted({s.name for s in r.losses} & CROSS_TOKENIZER_LOSSES)
    check(not cross, "losses", cross[0] if cross else None,
          "several teachers are mixed token by token on one tokenizer; cross-tokenizer losses take one "
          "`teacher:`")
    check(r.store.enabled, "store.enabled", r.store.enabled,
          "several teachers are combined as their stores are read; set store.enabled: true")
    check(r.teachers[0].blackbox is None, "teachers[0].blackbox", "set",
          "the first teacher plans the run (its tokenizer, its layers for student.from_teacher): put a model "
          "teacher first; black-box teachers may follow")
    check(r.store.reconstruct == "spread", "store.reconstruct", r.store.reconstruct,
          "several teachers are combined over every class: each one's top-k is read with the leftover mass "
          "spread (store.reconstruct: spread)")
    names: set[str] = set()
    for i, t in enumerate(r.teachers):
        if t.finetune is not None:
            check(r.task in ("text-classification", "image-classification"), f"teachers[{i}].finetune", "set",
                  f"task: {r.task} uses its teachers as they are; drop the finetune section")
        if t.blackbox is not None:
            check(r.task == "text-classification", f"teachers[{i}].blackbox", "set",
                  "black-box teachers answer text: they join task: text-classification runs only")
        name = t.name or teacher_name(t)
        check(name not in names, f"teachers[{i}].name", name, "give each teacher its own name")
        names.add(name)
    check(r.teacher == r.teachers[0], "teacher", r.teacher.model,
          "with teachers: leave teacher out (it is the first of the teachers)")


def teacher_name(t: TeacherConfig) -> str:
    """A teacher's default name: the last part of its model id or path (a black-box teacher: its model)."""
    model = t.model or (t.blackbox and (t.blackbox.model or t.blackbox.local_model)) or "teacher"
    return str(model).rstrip("/").split("/")[-1].split(":")[-1] or "teacher"


def validate_vision(r: "Recipe") -> None:
    """``task: image-classification``: sources, models and sections that fit image runs."""
    if r.task != "image-classification":
        check(r.vision is None, "vision", r.vision, "the vision section is for task: image-classification")
        return
    if r.vision is None:
        r.vision = VisionConfig()
    check(r.data.source in ("packaged", "images", "numpy", "hf_disk"), "data.source", r.data.source,
           "image runs read packaged (mnist, digits), images, numpy or hf_disk")
    check(r.teacher.blackbox is None and not r.student.from_teacher, "teacher", r.teacher.model,
           "image runs take a teacher model and a student model (no blackbox, no from_teacher)")
    check(not r.export.onnx, "export.onnx", r.export.onnx,
           "ONNX export covers text-classification students; set export.onnx: false")


def validate_causal_lm(r: "Recipe") -> None:
    """``task: causal-lm``: the checks that need more than one section."""
    check(r.teacher.blackbox is None and r.teacher.finetune is None, "teacher", r.teacher.model,
           "a causal-LM teacher is used as it is: drop teacher.finetune / teacher.blackbox")
    check(not r.export.onnx, "export.onnx", r.export.onnx,
           "ONNX export covers text-classification students; set export.onnx: false")
    check(r.select.metric in (None, "perplexity"), "select.metric", r.select.metric,
           "a causal-LM run chooses on the validation chunks' perplexity: drop select.metric or set "
           "perplexity")
    check(r.data.source in ("files", "packaged"), "data.source", r.data.source,
           "a causal-LM run reads text files (data.train: .txt, .csv, .jsonl, ...) or a packaged corpus "
           "(data.source: packaged, data.name: three_domains)")
    if r.data.source == "packaged":
        from distill.packaged import PACKAGED_CORPORA

        check(r.data.name in PACKAGED_CORPORA, "data.name", r.data.name,
               f"a causal-LM run reads a packaged corpus: {', '.join(PACKAGED_CORPORA)}")
        check(r.causal_lm.format != "chat", "causal_lm.format", r.causal_lm.format,
               "a packaged corpus is plain text; use format: text")
    if r.causal_lm.on_policy is not None:
        check(not r.store.enabled, "store.enabled", r.store.enabled,
               "on-policy distillation scores student-written text, so the teacher runs online: set "
               "store.enabled: false")
    from distill.tasks import CROSS_TOKENIZER_LOSSES

    cross = any(s.name in CROSS_TOKENIZER_LOSSES for s in r.losses)  # one log-probability per token
    if r.store.enabled and not cross:
        check(r.store.topk > 0 or r.store.codec != "topk", "store.topk", r.store.topk,
               "a language model's full logits cost ~100 KB per token; keep the top k per token (e.g. 32) or "
               "code the output layer's input (store.codec: head4)")


def validate_losses(losses: list[LossConfig]) -> None:
    from distill.losses import LOSSES, check_params

    for i, spec in enumerate(losses):
        path = f"losses[{i}]"
        if spec.name not in LOSSES:
            raise RecipeError(f"{path}.name: unknown loss {spec.name!r}; valid: {', '.join(LOSSES)}")
        check_params(spec.name, spec.params, path)


def normalise_losses(raw: Any) -> Any:
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
    if isinstance(data.get("teachers"), list):
        for i, entry in enumerate(data["teachers"]):  # each entry's own errors, named by its place
            try:
                from_dict(TeacherConfig, entry, f"teachers[{i}]") if isinstance(entry, dict) else None
            except RecipeError as exc:
                raise RecipeError(f"teachers[{i}]: {exc}") from None
        if data["teachers"] and "teacher" not in data:
            data["teacher"] = copy.deepcopy(data["teachers"][0])  # the first teacher plans the run
    for section in ("teacher", "student", "data"):
        if section not in data:
            raise RecipeError(f"missing section {section!r}; a recipe needs teacher, student and data")
    if "losses" in data:
        data["losses"] = normalise_losses(data["losses"])
    elif data.get("task") == "sentence-embedding":
        # the classification default (kd + ce) has no labels to use
        data["losses"] = [{"name": "embedding", "weight": 1.0, "params": {"loss": "mse"}}]
    elif data.get("task") == "causal-lm":  # token-level KL to the teacher's next-token distribution
        data["losses"] = [{"name": "kd", "weight": 1.0, "params": {"temperature": 1.0}}]
    return from_dict(Recipe, data)


def parse_scalar(text: str) -> Any:
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
            node[int(last)] = parse_scalar(value)
        else:
            node[last] = parse_scalar(value)
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
