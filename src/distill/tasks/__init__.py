"""Tasks: one module per kind of run, each implementing the interface of :class:`distill.tasks.base.Task`.

A recipe's ``task:`` names one of the registered tasks (``distill.tasks.TASKS``); a black-box teacher
(``teacher.blackbox``) turns ``text-classification`` into ``blackbox-classification``. The built-in tasks are
registered lazily (their modules load transformers), so validating a recipe imports none of them. A new task
is one module with a :class:`~distill.tasks.base.Task` subclass and one registry entry::

    from distill.tasks import register_task
    from distill.tasks.base import Task

    @register_task("my-task")
    class MyTask(Task):
        ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from distill.registry import Registry

if TYPE_CHECKING:  # the annotation only: importing base would load torch
    from distill.tasks.base import Task

TASKS: Registry[type[Task]] = Registry("task")
TASKS.register_lazy("text-classification", "distill.tasks.text_classification:TextClassificationTask")
TASKS.register_lazy("blackbox-classification",
                    "distill.tasks.blackbox_classification:BlackBoxClassificationTask")
TASKS.register_lazy("sentence-embedding", "distill.tasks.sentence_embedding:SentenceEmbeddingTask")
TASKS.register_lazy("causal-lm", "distill.tasks.causal_lm:CausalLMTask")
TASKS.register_lazy("causal-lm-cross-tokenizer", "distill.tasks.causal_lm_cross:CrossTokenizerLMTask")
TASKS.register_lazy("image-classification", "distill.tasks.image_classification:ImageClassificationTask")

RECIPE_TASKS = ("text-classification", "sentence-embedding", "causal-lm", "image-classification")
"""What a recipe's ``task:`` may say among the built-ins (black-box classification is chosen by
``teacher.blackbox``, not named)."""


CROSS_TOKENIZER_LOSSES = frozenset({"alm", "hybrid_kl"})
"""Losses that compare teacher and student over aligned stretches of text: a causal-LM recipe that names one
runs ``causal-lm-cross-tokenizer`` (teacher and student may then use different tokenizers)."""
INTERNAL_TASKS = ("blackbox-classification", "causal-lm-cross-tokenizer")
"""Registered tasks a recipe does not name: chosen from ``teacher.blackbox`` and from the losses."""


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: make ``task: <name>`` in a recipe run this task."""
    return TASKS.register(name)


def task_name(recipe: Any) -> str:
    """The registered task a recipe runs."""
    if recipe.task == "text-classification" and recipe.teacher.blackbox is not None:
        return "blackbox-classification"
    if recipe.task == "causal-lm" and any(s.name in CROSS_TOKENIZER_LOSSES for s in recipe.losses):
        return "causal-lm-cross-tokenizer"
    return recipe.task


def task_for(recipe: Any, log: Callable[[str], None] | None = None) -> Task:
    """The task object for a validated recipe (its plan is checked on construction: nothing heavy loads)."""
    cls = TASKS.get(task_name(recipe))
    return cls(recipe) if log is None else cls(recipe, log)


def recipe_task_names() -> list[str]:
    """The values ``task:`` accepts: the built-ins and every task registered since."""
    return [n for n in TASKS if n not in INTERNAL_TASKS]
