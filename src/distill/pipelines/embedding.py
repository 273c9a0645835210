"""``task: sentence-embedding``: distil a sentence-transformers teacher into a smaller or static encoder.

The stages are those of a classification run (teacher -> student init -> store -> training -> evaluation
-> export), with three differences: the signal is the teacher's sentence embedding (plus, optionally, its
hidden states), the comparison model is the student *before* distillation (no labels are involved, so there
is no label-trained baseline: for a static student it is the raw token vectors taken from the teacher), and
the student is saved as a sentence-transformers directory.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from distill._dataclass_io import RecipeError
from distill.config import Recipe
from distill.data.splits import load_splits
from distill.data.tokenize import same_tokenizer, to_dataset
from distill.losses import LOSSES, LossContext, build_losses
from distill.models import load_tokenizer
from distill.pipeline import (
    Plan,
    Run,
    _fingerprint,
    _hash_files,
    _kd_frame,
    _state,
    stage_checkpoints,
    stage_done,
    train_resuming,
    write_stage,
)
from distill.sentence_encoder import (
    SentenceEncoder,
    StaticEncoder,
    describe,
    load_encoder,
    resolve_encoder_dir,
)
from distill.students.inherit import check_layers
from distill.training import Distiller

# what a sentence encoder can give a loss; logits it has not
EMBEDDING_SIGNALS = {"embeddings", "hidden_states", "attentions"}


def plan_embedding(recipe: Recipe) -> Plan:
    """Validate a sentence-embedding recipe without loading weights."""
    from transformers import AutoConfig

    from distill.export.sentence_transformers import require_sentence_transformers
    from distill.models import hidden_size, num_layers

    require_sentence_transformers()
    t, s = recipe.teacher, recipe.student
    for i, spec in enumerate(recipe.losses):
        cls = LOSSES.get(spec.name)
        missing = (set(cls.teacher_needs) | set(cls.student_needs)) - EMBEDDING_SIGNALS
        if missing or cls.needs_labels:
            what = sorted(missing) or ["labels"]
            raise RecipeError(
                f"losses[{i}].name: {spec.name!r} needs {what}, which a sentence-embedding run does not have; "
                "use embedding, affinity, contrastive, crd or hidden"
            )
        if s.static and set(cls.student_needs) - {"embeddings"}:
            raise RecipeError(f"losses[{i}].name: {spec.name!r} reads the student's hidden states, but a static "
                              "student has none; use embedding, affinity, contrastive or crd")
    tdir = resolve_encoder_dir(t.model, t.revision)
    tinfo = describe(tdir)
    if tinfo["kind"] != "transformer":
        raise RecipeError(f"teacher.model: {t.model!r} is a static embedding model; the teacher must be a transformer")
    tconf = AutoConfig.from_pretrained(tinfo["backbone"])
    t_dim, t_layers = hidden_size(tconf), num_layers(tconf)
    info: dict[str, Any] = {"teacher_dir": tdir, "teacher": tinfo}
    sconf = None
    if s.static:
        s_dim, s_layers, same_tok = s.static_dim or t_dim, 0, True
        if s.static_dim and s.static_dim > t_dim:
            raise RecipeError(f"student.static_dim: {s.static_dim} is wider than the teacher's {t_dim}; PCA can only "
                              "reduce it (use <= the teacher's width, or leave it empty)")
    elif s.from_teacher:
        check_layers(list(s.layers or []), t_layers)
        s_dim, s_layers, same_tok = t_dim, len(s.layers or []), True
    else:
        sdir = resolve_encoder_dir(s.model or "")
        sinfo = describe(sdir)
        info.update(student_dir=sdir, student=sinfo)
        if sinfo["kind"] == "static":
            s_dim, s_layers = None, 0
        else:
            sconf = AutoConfig.from_pretrained(sinfo["backbone"])
            s_dim, s_layers = hidden_size(sconf), num_layers(sconf)
            if s.layers:
                check_layers(list(s.layers), s_layers, "the student model")
                s_layers = len(s.layers)
        same_tok = same_tokenizer(load_tokenizer(sinfo["backbone"]), load_tokenizer(tinfo["backbone"]))
    for i, spec in enumerate(recipe.losses):
        if spec.params.get("projector") == "pca" and not recipe.store.enabled:
            raise RecipeError(f"losses[{i}].projector: pca fits the teacher's basis from the teacher-output store; "
                              "set store.enabled: true (or use projector: auto)")
    splits = load_splits(recipe.data, require_labels=False)
    ctx = LossContext(student_hidden_size=s_dim, teacher_hidden_size=t_dim, student_num_layers=s_layers,
                      teacher_num_layers=t_layers, num_classes=None, same_tokenizer=same_tok)
    build_losses(recipe.losses, ctx)
    return Plan(recipe, splits, tconf, sconf, same_tok, ctx, info)


class EmbeddingRun(Run):
    """One sentence-embedding run; each method is a resumable stage, as in :class:`distill.pipeline.Run`."""

    def make_plan(self) -> Plan:
        self.pair_errors: dict[str, np.ndarray] = {}  # role -> |cosine error| per held-out pair, for the tests
        return plan_embedding(self.recipe)

    @property
    def static(self) -> bool:
        return self._student_kind() == "static"

    def _student_kind(self) -> str:
        r = self.recipe
        if r.student.static:
            return "static"
        if r.student.from_teacher:
            return "transformer"
        return self.plan.info["student"]["kind"]

    # -- teacher ------------------------------------------------------------------------------------------
    def prepare_teacher(self) -> None:
        self.teacher_path = self.plan.info["teacher_dir"]
        self.teacher_tokenizer = load_tokenizer(self.plan.info["teacher"]["backbone"])

    def teacher(self) -> torch.nn.Module:
        if self._teacher is None:
            self.log(f"loading the teacher from {self.teacher_path}")
            from accelerate import PartialState

            self._teacher = load_encoder(self.teacher_path).eval().to(PartialState().device)
        return self._teacher

    # -- student init -------------------------------------------------------------------------------------
    def _student_init(self) -> Path:
        r = self.recipe
        init = self.out / "student_init"
        basis = getattr(self, "_teacher_basis", None)
        fp = _fingerprint({"student": r.student.__dict__, "seed": r.train.seed, "task": r.task,
                           "teacher": self.teacher_fingerprint() if (r.student.from_teacher or r.student.static)
                           else None,
                           "basis": None if basis is None or not r.student.static
                           else hashlib.sha256(basis.numpy().tobytes()).hexdigest()})
        if stage_done(init, fp):
            self.student_tokenizer = load_tokenizer(str(init))
            return init
        from transformers import set_seed

        set_seed(r.train.seed)
        if r.student.static:
            from distill.students.static import static_from_teacher

            self.log("static student: running the teacher once on every vocabulary entry")
            model: SentenceEncoder | StaticEncoder = static_from_teacher(
                self.teacher(), self.teacher_tokenizer, r.student.static_dim, log=self.log, basis=basis)
            tokenizer = self.teacher_tokenizer
        elif r.student.from_teacher:
            from distill.students.inherit import student_from_teacher

            teacher = self.teacher()
            model = SentenceEncoder(student_from_teacher(teacher.backbone, list(r.student.layers or [])),
                                    teacher.pooling, teacher.normalize)
            tokenizer = self.teacher_tokenizer
        else:
            model = load_encoder(self.plan.info["student_dir"])
            if r.student.layers and isinstance(model, SentenceEncoder):
                from distill.students.inherit import student_from_teacher

                model = SentenceEncoder(student_from_teacher(model.backbone, list(r.student.layers)),
                                        model.pooling, model.normalize)
            tokenizer = load_tokenizer(self.plan.info["student"]["backbone"])
        write_stage(init, fp, lambda d: (model.save(d), tokenizer.save_pretrained(d)))
        self.student_tokenizer = tokenizer
        return init

    # -- store --------------------------------------------------------------------------------------------
    def store_spec(self, distiller: Distiller):
        from distill.store import StoreSpec

        # only what the losses read: the classification default ("logits") does not exist here
        capture = {f for f in ("embeddings", "hidden_states") if distiller.needs(f, "teacher")} or {"embeddings"}
        cfg = self.recipe.store
        layers = tuple(distiller.teacher_layers()) if "hidden_states" in capture else ()
        return StoreSpec(capture=tuple(sorted(capture)), layers=layers, topk=0, dtype=cfg.dtype,
                         shard_size=cfg.shard_size, reconstruct=cfg.reconstruct)

    def _fit_teacher(self, distiller: Distiller, store, n: int) -> None:
        """Losses that need the teacher's embeddings of the whole training text (a PCA basis) get them here,
        from the store: deterministic, so a resumed run fits the same basis."""
        fitting = [loss for loss in distiller.losses if loss.needs_teacher_fit]
        if not fitting:
            return
        emb = store.fetch(torch.arange(n)).embeddings.float()  # (N, D_T)
        for loss in fitting:
            self._teacher_basis = loss.fit_teacher(emb).detach().cpu().clone()  # (D_S, D_T)
        self.log(f"fitted the teacher's {tuple(self._teacher_basis.shape)} PCA basis on {n} stored embeddings")

    # -- training -----------------------------------------------------------------------------------------
    def _dataset(self, frame: pd.DataFrame, teacher_inputs: bool):
        r = self.recipe
        ttok = self.teacher_tokenizer if teacher_inputs else None
        return to_dataset(frame, self.student_tokenizer, ttok, max_length=r.data.max_length,
                          student_special_tokens=not self.static)

    def train_student(self, name: str, init: Path, distiller: Distiller, frame, store=None,
                      teacher: torch.nn.Module | None = None, max_steps: int | None = None) -> torch.nn.Module:
        from transformers import set_seed

        from distill.data.collator import DistillCollator
        from distill.store import fingerprint_rows
        from distill.training import DistillTrainer
        from distill.training.args import training_arguments

        r = self.recipe
        final = self.out / name
        fp = _fingerprint({
            "train": r.train.__dict__, "losses": [spec.__dict__ for spec in r.losses], "init": _hash_files(init),
            "max_length": r.data.max_length, "data": fingerprint_rows(list(frame["text"])),
            "store": getattr(store, "key", None),
            "teacher": self.teacher_fingerprint() if teacher is not None else None,
        })
        if (done := stage_done(final, fp)) is not None:
            self.log(f"{name}: already trained, reusing {final}")
            self.report["training"][name] = done.get("training", {})
            return load_encoder(final)
        set_seed(r.train.seed)
        model = load_encoder(init)
        # the online teacher needs its own inputs when the tokenizers differ or the student drops special tokens
        teacher_inputs = teacher is not None and (not self.plan.same_tokenizer or self.static)
        train_ds = self._dataset(frame, teacher_inputs)
        ckpt = stage_checkpoints(self.out, name, fp, self.log)
        trainer = DistillTrainer(
            model=model, args=training_arguments(r.train, str(ckpt), evaluate=False), train_dataset=train_ds,
            data_collator=DistillCollator(self.student_tokenizer, self.teacher_tokenizer if teacher_inputs else None),
            distiller=distiller, teacher=teacher, store=store,
        )
        self.log(f"{name}: training on {len(train_ds)} sentences "
                 f"({'teacher from the store' if store is not None else 'online teacher'})")
        info = train_resuming(trainer, ckpt, name, r.train.resume, self.log)
        state = _state()
        if state.is_main_process:
            write_stage(final, fp, lambda d: (model.save(d), self.student_tokenizer.save_pretrained(d)), info)
            shutil.rmtree(ckpt, ignore_errors=True)
        state.wait_for_everyone()
        self.report["training"][name] = info
        return model

    # -- evaluation ---------------------------------------------------------------------------------------
    def _probe_sets(self) -> dict[str, tuple[list[str], np.ndarray]]:
        """Labelled probe rows per packaged set, never including a text the students trained on."""
        if getattr(self, "_probes", None) is None:
            from sklearn.model_selection import train_test_split

            from distill.packaged import load_packaged_data

            seen = set(_kd_frame(self.plan.splits)["text"])
            self._probes = {}
            for name in self.recipe.eval.probe_sets:
                df = load_packaged_data(name)
                df = df[~df["text"].isin(seen)].reset_index(drop=True)
                n = min(self.recipe.eval.probe_rows, len(df))
                if n < len(df):
                    df, _ = train_test_split(df, train_size=n, random_state=0, stratify=df["label"])
                self._probes[name] = (list(df["text"]), df["label"].to_numpy())
        return self._probes

    def _encode(self, role: str, model: torch.nn.Module, tokenizer, texts: list[str]) -> np.ndarray:
        """Encode ``texts``; the teacher's vectors are cached on disk by (teacher, texts, max length), so runs
        that try other students on the same data do not pay for the teacher again."""
        from distill.evaluation.embedding import encode

        r = self.recipe
        special = not isinstance(model, StaticEncoder)
        if role != "teacher":
            return encode(model, tokenizer, texts, r.data.max_length, r.train.eval_batch_size, special)
        from distill.store import default_store_root, fingerprint_rows
        from distill.store.eval_cache import cached_teacher_outputs

        return cached_teacher_outputs(
            Path(r.store.dir) if r.store.dir else default_store_root(),
            {"what": "sentence-embeddings", "teacher": self.teacher_fingerprint(), "texts": fingerprint_rows(texts),
             "max_length": r.data.max_length},
            lambda: encode(model, tokenizer, texts, r.data.max_length, r.train.eval_batch_size, special),
            write=_state().is_main_process)

    def evaluate(self, role: str, model: torch.nn.Module, tokenizer, teacher_pred=None) -> dict[str, Any]:
        from distill.evaluation import count_parameters
        from distill.evaluation.embedding import (
            pair_errors,
            probe_accuracy,
            retrieval_agreement,
            similarity_agreement,
            throughput,
        )

        r, ev = self.recipe, self.recipe.eval
        special = not isinstance(model, StaticEncoder)
        texts = list(self.plan.splits.test["text"])
        self.log(f"evaluating the {role} on {len(texts)} held-out sentences")
        emb = self._encode(role, model, tokenizer, texts)
        if role == "teacher":
            self._teacher_test = emb
        metrics: dict[str, Any] = {"dim": int(emb.shape[1]), "parameters": count_parameters(model)}
        if role != "teacher":
            metrics["spearman"] = similarity_agreement(emb, self._teacher_test, ev.agreement_pairs)
            self.pair_errors[role] = pair_errors(emb, self._teacher_test, ev.agreement_pairs)
            metrics["recall_at_k"] = retrieval_agreement(emb, self._teacher_test, ev.retrieval_k)
        else:
            metrics["spearman"], metrics["recall_at_k"] = 1.0, 1.0
        probes = []
        for name, (ptexts, labels) in self._probe_sets().items():
            pemb = self._encode(role, model, tokenizer, ptexts)
            metrics[f"probe_{name}"] = probe_accuracy(pemb, labels)
            probes.append(metrics[f"probe_{name}"])
        metrics["probe_mean"] = float(np.mean(probes)) if probes else None
        sample = (texts * (ev.throughput_sentences // max(len(texts), 1) + 1))[:ev.throughput_sentences]
        metrics["sentences_per_second"] = throughput(model, tokenizer, sample, r.data.max_length, 32, special,
                                                     ev.latency_threads)
        self.report["models"][role] = metrics
        return metrics

    # -- the run ------------------------------------------------------------------------------------------
    def __call__(self) -> dict[str, Any]:
        r = self.recipe
        self.prepare_teacher()
        distiller = Distiller(build_losses(r.losses, self.plan.loss_context))
        kd_frame = _kd_frame(self.plan.splits)
        store = None
        if r.store.enabled:
            store = self.open_or_build_store(distiller, kd_frame)
            self.report["store"] = {"key": store.key, "path": str(store.path), **store.info()}
            self._fit_teacher(distiller, store, len(kd_frame))
        init = self.student_init()  # after the store: a static student may start in the fitted teacher basis
        self.evaluate("teacher", self.teacher(), self.teacher_tokenizer)
        online = self.teacher() if store is None else None
        if online is None:
            self.release_teacher()
        if r.eval.baseline:  # the student before distillation: the same init, untouched
            self.evaluate("student_untrained", load_encoder(init), self.student_tokenizer)
        student = self.train_student("student_trained", init, distiller, kd_frame, store=store, teacher=online)
        self.release_teacher()
        self.evaluate("student_kd", student, self.student_tokenizer)
        return self.finish_embedding(student)

    def finish_embedding(self, student) -> dict[str, Any]:
        import transformers

        from distill import __version__
        from distill.evaluation import write_report
        from distill.evaluation.embedding import embedding_significance, format_embedding_table, summarise_embedding
        from distill.evaluation.speed import dir_size_mb
        from distill.export.sentence_transformers import save_sentence_transformer

        r = self.recipe
        models = self.report["models"]
        student_dir = self.out / "student"
        if _state().is_main_process:
            save_sentence_transformer(student, self.student_tokenizer, student_dir, r.data.max_length)
            (student_dir / "recipe.yaml").write_text(r.to_yaml())
        for role, where in (("teacher", Path(self.teacher_path)), ("student_kd", student_dir),
                            ("student_untrained", self.out / "student_init")):
            if role in models and where.is_dir() and dir_size_mb(where) > 0:
                models[role]["size_mb"] = dir_size_mb(where)
        self.report["significance"] = embedding_significance(self.pair_errors, seed=r.train.seed)
        summary = summarise_embedding(models)
        table = format_embedding_table(models, summary, r.eval.retrieval_k, self.report)
        sp = self.plan.splits
        self.report.update({
            "task": r.task, "summary": summary, "teacher_path": self.teacher_path, "recipe": r.to_dict(),
            "data": {"train": len(sp.train), "unlabeled": 0 if sp.unlabeled is None else len(sp.unlabeled),
                     "validation": len(sp.validation), "test": len(sp.test)},
            "versions": {"distill": __version__, "torch": torch.__version__, "transformers": transformers.__version__},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "student_parameters": models.get("student_kd", {}).get("parameters"),
            "store_key": self.report.get("store", {}).get("key"),
            "student_kind": self._student_kind(),
        })
        if not _state().is_main_process:
            return self.report
        if r.export.model_card:
            from distill.export.model_card import write_embedding_model_card

            write_embedding_model_card(student_dir, r, self.report, table)
        write_report(self.out / "report.json", self.report)
        from distill.evaluation.html_report import write_html_report

        html = write_html_report(self.out)
        print("\n" + table + "\n", flush=True)
        self.log(f"student saved to {student_dir} (SentenceTransformer('{student_dir}') loads it); "
                 f"report in {self.out / 'report.json'} and {html}")
        return self.report
