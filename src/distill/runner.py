"""What the ``distill`` commands do, as functions: each reads the recipe (a :class:`~distill.config.Recipe` or
a YAML path, with CLI-style overrides), finds the recipe's task in the task registry and asks it. A task that
has no such step (``finetune`` for a sentence-embedding teacher, ``cache`` for a black-box one) refuses with
the reason, before anything loads."""

from __future__ import annotations

import os
from typing import Any

from distill.config import Recipe, RecipeError, load_recipe
from distill.stages import Log, print_log
from distill.tasks import TASKS, task_for, task_name

RecipeLike = Recipe | str | os.PathLike[str]


def _recipe(recipe: RecipeLike, overrides: list[str] | None) -> Recipe:
    return recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)


def run(recipe: RecipeLike, overrides: list[str] | None = None, log: Log = print_log) -> dict[str, Any]:
    """``distill run``: the whole recipe end to end; returns the report."""
    from distill.training.args import check_processes_per_gpu

    r = _recipe(recipe, overrides)
    check_processes_per_gpu()  # before the teacher loads
    return task_for(r, log).run()


def _command(recipe: Recipe, command: str, log: Log) -> str:
    """Ask the recipe's task to do ``command``; a task that cannot says why before anything loads."""
    if (why := TASKS.get(task_name(recipe)).refusal(command, recipe)) is not None:
        raise RecipeError(why)
    return getattr(task_for(recipe, log), command)()


def finetune(recipe: RecipeLike, overrides: list[str] | None = None, log: Log = print_log) -> str:
    """``distill finetune``: fine-tune (or train) the teacher only; returns where it is."""
    return _command(_recipe(recipe, overrides), "finetune", log)


def cache(recipe: RecipeLike, overrides: list[str] | None = None, log: Log = print_log) -> str:
    """``distill cache``: run the teacher once into the teacher-output store (or find it there); returns a
    description of the store."""
    return _command(_recipe(recipe, overrides), "cache", log)


def cache_info(recipe: RecipeLike, overrides: list[str] | None = None, log: Log = print_log) -> str:
    """``distill cache --info``: what the store holds, or why there is none yet; builds nothing."""
    return _command(_recipe(recipe, overrides), "cache_info", log)


def label(recipe: RecipeLike, overrides: list[str] | None = None, include_test: bool = False,
          log: Log = print_log) -> str:
    """``distill label``: a black-box teacher labels the training (and unlabelled, and with ``include_test``
    the test) text; returns where the labels went."""
    recipe = _recipe(recipe, overrides)
    return TASKS.get(task_name(recipe)).label(recipe, include_test, log)
