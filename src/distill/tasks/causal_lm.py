"""``task: causal-lm``: distil a causal language model into a smaller one on the same tokenizer.

Teacher -> data (text chunks or prompt/response rows, a domain per row; optionally the teacher's
continuations, generated once) -> teacher distribution per token in the store (top-k logits or a head codec;
always online for on-policy batches) -> student start (a layer subset of the teacher, or any smaller model)
-> token-level training -> held-out perplexity per domain for the teacher, the distilled student and the same
student trained on the text alone with the same number of steps -> export with ``save_pretrained`` (loadable
by ``pipeline('text-generation')``) and sample generations in the report.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from distill._dataclass_io import RecipeError
from distill.config import Recipe
from distill.data.text_lm import (
    CausalLMCollator,
    RowDataset,
    check_vocabularies,
    chunk_frame,
    hash_token_rows,
    pad_token_id,
    prompt_response_rows,
    read_text_table,
    split_rows,
)
from distill.losses import LOSSES, LossContext, build_losses
from distill.models import hidden_size, load_config, load_tokenizer, num_layers, set_dropout
from distill.stages import (
    StoreKeyUnknown,
    fingerprint,
    hash_files,
    process_state,
    stage_checkpoints,
    stage_done,
    store_root,
    train_resuming,
    write_stage,
)
from distill.students.inherit import check_layers
from distill.tasks import register_task
from distill.tasks.base import Plan, Task
from distill.tasks.causal_lm_store import open_lm_store
from distill.tasks.selection import SelectsLosses
from distill.teachers.sources import PretrainedTeacher
from distill.training import Distiller

LM_SIGNALS = {"logits"}


def load_causal_lm(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def model_configs(recipe: Recipe) -> tuple[tuple[str, Any, int], tuple[str, Any, int]]:
    """``(teacher dir, config, layers), (student dir, config, layers)`` with the recipe's layer choices
    checked; a student built from the teacher has the teacher's directory and no config of its own (None)."""
    from distill.packaged import resolve_model

    t, s = recipe.teacher, recipe.student
    tdir = resolve_model(t.model)
    tconf = load_config(tdir, "teacher.model", t.revision, t.trust_remote_code)
    t_layers = num_layers(tconf)
    if s.from_teacher:
        check_layers(list(s.layers or []), t_layers)
        return (tdir, tconf, t_layers), (tdir, None, len(s.layers or []))
    sdir = resolve_model(s.model or "")
    sconf = load_config(sdir, "student.model")
    s_layers = num_layers(sconf)
    if s.layers:
        check_layers(list(s.layers), s_layers, "the student model")
        s_layers = len(s.layers)
    return (tdir, tconf, t_layers), (sdir, sconf, s_layers)


def plan_causal_lm(recipe: Recipe) -> Plan:
    """Validate a causal-LM recipe without loading weights: losses, layers, vocabularies."""
    for i, spec in enumerate(recipe.losses):
        cls = LOSSES.get(spec.name)
        missing = (set(cls.teacher_needs) | set(cls.student_needs)) - LM_SIGNALS
        if missing:
            raise RecipeError(f"losses[{i}].name: {spec.name!r} needs {sorted(missing)}, which a causal-LM "
                              "run does not provide; use kd (any divergence, skew), ce and hard_kd")
    t = recipe.teacher
    (tdir, tconf, t_layers), (sdir, sconf, s_layers) = model_configs(recipe)
    s_vocab = int((sconf or tconf).vocab_size)
    shared = int(tconf.vocab_size)
    if sconf is not None:
        shared = check_vocabularies(load_tokenizer(tdir, t.revision), load_tokenizer(sdir),
                                    int(tconf.vocab_size), s_vocab)
    ctx = LossContext(student_hidden_size=hidden_size(sconf or tconf), teacher_hidden_size=hidden_size(tconf),
                      student_num_layers=s_layers, teacher_num_layers=t_layers, num_classes=shared,
                      same_tokenizer=True)
    build_losses(recipe.losses, ctx)
    members = plan_more_teachers(recipe, tdir, int(tconf.vocab_size)) if recipe.teachers else None
    from distill.data.splits import TextSplits

    empty = pd.DataFrame({"text": []})  # the rows are built by the run itself (chunks / prompt-response)
    splits = TextSplits(train=empty, validation=empty, test=empty, unlabeled=None, labels=[])
    return Plan(recipe, splits, tconf, sconf, True, ctx,
                {"teacher_dir": tdir, "vocab_size": shared, "teacher_vocab": int(tconf.vocab_size),
                 "student_vocab": s_vocab, "members": members})


