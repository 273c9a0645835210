"""The interface every task implements, and the run that drives it.

A run, whatever the task, is the same chain of resumable stages::

    plan -> teacher -> teacher outputs (store) -> teacher evaluated
         -> distilled student trained and evaluated -> baseline student trained and evaluated
         -> timing, significance, report, model card, page

:class:`Task` holds that chain (:meth:`Task.run`) and the pieces every task shares (latency timing, sizes on
disk, the common report fields, writing the outputs). A task module fills in the steps that differ: how its
recipe is checked, where its teacher comes from, what its store keeps, how its students train and are scored,
and what its report and model card say. The commands other than ``distill run`` (``finetune``, ``cache``,
``cache --info``, ``label``) are methods too; a task that has no such step refuses with the reason.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from distill._dataclass_io import RecipeError
from distill.config import LossConfig, Recipe
from distill.losses import LossContext, build_losses
from distill.stages import Log, print_log, process_state, quiet_libraries
from distill.teachers.sources import TeacherSource
from distill.training import Distiller


@dataclass
class Plan:
    """Everything known about a run before any weights load: the data splits, the models' configs, whether the
    two tokenizers agree, the facts the losses were built with, and task-specific ``info``."""

    recipe: Recipe
    splits: Any
    teacher_config: Any
    student_config: Any | None
    same_tokenizer: bool
    loss_context: LossContext
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return self.splits.labels


class Task(ABC):
    """One kind of distillation run. Constructing it checks the recipe (:meth:`make_plan`); :meth:`run` makes
    the run. The steps, in the order :meth:`run` calls them:

    ``make_plan()``
        validate the recipe against the models' configs and the data; loads no weights.
    ``prepare_teacher()``
        set ``self.teacher`` (a :class:`~distill.teachers.sources.TeacherSource`), fine-tuning or training it
        first when the recipe asks.
    ``teacher_outputs(distiller)``
        where the students read the teacher from: ``(store, None)`` for the teacher-output store (built on
        first use by :meth:`teacher_store`), ``(None, model)`` for an online teacher, ``(None, None)`` when no
        loss reads the teacher.
    ``student_init()``
        the student's starting weights, shared by the distilled and the baseline students.
    ``evaluate_teacher()`` / ``evaluate(role, model)``
        score a model on the held-out data into ``self.report["models"][role]``.
    ``select_distiller(distiller, store, teacher)``
        the losses the distilled student trains with (classification: chosen on the validation split).
    ``train(name, distiller, data, store=..., teacher=..., max_steps=...)``
        train one student stage from the student's start (resumable; reused when finished).
    ``export_student(student)``
        write the distilled student in its library's format (tasks whose training stage already did: nothing).
    ``baseline()``
        the comparison student: by default the same student on the labelled data alone, same budget.
    ``more_students()``
        any further student the recipe asks for (image runs: the data-free one).
    ``finish()``
        time the models, test the differences, write the report, the model card and the page.
    """

    name: ClassVar[str] = ""
    kd_stage: ClassVar[str] = "student"
    """The stage (and output folder) name of the distilled student's training."""

    def __init__(self, recipe: Recipe, log: Log = print_log):
        self.recipe = recipe
        self.log = log
        quiet_libraries()
        self.out = Path(recipe.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.report: dict[str, Any] = {"models": {}, "training": {}}
        self.teacher: TeacherSource | None = None
        # role -> the keyword inputs it is timed on
        self.latency_inputs: dict[str, dict[str, torch.Tensor]] = {}
        self.plan = self.make_plan()

    # -- the steps ----------------------------------------------------------------------------------------
    @abstractmethod
    def make_plan(self) -> Plan:
        """Validate the recipe and return what is known before weights load."""

    @abstractmethod
    def prepare_teacher(self) -> None:
        """Set ``self.teacher``; fine-tune or train it first when the recipe asks (a finished one is
        reused)."""

    def teacher_store(self, distiller: Distiller, build: bool = True) -> Any:
        """Open the teacher-output store for ``distiller``'s losses, running the teacher into it first when it
        is missing (and ``build``)."""
        raise RecipeError(f"task {self.name}: this task keeps no teacher-output store")

    def teacher_outputs(self, distiller: Distiller) -> tuple[Any, torch.nn.Module | None]:
        """``(store, online teacher)`` for the distilled student's training."""
        if not distiller.needs_teacher:
            return None, None
        if self.recipe.store.enabled:
            return self.teacher_store(distiller), None
        return None, self.teacher_model()

    def student_init(self) -> Path | None:
        """Build (or find) the student's starting weights, shared by the distilled and the baseline students;
        None for tasks that build a fresh student per stage."""
        return None

    @abstractmethod
    def kd_data(self) -> Any:
        """What the distilled student trains on (labelled plus unlabelled data, where the task has it)."""

    def labelled_data(self) -> Any:
        """What the baseline student trains on: the labelled data alone."""
        return self.kd_data()

    @abstractmethod
    def train(self, name: str, distiller: Distiller, data: Any, *, store: Any = None,
              teacher: torch.nn.Module | None = None, max_steps: int | None = None) -> torch.nn.Module:
        """Train stage ``name`` from the student's start; reuse it when a finished one has the same inputs."""

    @abstractmethod
    def evaluate(self, role: str, model: torch.nn.Module) -> Any:
        """Score ``model`` on the held-out data into ``self.report["models"][role]``."""

    def evaluate_teacher(self) -> Any:
        return self.evaluate("teacher", self.teacher_model())

    def select_distiller(self, distiller: Distiller, store: Any,
                         teacher: torch.nn.Module | None) -> Distiller:
        """The losses the distilled student trains with: the recipe's, or ones chosen on the validation split
        (classification: ``select``)."""
        return distiller

    def export_student(self, student: torch.nn.Module) -> None:  # noqa: B027 - optional hook, a no-op here
        """Write the distilled student to ``<output_dir>/student`` (when its training stage has not)."""

    def baseline_steps(self) -> int | None:
        """The baseline's optimisation steps (None: its own epochs)."""
        return None

    def baseline(self) -> None:
        """The same student trained on the labelled data alone with the same budget: what distillation is
        measured against."""
        distiller = Distiller(build_losses([LossConfig(name="ce")], self.plan.loss_context))
        base = self.train("student_no_kd", distiller, self.labelled_data(), max_steps=self.baseline_steps())
        self.evaluate("student_no_kd", base)

    def more_students(self) -> None:  # noqa: B027 - optional hook, a no-op here
        """Students beyond the distilled one and the baseline (none by default)."""

    @abstractmethod
    def finish(self) -> dict[str, Any]:
        """Time the models, test the differences, write report.json, the model card and report.html."""

    # -- the run ------------------------------------------------------------------------------------------
    def distiller(self) -> Distiller:
        # learned projectors start from the recipe's seed, not from whatever ran before in this process
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.recipe.train.seed)
            return Distiller(build_losses(self.recipe.losses, self.plan.loss_context))

    def teacher_model(self) -> torch.nn.Module:
        assert self.teacher is not None, "prepare_teacher() first"
        return self.teacher.model()

    def release_teacher(self) -> None:
        if self.teacher is not None:
            self.teacher.release()

    def run(self) -> dict[str, Any]:
        """The whole recipe: every stage, each reused when a finished one has the same inputs."""
        self.prepare_teacher()
        distiller = self.distiller()
        store, online = self.teacher_outputs(distiller)
        if store is not None:
            self.report["store"] = {"key": store.key, "path": str(store.path), **store.info()}
        self.student_init()  # while the teacher may still be loaded: a student inherited from it needs it
        self.evaluate_teacher()
        if online is None:
            self.release_teacher()  # the students train from the store (or labels): no teacher in memory
        distiller = self.select_distiller(distiller, store, online)
        student = self.train(self.kd_stage, distiller, self.kd_data(), store=store, teacher=online)
        self.release_teacher()
        self.evaluate("student_kd", student)
        self.export_student(student)
        del student
        if self.recipe.eval.baseline:
            self.baseline()
        self.more_students()
        return self.finish()

    # -- the other commands -------------------------------------------------------------------------------
    @classmethod
    def refusal(cls, command: str, recipe: Recipe) -> str | None:
        """Why this task cannot do ``command`` (``finetune``, ``cache``, ``cache_info``) for ``recipe``; None
        when it can. Asked before the task is built, so a refused command loads nothing. By default a task
        can do the commands it implements."""
        if getattr(cls, command) is not getattr(Task, command):
            return None
        what = {"finetune": f"distill finetune: task {cls.name} has no teacher fine-tuning; its teacher is "
                            "used as it is (teacher.model)",
                "cache": f"distill cache: task {cls.name} keeps no teacher-output store",
                "cache_info": f"distill cache --info: task {cls.name} keeps no teacher-output store"}
        return what[command]

    def finetune(self) -> str:
        """``distill finetune``: fine-tune (or train) the teacher only. Returns where it is."""
        raise RecipeError(self.refusal("finetune", self.recipe) or "distill finetune: not available")

    def cache(self) -> str:
        """``distill cache``: run the teacher once into the store. Returns a description of the store."""
        raise RecipeError(self.refusal("cache", self.recipe) or "distill cache: not available")

    def cache_info(self) -> str:
        """``distill cache --info``: what the store holds (or why there is none yet), building nothing."""
        raise RecipeError(self.refusal("cache_info", self.recipe) or "distill cache --info: not available")

    @classmethod
    def label(cls, recipe: Recipe, include_test: bool = False, log: Log = print_log) -> str:
        """``distill label``: have a black-box teacher label the text. A class method: labelling needs the
        data and the teacher's endpoint, not the students (nothing else of the recipe is checked or
        loaded)."""
        raise RecipeError("distill label: only for black-box teachers (teacher.blackbox); this recipe's "
                          "teacher has weights, and `distill cache` runs it into the store")

    # -- what every task's finish shares --------------------------------------------------------------------
    def latency_models(self) -> dict[str, torch.nn.Module]:
        """The models to time, by role (those with ``latency_inputs``); none by default."""
        return {}

    def time_latency(self) -> None:
        """Time every model of :meth:`latency_models` interleaved on the same inputs (see
        :mod:`distill.evaluation.speed`) and put the figures and spreads into the models' metrics and the
        report's ``latency`` section."""
        from distill.evaluation.speed import apply_latency, forward_runner, time_models

        r = self.recipe
        models = self.latency_models()
        if not models:
            return
        runners = {role: {bs: forward_runner(m, self.latency_inputs[role], bs)
                          for bs in r.eval.latency_batch_sizes}
                   for role, m in models.items()}
        self.log(f"timing {', '.join(models)} interleaved (at least {r.eval.latency_repeats} rounds and "
                 f"{r.eval.latency_min_seconds:g} s)")
        latency = time_models(runners, rounds=r.eval.latency_repeats, threads=r.eval.latency_threads,
                              min_seconds=r.eval.latency_min_seconds, precision=r.eval.latency_precision,
                              max_seconds=r.eval.latency_max_seconds)
        self.release_teacher()
        self.report["latency"] = latency
        apply_latency(self.report["models"], latency)

    def sizes_on_disk(self, where: dict[str, Path]) -> None:
        """Each model's size as saved (its weight files), where it was saved."""
        from distill.evaluation.speed import dir_size_mb

        models = self.report["models"]
        for role, folder in where.items():
            if role in models and folder.is_dir() and dir_size_mb(folder) > 0:
                models[role]["size_mb"] = dir_size_mb(folder)

    def common_report(self) -> dict[str, Any]:
        """The report fields every task writes."""
        import transformers

        from distill import __version__

        return {
            "task": self.recipe.task,
            "teacher_path": self.teacher.path if self.teacher is not None else self.recipe.teacher.model,
            "recipe": self.recipe.to_dict(),
            "versions": {"distill": __version__, "torch": torch.__version__,
                         "transformers": transformers.__version__},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "store_key": self.report.get("store", {}).get("key"),
        }

    def write_outputs(self, table: str | None = None, done: str = "") -> None:
        """report.json and report.html (main process only), then the table and where everything went."""
        from distill.evaluation import write_report
        from distill.evaluation.html_report import write_html_report

        if not process_state().is_main_process:
            return
        write_report(self.out / "report.json", self.report)
        html = write_html_report(self.out)
        if table:
            print("\n" + table + "\n", flush=True)
        self.log(f"{done}report in {self.out / 'report.json'} and {html}")
