"""``task: causal-lm``: distil a causal language model into a smaller one on the same tokenizer.

Stages as in a classification run: teacher -> student init (a layer subset of the teacher, or any smaller
model) -> data (text chunks or prompt/response rows, a domain per row; optionally the teacher's
continuations, generated once) -> teacher top-k logits per token in the store (or the online teacher; always
online for on-policy batches) -> token-level training -> held-out perplexity per domain for the teacher, the
distilled student and the same student trained on the text alone with the same number of steps -> export
with ``save_pretrained`` (loadable by ``pipeline('text-generation')``) and sample generations in the report.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from distill._dataclass_io import RecipeError
from distill.config import LossConfig, Recipe
from distill.data.text_lm import (
    CausalLMCollator,
    RowDataset,
    check_vocabularies,
    chunk_frame,
    pad_token_id,
    prompt_response_rows,
)
from distill.losses import LOSSES, LossContext, build_losses
from distill.models import hidden_size, load_config, load_tokenizer, num_layers
from distill.pipeline import (
    Plan,
    Run,
    StoreKeyUnknown,
    _fingerprint,
    _hash_files,
    _state,
    stage_checkpoints,
    stage_done,
    train_resuming,
    write_stage,
)
from distill.students.inherit import check_layers
from distill.training import Distiller

LM_SIGNALS = {"logits"}

CODEC_CALIBRATION_ROWS = 64  # training rows a head codec is fitted on (the first ones)
FIDELITY_ROWS = 8  # rows a store's fidelity is measured on, once


def read_text_table(path: str, field: str = "data.train") -> pd.DataFrame:
    """A ``.txt`` file becomes one row per paragraph (blank-line separated; a file without blank lines, one
    row per 20 lines); other formats go through :func:`distill.data.sources.read_table`."""
    p = Path(path)
    if p.suffix.lower() == ".txt":
        if not p.exists():
            raise RecipeError(f"{field}: file {path!r} does not exist")
        text = p.read_text(encoding="utf-8", errors="replace")
        paras = [t.strip() for t in re.split(r"\n\s*\n", text) if t.strip()]
        if len(paras) < 2:
            lines = [ln for ln in text.splitlines() if ln.strip()]
            paras = ["\n".join(lines[i:i + 20]) for i in range(0, len(lines), 20)]
        return pd.DataFrame({"text": paras})
    from distill.data.sources import read_table

    return read_table(path, field)


def split_rows(rows: list[dict[str, Any]], n_domains: int, test_fraction: float, validation_fraction: float,
               seed: int) -> tuple[list, list, list]:
    """Per-domain random split of the rows into train / validation / test (held out)."""
    rng = np.random.default_rng(seed)
    train, val, test = [], [], []
    for d in range(n_domains):
        mine = [r for r in rows if r["domain"] == d]
        order = rng.permutation(len(mine))
        n_test = max(1, int(round(test_fraction * len(mine)))) if len(mine) > 2 else 0
        n_val = max(1, int(round(validation_fraction * len(mine)))) if len(mine) > 3 else 0
        test += [mine[i] for i in order[:n_test]]
        val += [mine[i] for i in order[n_test:n_test + n_val]]
        train += [mine[i] for i in order[n_test + n_val:]]
    for part in (train, val, test):
        for i, r in enumerate(part):
            r["example_index"] = i
    return train, val, test


def load_causal_lm(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def plan_causal_lm(recipe: Recipe) -> Plan:
    """Validate a causal-LM recipe without loading weights: losses, layers, vocabularies."""
    from distill.packaged import resolve_model

    for i, spec in enumerate(recipe.losses):
        cls = LOSSES.get(spec.name)
        missing = (set(cls.teacher_needs) | set(cls.student_needs)) - LM_SIGNALS
        if missing:
            raise RecipeError(f"losses[{i}].name: {spec.name!r} needs {sorted(missing)}, which a causal-LM run "
                              "does not provide; use kd (any divergence, skew), ce and hard_kd")
    t, s = recipe.teacher, recipe.student
    tdir = resolve_model(t.model)
    tconf = load_config(tdir, "teacher.model", t.revision, t.trust_remote_code)
    t_layers = num_layers(tconf)
    if s.from_teacher:
        check_layers(list(s.layers or []), t_layers)
        sconf, s_layers, s_vocab = None, len(s.layers or []), int(tconf.vocab_size)
        shared = int(tconf.vocab_size)
    else:
        sdir = resolve_model(s.model or "")
        sconf = load_config(sdir, "student.model")
        s_layers = num_layers(sconf)
        if s.layers:
            check_layers(list(s.layers), s_layers, "the student model")
            s_layers = len(s.layers)
        s_vocab = int(sconf.vocab_size)
        shared = check_vocabularies(load_tokenizer(tdir, t.revision), load_tokenizer(sdir), int(tconf.vocab_size),
                                    s_vocab)
    ctx = LossContext(student_hidden_size=hidden_size(sconf or tconf), teacher_hidden_size=hidden_size(tconf),
                      student_num_layers=s_layers, teacher_num_layers=t_layers, num_classes=shared,
                      same_tokenizer=True)
    build_losses(recipe.losses, ctx)
    from distill.data.splits import TextSplits

    empty = pd.DataFrame({"text": []})  # the rows are built by the run itself (chunks / prompt-response)
    splits = TextSplits(train=empty, validation=empty, test=empty, unlabeled=None, labels=[])
    return Plan(recipe, splits, tconf, sconf, True, ctx,
                {"teacher_dir": tdir, "vocab_size": shared, "teacher_vocab": int(tconf.vocab_size),
                 "student_vocab": s_vocab})



def _hash_token_rows(rows: list[dict[str, Any]]) -> str:
    """One digest of every row's token ids (and loss mask, when it has one)."""
    h = hashlib.sha256()
    for row in rows:
        h.update(np.asarray(row["input_ids"], dtype=np.int64).tobytes())
        if "labels" in row:
            h.update(np.asarray(row["labels"], dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()

class _DomainTrainerMixin:
    """Makes the Trainer draw its training order from a given sampler (the DDK domain sampler)."""

    domain_sampler = None

    def _get_train_sampler(self, train_dataset=None):
        if self.domain_sampler is not None:
            return self.domain_sampler
        return super()._get_train_sampler(train_dataset)


class CausalLMRun(Run):
    """One causal-LM distillation run; each stage is resumable as in :class:`distill.pipeline.Run`."""

    def make_plan(self) -> Plan:
        self.chunk_nll: dict[str, tuple[list[float], list[int]]] = {}  # role -> held-out NLL per chunk
        return plan_causal_lm(self.recipe)

    # -- teacher ------------------------------------------------------------------------------------------
    def prepare_teacher(self) -> None:
        self.teacher_path = self.plan.info["teacher_dir"]
        self.teacher_tokenizer = load_tokenizer(self.teacher_path, self.recipe.teacher.revision)
        self.pad_id = pad_token_id(self.teacher_tokenizer)
        self.vocab_size = self.plan.info["vocab_size"]

    def teacher(self) -> torch.nn.Module:
        if self._teacher is None:
            self.log(f"loading the teacher from {self.teacher_path}")
            from accelerate import PartialState

            self._teacher = load_causal_lm(self.teacher_path).eval().to(PartialState().device)
        return self._teacher

    # -- data ---------------------------------------------------------------------------------------------
    def load_rows(self) -> None:
        r, c = self.recipe, self.recipe.causal_lm
        d = r.data
        if d.source != "files":
            raise RecipeError("data.source: a causal-LM run reads files (data.train: .txt, .csv, .jsonl, ...)")
        df = read_text_table(d.train or "")
        if d.text_column != "text" and d.text_column in df.columns:
            df = df.rename(columns={d.text_column: "text"})
        tok = self.teacher_tokenizer
        if c.format == "chat":
            rows, names = prompt_response_rows(df, tok, c.chunk_length, c.prompt_column, c.response_column,
                                               c.domain_column, c.chat_template)
        else:
            rows, names = chunk_frame(df, tok, c.chunk_length, c.domain_column)
        if not rows:
            raise RecipeError("data.train: no training chunks came out of the data (empty text?)")
        self.domains = names
        self.train_rows, self.val_rows, self.test_rows = split_rows(rows, len(names), d.test_fraction,
                                                                    d.validation_fraction, d.split_seed)
        if d.max_train_examples:
            self.train_rows = self.train_rows[: d.max_train_examples]
        self.log(f"data: {len(self.train_rows)} train / {len(self.val_rows)} validation / {len(self.test_rows)} "
                 f"held-out rows over domains {names}")

    def add_teacher_continuations(self, generate: bool = True) -> Path | None:
        """Sequence-level KD: the teacher continues each training row's prefix (once, cached). Returns the
        continuations' file. With ``generate=False`` only continuations already on disk are used: when there
        are none, nothing changes and the result is None (the teacher is neither loaded nor run)."""
        from distill.store import default_store_root
        from distill.teachers.generate import cached_continuations, teacher_continuations

        r, sk = self.recipe, self.recipe.causal_lm.sequence_kd
        assert sk is not None
        prompts = [row["input_ids"][: row["prompt_length"] or sk.prompt_tokens] for row in self.train_rows]
        root = Path(r.store.dir) if r.store.dir else default_store_root()
        cache_dir = root / "teacher-generations"
        conts, path = cached_continuations(prompts, cache_dir, self.teacher_fingerprint(), sk.max_new_tokens,
                                           sk.temperature, sk.top_p, r.train.seed)
        if conts is not None:
            self.log(f"teacher continuations found in {path}")
        elif not generate:
            self.pending_continuations = path
            return None
        else:
            conts, path = teacher_continuations(
                self.teacher(), prompts, cache_dir, self.teacher_fingerprint(), self.pad_id,
                self.teacher_tokenizer.eos_token_id, sk.max_new_tokens, sk.temperature, sk.top_p,
                r.train.eval_batch_size, r.train.seed, log=self.log)
        generated = [{"input_ids": list(p) + list(cont), "prompt_length": len(p), "domain": row["domain"]}
                     for p, cont, row in zip(prompts, conts, self.train_rows) if cont]
        self.report["sequence_kd"] = {"file": str(path), "rows": len(generated),
                                      "mean_new_tokens": float(np.mean([len(x) for x in conts])) if conts else 0}
        self.kd_rows = (list(self.train_rows) if sk.keep_original else []) + generated
        for i, row in enumerate(self.kd_rows):
            self.kd_rows[i] = {**row, "example_index": i}
        return path

    # -- student init -------------------------------------------------------------------------------------
    def _student_init(self) -> Path:
        r = self.recipe
        init = self.out / "student_init"
        fp = _fingerprint({"student": r.student.__dict__, "seed": r.train.seed, "task": r.task,
                           "teacher": self.teacher_fingerprint() if r.student.from_teacher else None})
        if stage_done(init, fp):
            self.student_tokenizer = load_tokenizer(str(init))
            return init
        from transformers import set_seed

        from distill.students.inherit import student_from_teacher

        set_seed(r.train.seed)
        if r.student.from_teacher:
            model = student_from_teacher(self.teacher(), list(r.student.layers or []))
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

    def lm_store_location(self, distiller: Distiller, rows: list[dict[str, Any]]) -> tuple[Path, str]:
        """(root, key) of the store for these token rows: the key covers teacher, tokenizer, every token,
        what is kept and the vocabulary width."""
        from distill.store import default_store_root, fingerprint_rows, fingerprint_tokenizer, store_key

        r = self.recipe
        key = store_key(teacher=self.teacher_fingerprint(), tokenizer=fingerprint_tokenizer(self.teacher_tokenizer),
                        data=fingerprint_rows([tuple(x["input_ids"]) for x in rows]), task=r.task,
                        spec=self.store_spec(distiller), vocab=self.vocab_size)
        return (Path(r.store.dir) if r.store.dir else default_store_root()), key

    def teacher_rows(self, generate: bool = True) -> list[dict[str, Any]] | None:
        """The rows the teacher is run over: the training chunks, plus its own continuations when
        sequence-level KD is on (generated once and cached). With ``generate=False``, None when those
        continuations are not on disk yet."""
        self.load_rows()
        self.kd_rows = list(self.train_rows)
        if self.recipe.causal_lm.sequence_kd is not None and self.add_teacher_continuations(generate) is None:
            return None
        return self.kd_rows

    def build_teacher_store(self, distiller: Distiller):
        return self.open_lm_store(distiller, self.teacher_rows())

    def store_location(self, distiller: Distiller) -> tuple[Path, str]:
        """(root, key) of the store, without running the teacher. With sequence-level KD the key covers the
        teacher's continuations: when they are not on disk yet the key cannot be known, and
        :class:`StoreKeyUnknown` says so (generating them here would run the teacher)."""
        rows = self.teacher_rows(generate=False)
        if rows is None:
            raise StoreKeyUnknown(
                "no store yet: with causal_lm.sequence_kd the store key covers the teacher's continuations, "
                f"which have not been generated yet (they go to {self.pending_continuations}); "
                "`distill cache RECIPE` generates them and builds the store")
        return self.lm_store_location(distiller, rows)

    def open_lm_store(self, distiller: Distiller, rows: list[dict[str, Any]]):
        from distill.store import TeacherStore, build_store

        r = self.recipe
        spec = self.store_spec(distiller)
        root, key = self.lm_store_location(distiller, rows)
        collate = CausalLMCollator(self.pad_id)

        coded = spec.codec != "topk"

        def teacher_batch(indices: list[int]):
            teacher = self.teacher()
            b = collate([rows[i] for i in indices])
            device = next(teacher.parameters()).device
            kw = {"input_ids": b["input_ids"].to(device), "attention_mask": b["attention_mask"].to(device)}
            return teacher, b, kw

        @torch.no_grad()
        def compute(indices: list[int]):
            from distill.outputs import ModelOutputs
            from distill.store.codec import forward_with_head_input

            teacher, b, kw = teacher_batch(indices)
            if coded:  # the codec keeps the output layer's input, the logits are rebuilt when read
                _, h = forward_with_head_input(teacher, **kw)
                return ModelOutputs(attention_mask=b["attention_mask"], extra={"head_input": h.float().cpu()})
            logits = teacher(**kw).logits
            return ModelOutputs(logits=logits[..., : self.vocab_size], attention_mask=b["attention_mask"])

        @torch.no_grad()
        def fit_codec():
            from distill.store.codec import CODEC_BITS, HeadCodec, forward_with_head_input, output_layer

            calib = list(range(min(len(rows), CODEC_CALIBRATION_ROWS)))  # a fixed choice, so the codec is too
            hidden = []
            for i in range(0, len(calib), r.train.eval_batch_size):
                teacher, b, kw = teacher_batch(calib[i:i + r.train.eval_batch_size])
                _, h = forward_with_head_input(teacher, **kw)
                hidden.append(h.float().cpu()[b["attention_mask"].bool()])
            weight, bias = output_layer(self.teacher(), self.vocab_size)
            self.log(f"fitting the {spec.codec} codec on {sum(len(x) for x in hidden):,} teacher tokens")
            # the output layer stays where the teacher is: the Fisher pass over the vocabulary runs there
            return HeadCodec.fit(torch.cat(hidden), weight, bias, bits=CODEC_BITS[spec.codec], seed=r.train.seed)

        exists = (root / key / "manifest.json").exists()
        if not exists:
            self.log(f"running the teacher once over {len(rows)} rows into the store {root / key}")
        t0 = time.perf_counter()
        state = _state()
        build_store(root, key, spec, compute, num_examples=len(rows), batch_size=r.train.eval_batch_size,
                    progress=False, meta={"teacher": self.teacher_path, "recipe_task": r.task},
                    rank=state.process_index, world_size=state.num_processes, barrier=state.wait_for_everyone,
                    log=self.log, head_codec=fit_codec if coded else None)
        if not exists:
            self.report["store_build_seconds"] = time.perf_counter() - t0
        store = TeacherStore.open(root / key)
        self.report["store_fidelity"] = self.store_fidelity(store, rows, teacher_batch)
        return store

    def store_fidelity(self, store, rows: list[dict[str, Any]], teacher_batch) -> dict[str, Any]:
        """Measured once per store on ``FIDELITY_ROWS`` rows against the teacher's full logits, then kept next to the store
        (fidelity.json) and shown by ``distill cache --info``. The rows follow the codec's calibration rows
        when the data has enough, so a head codec is judged on text it was not fitted on."""
        from distill.store.fidelity import describe_fidelity, load_fidelity, measure_fidelity, save_fidelity

        known = load_fidelity(store.path)
        if known is None:
            def full(indices: list[int]):
                teacher, b, kw = teacher_batch(indices)
                with torch.no_grad():
                    return teacher(**kw).logits[..., : self.vocab_size].float().cpu(), b["attention_mask"]

            n = len(rows)
            start = (CODEC_CALIBRATION_ROWS if n >= CODEC_CALIBRATION_ROWS + FIDELITY_ROWS
                     else max(n - FIDELITY_ROWS, 0))
            known = measure_fidelity(store, list(range(start, min(n, start + FIDELITY_ROWS))), full)
            known["first_row"] = start
            known["outside_calibration"] = start >= min(n, CODEC_CALIBRATION_ROWS)
            if _state().is_main_process:
                save_fidelity(store.path, known)
        self.log(f"store fidelity: {describe_fidelity(known)}")
        return known

    # -- training -----------------------------------------------------------------------------------------
    def train_student(self, name: str, init: Path, distiller: Distiller, frame, store=None,
                      teacher: torch.nn.Module | None = None, max_steps: int | None = None) -> torch.nn.Module:
        """``frame`` is the list of training rows."""
        from transformers import set_seed

        from distill.training import DistillTrainer
        from distill.training.args import training_arguments
        from distill.training.on_policy import OnPolicyTrainer

        r, c = self.recipe, self.recipe.causal_lm
        rows: list[dict[str, Any]] = frame
        final = self.out / name
        on_policy = c.on_policy if (name == "student" and teacher is not None) else None
        ddk = c.ddk if (name == "student" and distiller.needs_teacher) else None
        fp = _fingerprint({
            "train": r.train.__dict__, "max_steps": max_steps, "init": _hash_files(init),
            "losses": [spec.__dict__ for spec in r.losses] if name == "student" else "ce",
            # every token of every row: changed text must never reuse a student trained on other text
            "rows": _hash_token_rows(rows), "n": len(rows),
            "store": getattr(store, "key", None), "on_policy": str(on_policy), "ddk": str(ddk),
        })
        if (done := stage_done(final, fp)) is not None:
            self.log(f"{name}: already trained, reusing {final}")
            self.report["training"][name] = done.get("training", {})
            return load_causal_lm(str(final))
        set_seed(r.train.seed)
        model = load_causal_lm(str(init))
        ckpt = stage_checkpoints(self.out, name, fp, self.log)
        overrides: dict[str, Any] = {"max_steps": max_steps} if max_steps else {}
        base = OnPolicyTrainer if on_policy is not None else DistillTrainer
        cls = type("CausalLMTrainer", (_DomainTrainerMixin, base), {})
        kwargs: dict[str, Any] = {}
        if on_policy is not None:
            kwargs = dict(lmbda=on_policy.lmbda, max_new_tokens=on_policy.max_new_tokens,
                          temperature=on_policy.temperature, prompt_tokens=on_policy.prompt_tokens, seed=r.train.seed)
        trainer = cls(
            model=model, args=training_arguments(r.train, str(ckpt), evaluate=False, **overrides),
            train_dataset=RowDataset(rows), data_collator=CausalLMCollator(self.pad_id),
            processing_class=self.student_tokenizer, distiller=distiller, teacher=teacher, store=store,
            token_level=True, vocab_size=self.vocab_size, **kwargs,
        )
        ddk_cb = None
        if ddk is not None:
            ddk_cb = self._ddk(trainer, rows, ddk)
        mode = "teacher from the store" if store is not None else "online teacher" if teacher is not None else "text only"
        self.log(f"{name}: training on {len(rows)} rows ({mode}{', on-policy' if on_policy else ''}"
                 f"{', DDK' if ddk_cb else ''})")
        info = train_resuming(trainer, ckpt, name, r.train.resume, self.log)
        info["seconds_per_step"] = info["seconds"] / max(info["steps"], 1)
        if ddk_cb is not None:
            info["ddk_history"] = ddk_cb.history
            self.report["ddk"] = {"domains": self.domains, "history": ddk_cb.history}
        if on_policy is not None:
            info["on_policy_batches"] = trainer.on_policy_batches
        state = _state()
        if state.is_main_process:
            write_stage(final, fp, lambda d: (model.save_pretrained(d), self.student_tokenizer.save_pretrained(d)),
                        info)
            shutil.rmtree(ckpt, ignore_errors=True)
        state.wait_for_everyone()
        self.report["training"][name] = info
        return model

    def _ddk(self, trainer, rows, cfg):
        from distill.data.ddk import DDKCallback, DomainSampler, domain_losses

        n = len(self.domains)
        sampler = DomainSampler([x["domain"] for x in rows], n, seed=self.recipe.train.seed,
                                num_samples=len(rows))
        per_domain: dict[int, list] = {}
        for x in self.val_rows:
            per_domain.setdefault(x["domain"], []).append(x)
        picked = [x for d in range(n) for x in per_domain.get(d, [])[: cfg.eval_chunks]]
        if {x["domain"] for x in picked} != set(range(n)):
            raise RecipeError("causal_lm.ddk: every domain needs validation rows; raise data.validation_fraction")
        collate = CausalLMCollator(self.pad_id)
        batches = [collate(picked[i:i + 16]) for i in range(0, len(picked), 16)]
        if getattr(self, "_teacher_domain_loss", None) is None:
            self._teacher_domain_loss = domain_losses(self.teacher(), batches, n, self.vocab_size)
        cb = DDKCallback(sampler, batches, self._teacher_domain_loss, self.domains, cfg.interval, cfg.alpha,
                         self.vocab_size, log=trainer.log)
        trainer.domain_sampler = sampler
        trainer.add_callback(cb.callback)
        return cb

    # -- evaluation ---------------------------------------------------------------------------------------
    def evaluate(self, role: str, model: torch.nn.Module, tokenizer=None, teacher_pred=None) -> dict[str, Any]:
        from distill.evaluation import count_parameters
        from distill.evaluation.perplexity import perplexity
        from distill.evaluation.speed import weights_size_mb

        m = perplexity(model, self.test_rows, self.pad_id, self.domains, self.recipe.train.eval_batch_size,
                       self.vocab_size)
        # per-chunk NLL stays out of report.json's metrics; finish_causal_lm compares the models with it
        self.chunk_nll[role] = (m.pop("chunk_nll"), m.pop("chunk_tokens"))
        m["parameters"] = count_parameters(model)
        m["size_mb"] = weights_size_mb(model)
        self.report["models"][role] = m
        self.log(f"{role}: held-out perplexity {m['perplexity']:.3f} "
                 f"({', '.join(f'{k} {v:.2f}' for k, v in m['perplexity_by_domain'].items() if v)})")
        return m

    # -- the run ------------------------------------------------------------------------------------------
    def __call__(self) -> dict[str, Any]:
        r, c = self.recipe, self.recipe.causal_lm
        self.prepare_teacher()
        self.load_rows()
        init = self.student_init()
        distiller = Distiller(build_losses(r.losses, self.plan.loss_context))
        self.kd_rows = list(self.train_rows)
        if c.sequence_kd is not None:
            self.add_teacher_continuations()
        store = None
        if distiller.needs_teacher and r.store.enabled:
            store = self.open_lm_store(distiller, self.kd_rows)
            self.report["store"] = {"key": store.key, "path": str(store.path), **store.info()}
        self.evaluate("teacher", self.teacher())
        online = self.teacher() if distiller.needs_teacher and store is None else None
        if c.ddk is not None and distiller.needs_teacher:
            self.teacher()  # the DDK teacher losses are measured before the teacher leaves memory
        student = self.train_student("student", init, distiller, self.kd_rows, store=store, teacher=online)
        self.release_teacher()
        self.evaluate("student_kd", student)
        del student
        if r.eval.baseline:
            ce = build_losses([LossConfig(name="ce")], self.plan.loss_context)
            steps = self.report["training"]["student"].get("steps")
            base = self.train_student("student_no_kd", init, Distiller(ce), self.train_rows, max_steps=steps)
            self.evaluate("student_no_kd", base)
            del base
        return self.finish_causal_lm()

    def finish_causal_lm(self) -> dict[str, Any]:
        import transformers

        from distill import __version__
        from distill.evaluation import write_report
        from distill.evaluation.perplexity import lm_significance, sample_generations
        from distill.evaluation.speed import dir_size_mb

        r, c = self.recipe, self.recipe.causal_lm
        models = self.report["models"]
        for role, where in (("teacher", Path(self.teacher_path)), ("student_kd", self.out / "student"),
                            ("student_no_kd", self.out / "student_no_kd")):
            if role in models and where.is_dir() and dir_size_mb(where) > 0:
                models[role]["size_mb"] = dir_size_mb(where)
        t, s, b = models.get("teacher", {}), models.get("student_kd", {}), models.get("student_no_kd", {})
        summary: dict[str, Any] = {}
        if s.get("perplexity") and b.get("perplexity"):
            summary["kd_vs_no_kd_perplexity"] = s["perplexity"] - b["perplexity"]
        if s.get("tokens_per_second") and t.get("tokens_per_second"):
            summary["speedup"] = s["tokens_per_second"] / t["tokens_per_second"]
        if s.get("parameters") and t.get("parameters"):
            summary["size_ratio"] = s["parameters"] / t["parameters"]
        self.report["significance"] = lm_significance(self.chunk_nll, seed=r.train.seed)
        cmp = self.report["significance"].get("student_kd_vs_student_no_kd")
        if cmp:
            summary.update(kd_vs_no_kd_p=cmp["p"], kd_vs_no_kd_perplexity_ratio=cmp["perplexity_ratio"],
                           kd_vs_no_kd_perplexity_ratio_ci95=cmp["perplexity_ratio_ci95"])
        samples: dict[str, Any] = {}
        if c.sample_prompts and _state().is_main_process:
            for role, where in (("teacher", Path(self.teacher_path)), ("student_kd", self.out / "student"),
                                ("student_no_kd", self.out / "student_no_kd")):
                if role in models and where.is_dir():
                    samples[role] = sample_generations(str(where), c.sample_prompts, c.sample_tokens, r.train.seed)
        self.report.update({
            "task": r.task, "summary": summary, "teacher_path": self.teacher_path, "recipe": r.to_dict(),
            "domains": self.domains, "samples": samples,
            "data": {"train": len(self.train_rows), "kd_rows": len(self.kd_rows), "validation": len(self.val_rows),
                     "test": len(self.test_rows), "chunk_length": c.chunk_length},
            "versions": {"distill": __version__, "torch": torch.__version__, "transformers": transformers.__version__},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "student_parameters": s.get("parameters"), "store_key": self.report.get("store", {}).get("key"),
        })
        if not _state().is_main_process:
            return self.report
        (self.out / "student" / "recipe.yaml").write_text(r.to_yaml())
        if r.export.model_card:
            from distill.export.model_card import write_causal_lm_model_card

            layers = num_layers(load_config(str(self.out / "student"), "student"))
            write_causal_lm_model_card(self.out / "student", r, self.report, layers)
        write_report(self.out / "report.json", self.report)
        from distill.evaluation.html_report import write_html_report

        html = write_html_report(self.out)
        self.log(f"student saved to {self.out / 'student'} (pipeline('text-generation', model=...) loads it); "
                 f"report in {self.out / 'report.json'} and {html}")
        return self.report