def plan_more_teachers(recipe: Recipe, first_dir: str, vocab: int) -> list[dict[str, Any]]:
    """``teachers:``: every language model on the first one's tokenizer and vocabulary (their next-token
    distributions are combined position by position), and no stage that needs a single teacher."""
    from distill.config.recipe import teacher_name
    from distill.data.tokenize import same_tokenizer
    from distill.packaged import resolve_model

    c = recipe.causal_lm
    for field_name, value in (("sequence_kd", c.sequence_kd), ("on_policy", c.on_policy), ("ddk", c.ddk)):
        if value is not None:
            raise RecipeError(f"causal_lm.{field_name}: runs with one teacher only (it generates from, or "
                              "weighs domains by, a single model); drop it or use one `teacher:`")
    first_tok = load_tokenizer(first_dir, recipe.teacher.revision)
    members = []
    for i, t in enumerate(recipe.teachers):
        mdir = resolve_model(t.model)
        conf = load_config(mdir, f"teachers[{i}].model", t.revision, t.trust_remote_code)
        if int(conf.vocab_size) != vocab or not same_tokenizer(load_tokenizer(mdir, t.revision), first_tok):
            raise RecipeError(f"teachers[{i}].model: {t.model!r} uses another tokenizer than the first "
                              "teacher; several language-model teachers must share one tokenizer and "
                              "vocabulary (their distributions are mixed token by token)")
        members.append({"name": t.name or teacher_name(t), "weight": t.weight, "dir": mdir,
                        "revision": t.revision})
    return members


class _DomainTrainerMixin:
    """Makes the Trainer draw its training order from a given sampler (the DDK domain sampler)."""

    domain_sampler = None

    def _get_train_sampler(self, train_dataset=None):
        if self.domain_sampler is not None:
            return self.domain_sampler
        return super()._get_train_sampler(train_dataset)


@register_task("causal-lm")
class CausalLMTask(SelectsLosses, Task):
    """Causal LMs: teacher -> rows (+ its continuations) -> store -> distilled and text-only students ->
    perplexity per domain with a chunk-level paired test."""

    name = "causal-lm"

    def __init__(self, recipe: Recipe, *args: Any, **kwargs: Any):
        self.chunk_nll: dict[str, tuple[list[float], list[int]]] = {}  # role -> held-out NLL per chunk
        self.kd_specs = list(recipe.losses)  # the distilled student's losses (changed by ``select``)
        self._test_bytes: list[int] | None = None
        self.pending_continuations: Path | None = None
        self._teacher_domain_loss: Any = None
        self.members: list[Any] = []  # ``teachers:``: every teacher (distill.tasks.multi_teacher.Member)
        self.member_mean_weights: dict[str, float] | None = None
        super().__init__(recipe, *args, **kwargs)

    def make_plan(self) -> Plan:
        return plan_causal_lm(self.recipe)

    # -- teacher and data ---------------------------------------------------------------------------------
    def resolve_teacher(self) -> None:
        self.teacher = PretrainedTeacher(self.plan.info["teacher_dir"], load_causal_lm,
                                         self.recipe.teacher.revision, log=self.log)
        if self.plan.info.get("members"):  # several: the first one stands for "the teacher"
            from distill.tasks.multi_teacher import Member

            self.members = [Member(m["name"], m["weight"], PretrainedTeacher(m["dir"], load_causal_lm,
                                                                             m["revision"], log=self.log),
                                   None) for m in self.plan.info["members"]]
            self.members[0].source = self.teacher
        self.teacher_tokenizer = load_tokenizer(self.teacher.path, self.recipe.teacher.revision)
        self.pad_id = pad_token_id(self.teacher_tokenizer)
        self.vocab_size = self.plan.info["vocab_size"]

    def prepare_teacher(self) -> None:
        """The teacher, then the rows it is run over (with sequence-level KD, its own continuations, generated
        once and cached)."""
        self.resolve_teacher()
        self.teacher_rows(generate=True)

    def load_rows(self) -> None:
        r, c = self.recipe, self.recipe.causal_lm
        d = r.data
        if d.source == "packaged":
            from distill.packaged import load_packaged_corpus

            df = load_packaged_corpus(d.name or "")
        else:
            df = read_text_table(d.train or "")
        if d.text_column != "text" and d.text_column in df.columns:
            df = df.rename(columns={d.text_column: "text"})
        tok = self.teacher_tokenizer
        if c.format == "chat":
            rows, names = prompt_response_rows(df, tok, c.chunk_length, c.prompt_column, c.response_column,
                                               c.domain_column, c.chat_template)
        else:
            # a packaged corpus has a domain column: used unless the recipe names another one
            domains = c.domain_column or ("domain" if d.source == "packaged" else None)
            rows, names = chunk_frame(df, tok, c.chunk_length, domains)
        if not rows:
            raise RecipeError("data.train: no training chunks came out of the data (empty text?)")
        self.domains = names
        self.train_rows, self.val_rows, self.test_rows = split_rows(rows, len(names), d.test_fraction,
                                                                    d.validation_fraction, d.split_seed)
        if d.max_train_examples:
            self.train_rows = self.train_rows[: d.max_train_examples]
        self.log(f"data: {len(self.train_rows)} train / {len(self.val_rows)} validation / "
                 f"{len(self.test_rows)} held-out rows over domains {names}")

    def add_teacher_continuations(self, generate: bool = True) -> Path | None:
        """Sequence-level KD: the teacher continues each training row's prefix (once, cached). Returns the
        continuations' file. With ``generate=False`` only continuations already on disk are used: when there
        are none, nothing changes and the result is None (the teacher is neither loaded nor run)."""
        from distill.teachers.generate import cached_continuations, teacher_continuations

        r, sk = self.recipe, self.recipe.causal_lm.sequence_kd
        assert sk is not None
        prompts = [row["input_ids"][: row["prompt_length"] or sk.prompt_tokens] for row in self.train_rows]
        cache_dir = store_root(r.store) / "teacher-generations"
        conts, path = cached_continuations(prompts, cache_dir, self.teacher.fingerprint(), sk.max_new_tokens,
                                           sk.temperature, sk.top_p, r.train.seed)
        if conts is not None:
            self.log(f"teacher continuations found in {path}")
        elif not generate:
            self.pending_continuations = path
            return None
        else:
            conts, path = teacher_continuations(
                self.teacher_model(), prompts, cache_dir, self.teacher.fingerprint(), self.pad_id,
                self.teacher_tokenizer.eos_token_id, sk.max_new_tokens, sk.temperature, sk.top_p,
                r.train.eval_batch_size, r.train.seed, log=self.log)
        generated = [{"input_ids": list(p) + list(cont), "prompt_length": len(p), "domain": row["domain"]}
                     for p, cont, row in zip(prompts, conts, self.train_rows) if cont]
        self.report["sequence_kd"] = {"file": str(path), "rows": len(generated),
                                      "mean_new_tokens": (float(np.mean([len(x) for x in conts]))
                                                          if conts else 0)}
        self.kd_rows = (list(self.train_rows) if sk.keep_original else []) + generated
        for i, row in enumerate(self.kd_rows):
            self.kd_rows[i] = {**row, "example_index": i}
        return path

    def teacher_rows(self, generate: bool = True) -> list[dict[str, Any]] | None:
        """The rows the teacher is run over: the training chunks, plus its own continuations when
        sequence-level KD is on. With ``generate=False``, None when those continuations are not on disk
        yet."""
        self.load_rows()
        self.kd_rows = list(self.train_rows)
        if self.recipe.causal_lm.sequence_kd is not None and self.add_teacher_continuations(generate) is None:
            return None
        return self.kd_rows

    # -- student start ------------------------------------------------------------------------------------
    def student_init(self) -> Path:
        with process_state().main_process_first():
            return self._build_student_init()

    def _build_student_init(self) -> Path:
        r = self.recipe
        init = self.out / "student_init"
        fp = fingerprint({"student": r.student.fingerprinted(), "seed": r.train.seed, "task": r.task,
                          "teacher": self.teacher.fingerprint() if r.student.from_teacher else None})
        if stage_done(init, fp):
            self.student_tokenizer = load_tokenizer(str(init))
            return init
        from transformers import set_seed

        from distill.students.inherit import student_from_teacher

        set_seed(r.train.seed)
        if r.student.from_teacher:
            model = student_from_teacher(self.teacher_model(), list(r.student.layers or []))
            tokenizer = self.teacher_tokenizer
        else:
            from distill.packaged import resolve_model

            model = load_causal_lm(resolve_model(r.student.model or ""))
            if r.student.layers:
                model = student_from_teacher(model, list(r.student.layers))
            tokenizer = load_tokenizer(resolve_model(r.student.model or ""))
        write_stage(init, fp, lambda d: (model.save_pretrained(d), tokenizer.save_pretrained(d)))
        self.student_tokenizer = tokenizer
        return init

    # -- store --------------------------------------------------------------------------------------------
    def store_spec(self, distiller: Distiller):
        from distill.store import StoreSpec

        cfg = self.recipe.store
        return StoreSpec(capture=("logits",), topk=cfg.topk, dtype=cfg.dtype, shard_size=cfg.shard_size,
                         reconstruct=cfg.reconstruct, codec=cfg.codec)

    def store_key(self, distiller: Distiller, rows: list[dict[str, Any]], teacher: Any = None) -> str:
        """The key covers teacher (default: the run's; each of several has its own), tokenizer, every token,
        what is kept and the vocabulary width."""
        from distill.store import fingerprint_rows, fingerprint_tokenizer, store_key

        return store_key(teacher=(teacher or self.teacher).fingerprint(),
                         tokenizer=fingerprint_tokenizer(self.teacher_tokenizer),
                         data=fingerprint_rows([tuple(x["input_ids"]) for x in rows]), task=self.recipe.task,
                         spec=self.store_spec(distiller), vocab=self.vocab_size)

    def teacher_store(self, distiller: Distiller, build: bool = True):
        if self.members:  # each teacher's own store, mixed token by token when read
            from distill.store.ensemble import TokenEnsemble

            opened = {m.name: self._open_store(distiller, m.source) for m in self.members}
            for m in self.members[1:]:
                m.source.release()
            seconds = [took for _, took, _ in opened.values() if took is not None]
            if seconds:
                self.report["store_build_seconds"] = sum(seconds)
            fidelity = {name: f for name, (_, _, f) in opened.items()}
            self.report["store_fidelity"] = fidelity[self.members[0].name]  # what the verdict reads
            self.report["store_fidelity_by_teacher"] = fidelity
            ensemble = TokenEnsemble([store for store, _, _ in opened.values()], list(opened),
                                     [m.weight for m in self.members], self.recipe.combine)
            self.member_mean_weights = ensemble.mean_weights()
            return ensemble
        store, seconds, fidelity = self._open_store(distiller, self.teacher)
        if seconds is not None:
            self.report["store_build_seconds"] = seconds
        self.report["store_fidelity"] = fidelity
        return store

    def _open_store(self, distiller: Distiller, teacher: Any):
        r = self.recipe
        rows = self.kd_rows
        return open_lm_store(
            store_root(r.store), self.store_key(distiller, rows, teacher), self.store_spec(distiller), rows,
            teacher, pad_id=self.pad_id, vocab_size=self.vocab_size, batch_size=r.train.eval_batch_size,
            seed=r.train.seed, meta={"teacher": teacher.path, "recipe_task": r.task}, log=self.log)

    def cache(self) -> str:
        self.prepare_teacher()
        distiller = self.distiller()
        if not distiller.needs_teacher:
            raise RecipeError("losses: none of the recipe's losses reads teacher outputs, so there is "
                              "nothing to cache")
        return self.describe_store(self.teacher_store(distiller))

    def describe_store(self, store: Any) -> str:
        """What ``distill cache`` prints about the store it built or found."""
        from distill.store.reader import format_info

        if self.members:
            return "\n\n".join(f"teacher {name}:\n{format_info(s.info())}"
                               for name, s in zip(store.names, store.stores, strict=True))
        return format_info(store.info())

    def cache_info(self) -> str:
        """The store's key (and contents) without running the teacher. With sequence-level KD the key covers
        the teacher's continuations: when they are not on disk yet, it says so (generating them would run
        it)."""
        from distill.store import TeacherStore
        from distill.store.reader import format_info

        self.resolve_teacher()  # the teacher directory and tokenizer; no weights
        rows = self.teacher_rows(generate=False)
        if rows is None:
            return str(StoreKeyUnknown(
                "no store yet: with causal_lm.sequence_kd the store key covers the teacher's continuations, "
                f"which have not been generated yet (they go to {self.pending_continuations}); "
                "`distill cache RECIPE` generates them and builds the store"))
        parts = []
        for name, teacher in [(m.name, m.source) for m in self.members] or [(None, self.teacher)]:
            root, key = store_root(self.recipe.store), self.store_key(self.distiller(), rows, teacher)
            text = (format_info(TeacherStore.open(root / key).info())
                    if (root / key / "manifest.json").exists()
                    else f"no store yet for key {key} under {root}; `distill cache RECIPE` builds it")
            parts.append(text if name is None else f"teacher {name}:\n{text}")
        return "\n\n".join(parts)

    # -- students -----------------------------------------------------------------------------------------
    def kd_data(self) -> list[dict[str, Any]]:
        return self.kd_rows

    def labelled_data(self) -> list[dict[str, Any]]:
        return self.train_rows

    def baseline_steps(self) -> int | None:
        return self.report["training"]["student"].get("steps")

    def validation_scores(self, model: torch.nn.Module) -> dict[str, float]:
        """Perplexity of ``model`` on the validation chunks (what ``select`` minimises)."""
        from distill.evaluation.perplexity import perplexity

        if not self.val_rows:
            raise RecipeError("select: no validation chunks to choose on; raise data.validation_fraction or "
                              "set select.enabled: false")
        m = perplexity(model, self.val_rows, self.pad_id, self.domains, self.recipe.train.eval_batch_size,
                       self.vocab_size)
        return {"perplexity": float(m["perplexity"])}

    def train(self, name: str, distiller: Distiller, data: list[dict[str, Any]], *, store: Any = None,
              teacher: torch.nn.Module | None = None, max_steps: int | None = None,
              specs: list[Any] | None = None) -> torch.nn.Module:
        """``data`` is the list of training rows; ``specs`` the losses of a ``select`` candidate."""
        from transformers import set_seed

        from distill.training import DistillTrainer
        from distill.training.args import training_arguments
        from distill.training.on_policy import OnPolicyTrainer

        r, c = self.recipe, self.recipe.causal_lm
        init = self.student_init()
        rows = data
        final = self.out / name
        on_policy = c.on_policy if (name == "student" and teacher is not None) else None
        ddk = c.ddk if (name == "student" and distiller.needs_teacher) else None
        fp = fingerprint({
            "train": r.train.fingerprinted(), "max_steps": max_steps, "init": hash_files(init),
            "losses": self.losses_key(name, specs),
            # every token of every row: changed text must never reuse a student trained on other text
            "rows": hash_token_rows(rows), "n": len(rows),
            "store": getattr(store, "key", None), "on_policy": str(on_policy), "ddk": str(ddk),
        })
        if (done := stage_done(final, fp)) is not None:
            self.log(f"{name}: already trained, reusing {final}")
            self.report["training"][name] = done.get("training", {})
            return load_causal_lm(str(final))
        set_seed(r.train.seed)
        model = load_causal_lm(str(init))
        set_dropout(model, r.train.dropout)
        ckpt = stage_checkpoints(self.out, name, fp, self.log)
        overrides: dict[str, Any] = {"max_steps": max_steps} if max_steps else {}
        base = OnPolicyTrainer if on_policy is not None else DistillTrainer
        cls = type("CausalLMTrainer", (_DomainTrainerMixin, base), {})
        kwargs: dict[str, Any] = {}
        if on_policy is not None:
            kwargs = dict(lmbda=on_policy.lmbda, max_new_tokens=on_policy.max_new_tokens,
                          temperature=on_policy.temperature, prompt_tokens=on_policy.prompt_tokens,
                          seed=r.train.seed)
        trainer = cls(
            model=model, args=training_arguments(r.train, str(ckpt), evaluate=False, **overrides),
            train_dataset=RowDataset(rows), data_collator=self.collator(),
            processing_class=self.student_tokenizer, distiller=distiller, teacher=teacher, store=store,
            token_level=True, vocab_size=self.vocab_size, anchor=r.train.anchor, **kwargs,
        )
        ddk_cb = self._ddk(trainer, rows, ddk) if ddk is not None else None
        curve = (self._curve(trainer, model) if name in ("student", "student_no_kd") and c.curve_steps
                 else None)
        mode = ("teacher from the store" if store is not None
                else "online teacher" if teacher is not None else "text only")
        self.log(f"{name}: training on {len(rows)} rows ({mode}{', on-policy' if on_policy else ''}"
                 f"{', DDK' if ddk_cb else ''}{', FSDP' if trainer.is_fsdp_enabled else ''})")
        info, model = train_resuming(trainer, ckpt, name, r.train.resume, self.log)
        info["seconds_per_step"] = info["seconds"] / max(info["steps"], 1)
        if ddk_cb is not None:
            info["ddk_history"] = ddk_cb.history
            self.report["ddk"] = {"domains": self.domains, "history": ddk_cb.history}
        if on_policy is not None:
            info["on_policy_batches"] = trainer.on_policy_batches
        if curve is not None:
            info["curve"] = curve
        state = process_state()
        if state.is_main_process:
            write_stage(final, fp,
                        lambda d: (model.save_pretrained(d), self.student_tokenizer.save_pretrained(d)), info)
            shutil.rmtree(ckpt, ignore_errors=True)
        state.wait_for_everyone()
        self.report["training"][name] = info
        return model

    def collator(self) -> CausalLMCollator:
        """How the student's training rows become batches."""
        return CausalLMCollator(self.pad_id)

    def _curve(self, trainer: Any, model: torch.nn.Module) -> list[dict[str, Any]]:
        """Score ``model`` on the held-out rows at each of ``causal_lm.curve_steps`` while it trains; returns
        the list the points are appended to (step, perplexity, bits per byte, per-row NLL for the paired
        tests)."""
        from transformers import TrainerCallback

        from distill.evaluation.perplexity import perplexity

        steps, points = {int(s) for s in self.recipe.causal_lm.curve_steps}, []
        task = self

        class Curve(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                # a sharded student's forward is a collective: then every process scores it
                if state.global_step in steps and (state.is_world_process_zero or trainer.is_fsdp_enabled):
                    was_training = model.training
                    m = perplexity(model, task.test_rows, task.pad_id, task.domains,
                                   task.recipe.train.eval_batch_size, task.vocab_size,
                                   row_bytes=task.test_bytes())
                    model.train(was_training)
                    points.append({"step": state.global_step, "perplexity": m["perplexity"],
                                   "bits_per_byte": m.get("bits_per_byte"),
                                   "perplexity_by_domain": m["perplexity_by_domain"],
                                   "bits_per_byte_by_domain": m.get("bits_per_byte_by_domain"),
                                   "chunk_nll": m["chunk_nll"], "chunk_tokens": m["chunk_tokens"]})
                    trainer.log({"heldout_perplexity": m["perplexity"]})

        trainer.add_callback(Curve())
        return points

    def _ddk_batches(self, cfg: Any) -> list[dict[str, torch.Tensor]]:
        """The validation batches DDK measures the per-domain loss gap on (the first ``eval_chunks`` rows of
        every domain)."""
        n = len(self.domains)
        per_domain: dict[int, list] = {}
        for x in self.val_rows:
            per_domain.setdefault(x["domain"], []).append(x)
        picked = [x for d in range(n) for x in per_domain.get(d, [])[: cfg.eval_chunks]]
        if {x["domain"] for x in picked} != set(range(n)):
            raise RecipeError("causal_lm.ddk: every domain needs validation rows; "
                              "raise data.validation_fraction")
        collate = CausalLMCollator(self.pad_id)
        return [collate(picked[i:i + 16]) for i in range(0, len(picked), 16)]

    def _ddk(self, trainer, rows, cfg):
        from distill.data.ddk import DDKCallback, DomainSampler, domain_losses

        n = len(self.domains)
        sampler = DomainSampler([x["domain"] for x in rows], n, seed=self.recipe.train.seed,
                                num_samples=len(rows))
        batches = self._ddk_batches(cfg)
        if self._teacher_domain_loss is None:
            self._teacher_domain_loss = domain_losses(self.teacher_model(), batches, n, self.vocab_size)
        cb = DDKCallback(sampler, batches, self._teacher_domain_loss, self.domains, cfg.interval, cfg.alpha,
                         self.vocab_size, log=trainer.log)
        trainer.domain_sampler = sampler
        trainer.add_callback(cb.callback)
        return cb

    # -- evaluation ---------------------------------------------------------------------------------------
    def evaluate(self, role: str, model: torch.nn.Module) -> dict[str, Any]:
        from distill.evaluation import count_parameters
        from distill.evaluation.perplexity import add_intervals, perplexity
        from distill.evaluation.speed import weights_size_mb

        m = perplexity(model, self.test_rows, self.pad_id, self.domains, self.recipe.train.eval_batch_size,
                       self.vocab_size, row_bytes=self.test_bytes())
        add_intervals(m, self.test_bytes(), seed=self.recipe.train.seed)
        # per-chunk NLL stays out of report.json's metrics; finish compares the models with it
        self.chunk_nll[role] = (m.pop("chunk_nll"), m.pop("chunk_tokens"))
        m["parameters"] = count_parameters(model)
        m["size_mb"] = weights_size_mb(model)
        self.report["models"][role] = m
        self.log(f"{role}: held-out perplexity {m['perplexity']:.3f} "
                 f"({', '.join(f'{k} {v:.2f}' for k, v in m['perplexity_by_domain'].items() if v)})")
        return m

    def test_bytes(self) -> list[int]:
        """UTF-8 bytes of each held-out row's scored text (for bits per byte), counted once."""
        from distill.evaluation.perplexity import scored_bytes

        if self._test_bytes is None:
            self._test_bytes = scored_bytes(self.test_rows, self.teacher_tokenizer)
        return self._test_bytes

    def evaluate_teacher(self) -> dict[str, Any]:
        """The teacher's perplexity; with DDK also its per-domain validation loss, measured now so the teacher
        need not stay in memory while the student trains."""
        c = self.recipe.causal_lm
        if self.members:
            return self.evaluate_members()
        metrics = self.evaluate("teacher", self.teacher_model())
        if c.ddk is not None and self.distiller().needs_teacher:
            from distill.data.ddk import domain_losses

            self._teacher_domain_loss = domain_losses(self.teacher_model(), self._ddk_batches(c.ddk),
                                                      len(self.domains), self.vocab_size)
        return metrics

    def evaluate_members(self) -> dict[str, Any]:
        """Several teachers: the mixture scored as the teacher (every member run, their distributions mixed
        by the rule), then each member alone, for the ``teachers`` section."""
        from distill.evaluation.perplexity import perplexity
        from distill.tasks.multi_teacher import MixtureLM

        r = self.recipe
        mixture = MixtureLM([m.source.model() for m in self.members], [m.weight for m in self.members],
                            r.combine)
        metrics = self.evaluate("teacher", mixture)
        metrics["teachers"] = len(self.members)
        rows = []
        for m in self.members:
            alone = perplexity(m.source.model(), self.test_rows, self.pad_id, self.domains,
                               r.train.eval_batch_size, self.vocab_size, row_bytes=self.test_bytes())
            rows.append({"name": m.name, "path": m.source.path, "weight": m.weight,
                         "perplexity": alone["perplexity"], "bits_per_byte": alone.get("bits_per_byte"),
                         "mean_weight": (self.member_mean_weights or {}).get(m.name)})
            if m.source is not self.teacher:
                m.source.release()
        self.report["teachers"] = {"rule": r.combine, "members": rows,
                                   "mixture_perplexity": metrics["perplexity"]}
        self.log("teachers: " + ", ".join(f"{row['name']} perplexity {row['perplexity']:.3f}" for row in rows)
                 + f"; mixed by {r.combine}: {metrics['perplexity']:.3f}")
        return metrics

    # -- report -------------------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        from distill.evaluation.perplexity import lm_significance, sample_generations

        r, c = self.recipe, self.recipe.causal_lm
        models = self.report["models"]
        saved = {"student_kd": self.out / "student", "student_no_kd": self.out / "student_no_kd",
                 **({} if self.members else {"teacher": Path(self.teacher.path)})}
        self.sizes_on_disk(saved)
        t, s, b = models.get("teacher", {}), models.get("student_kd", {}), models.get("student_no_kd", {})
        summary: dict[str, Any] = {}
        if s.get("perplexity") and b.get("perplexity"):
            summary["kd_vs_no_kd_perplexity"] = s["perplexity"] - b["perplexity"]
        if s.get("tokens_per_second") and t.get("tokens_per_second"):
            summary["speedup"] = s["tokens_per_second"] / t["tokens_per_second"]
        if s.get("parameters") and t.get("parameters"):
            summary["size_ratio"] = s["parameters"] / t["parameters"]
        self.report["significance"] = lm_significance(self.chunk_nll, seed=r.train.seed,
                                                      n_bytes=sum(self.test_bytes()))
        cmp = self.report["significance"].get("student_kd_vs_student_no_kd")
        if cmp:
            summary.update(kd_vs_no_kd_p=cmp["p"], kd_vs_no_kd_perplexity_ratio=cmp["perplexity_ratio"],
                           kd_vs_no_kd_perplexity_ratio_ci95=cmp["perplexity_ratio_ci95"],
                           kd_vs_no_kd_bits_per_byte=cmp.get("bits_per_byte_difference"),
                           kd_vs_no_kd_bits_per_byte_ci95=cmp.get("bits_per_byte_ci95"),
                           kd_worse_than_no_kd=bool(cmp["difference"] > 0 and cmp["significant"]))
        from distill.evaluation.perplexity import curve_comparison

        training = self.report.get("training") or {}
        curve = curve_comparison((training.get("student") or {}).get("curve"),
                                 (training.get("student_no_kd") or {}).get("curve"),
                                 n_bytes=sum(self.test_bytes()), seed=r.train.seed)
        if curve:
            self.report["curve"] = curve
        samples: dict[str, Any] = {}
        if c.sample_prompts and process_state().is_main_process:
            for role, where in saved.items():
                if role in models and where.is_dir():
                    samples[role] = sample_generations(str(where), c.sample_prompts, c.sample_tokens,
                                                       r.train.seed)
        self.report.update({
            **self.common_report(), "summary": summary, "domains": self.domains, "samples": samples,
            "data": {"train": len(self.train_rows), "kd_rows": len(self.kd_rows),
                     "validation": len(self.val_rows), "test": len(self.test_rows),
                     "chunk_length": c.chunk_length},
            "student_parameters": s.get("parameters"),
        })
        if not process_state().is_main_process:
            return self.report
        (self.out / "student" / "recipe.yaml").write_text(r.to_yaml())
        if r.export.model_card:
            from distill.export.model_card import write_causal_lm_model_card

            layers = num_layers(load_config(str(self.out / "student"), "student"))
            write_causal_lm_model_card(self.out / "student", r, self.report, layers)
        from distill.evaluation.perplexity import lm_verdict

        self.report["verdict"] = lm_verdict(self.report)
        self.write_outputs("\n".join(self.report["verdict"]),
                           f"student saved to {self.out / 'student'} "
                           "(pipeline('text-generation', model=...) loads it); ")
        return self.report
