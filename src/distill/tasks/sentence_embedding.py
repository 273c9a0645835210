"""``task: sentence-embedding``: distil a sentence-transformers teacher into a smaller or static encoder.

The signal is the teacher's sentence embedding (plus, optionally, its hidden states), kept in the store; the
comparison model is the student *before* distillation (no labels are involved, so there is no label-trained
baseline: for a static student it is the raw token vectors taken from the teacher); the student is saved as a
sentence-transformers directory.
"""

from __future__ import annotations

import hashlib
import shutil
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
from distill.models import load_tokenizer, set_dropout
from distill.sentence_encoder import (
    SentenceEncoder,
    StaticEncoder,
    describe,
    load_encoder,
    resolve_encoder_dir,
)
from distill.stages import (
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
from distill.tasks.text_store import open_text_store, text_store_key
from distill.teachers.sources import PretrainedTeacher
from distill.training import Distiller

# what a sentence encoder can give a loss; logits it has not
EMBEDDING_SIGNALS = {"embeddings", "hidden_states", "attentions"}


def plan_sentence_embedding(recipe: Recipe) -> Plan:
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
                f"losses[{i}].name: {spec.name!r} needs {what}, which a sentence-embedding run does not "
                "have; use embedding, similarity_matrix, similarity_ranking, neighbourhood, affinity, "
                "contrastive, crd or hidden"
            )
        if s.static and set(cls.student_needs) - {"embeddings"}:
            raise RecipeError(f"losses[{i}].name: {spec.name!r} reads the student's hidden states, but a "
                              "static student has none; use embedding, similarity_matrix, "
                              "similarity_ranking, neighbourhood, affinity, contrastive or crd")
    tdir, tinfo = teacher_encoder(t, "teacher")
    tconf = AutoConfig.from_pretrained(tinfo["backbone"])
    t_hidden, t_layers = hidden_size(tconf), num_layers(tconf)
    t_dim = tinfo["dense"]["out_features"] if tinfo.get("dense") else t_hidden  # its sentence vector
    info: dict[str, Any] = {"teacher_dir": tdir, "teacher": tinfo}
    target_dim = t_dim  # what the losses see of the teacher: with several teachers, their joined vectors
    if recipe.teachers:
        from distill.config.recipe import teacher_name
        from distill.tasks.multi_teacher import check_combinable

        if s.static:
            raise RecipeError("student.static: a static student is built from one teacher's vocabulary; "
                              "with teachers: use a transformer student (student.model or from_teacher)")
        info["members"] = []
        for i, member in enumerate(recipe.teachers):
            mdir, minfo = teacher_encoder(member, f"teachers[{i}]")
            dim = (minfo["dense"]["out_features"] if minfo.get("dense")
                   else hidden_size(AutoConfig.from_pretrained(minfo["backbone"])))
            info["members"].append({"name": member.name or teacher_name(member), "weight": member.weight,
                                    "dir": mdir, "backbone": minfo["backbone"], "dim": dim})
        target_dim = sum(m["dim"] for m in info["members"])
        check_combinable(recipe, "embeddings")
    sconf = None
    if s.static:
        s_dim, s_layers, same_tok = s.static_dim or t_dim, 0, True
        if s.static_dim and s.static_dim > t_dim:
            raise RecipeError(f"student.static_dim: {s.static_dim} is wider than the teacher's {t_dim}; "
                              "PCA can only reduce it (use <= the teacher's width, or leave it empty)")
    elif s.from_teacher:
        check_layers(list(s.layers or []), t_layers)
        s_dim, s_layers, same_tok = t_hidden, len(s.layers or []), True  # the teacher's Dense is not copied
    else:
        sdir = resolve_encoder_dir(s.model or "")
        sinfo = describe(sdir)
        info.update(student_dir=sdir, student=sinfo)
        if sinfo["kind"] == "static":
            s_dim, s_layers = None, 0
        else:
            sconf = AutoConfig.from_pretrained(sinfo["backbone"])
            s_dim, s_layers = hidden_size(sconf), num_layers(sconf)
            if sinfo.get("dense"):
                if s.dense:
                    raise RecipeError(f"student.dense: {s.model} already ends in a Dense layer; set dense: "
                                      "false (its own layer is trained) or start from a model without one")
                s_dim = sinfo["dense"]["out_features"]
            if s.layers:
                check_layers(list(s.layers), s_layers, "the student model")
                s_layers = len(s.layers)
        same_tok = same_tokenizer(load_tokenizer(sinfo["backbone"]), load_tokenizer(tinfo["backbone"]))
    if s.dense:
        if s_dim is None:
            raise RecipeError("student.dense: the student model is a static one; a linear output layer is "
                              "for transformer students (set dense: false)")
        s_dim = target_dim  # the student's output is mapped to the teacher's width
    for i, spec in enumerate(recipe.losses):
        if spec.params.get("projector") == "pca" and not recipe.store.enabled:
            raise RecipeError(f"losses[{i}].projector: pca fits the teacher's basis from the teacher-output "
                              "store; set store.enabled: true (or use projector: auto)")
        if (spec.name == "neighbourhood" and spec.params.get("bank", "store") == "store"
                and not recipe.store.enabled):
            raise RecipeError(f"losses[{i}].bank: 'store' reads the teacher's vectors of the whole "
                              "distillation text from the teacher-output store; set store.enabled: true (or "
                              "use bank: batch)")
    splits = load_splits(recipe.data, require_labels=False)
    ctx = LossContext(student_hidden_size=s_dim, teacher_hidden_size=target_dim, student_num_layers=s_layers,
                      teacher_num_layers=t_layers, num_classes=None, same_tokenizer=same_tok)
    build_losses(recipe.losses, ctx)
    return Plan(recipe, splits, tconf, sconf, same_tok, ctx, info)


def teacher_encoder(t: Any, where: str) -> tuple[str, dict[str, Any]]:
    """A teacher section's sentence-transformers directory and its description; a static model is refused."""
    tdir = resolve_encoder_dir(t.model, t.revision)
    tinfo = describe(tdir)
    if tinfo["kind"] != "transformer":
        raise RecipeError(f"{where}.model: {t.model!r} is a static embedding model; "
                          "the teacher must be a transformer")
    return tdir, tinfo


@register_task("sentence-embedding")
class SentenceEmbeddingTask(Task):
    """Sentence encoders: teacher -> store of its sentence vectors -> distilled student, compared with the
    same student before distillation on agreement with the teacher, probes and encode speed."""

    name = "sentence-embedding"
    kd_stage = "student_trained"  # out/student is the exported sentence-transformers directory

    def __init__(self, recipe: Recipe, *args: Any, **kwargs: Any):
        self.teacher_tokenizer: Any = None
        self.student_tokenizer: Any = None
        # role -> |cosine error| per held-out pair, for the tests
        self.pair_errors: dict[str, np.ndarray] = {}
        self._teacher_basis: torch.Tensor | None = None
        self._teacher_test: np.ndarray | None = None
        self._probes: dict[str, tuple[list[str], np.ndarray]] | None = None
        self._teacher_probe: dict[str, np.ndarray] = {}
        self._kd_frame: pd.DataFrame | None = None
        self.dropped_as_probe_text = 0
        self.members: list[Any] = []  # ``teachers:``: every teacher (distill.tasks.multi_teacher.Member)
        self._member_test: dict[str, np.ndarray] = {}  # name -> its test vectors
        super().__init__(recipe, *args, **kwargs)

    def make_plan(self) -> Plan:
        return plan_sentence_embedding(self.recipe)

    @property
    def static(self) -> bool:
        return self.student_kind() == "static"

    def student_kind(self) -> str:
        r = self.recipe
        if r.student.static:
            return "static"
        if r.student.from_teacher:
            return "transformer"
        return self.plan.info["student"]["kind"]

    # -- teacher ------------------------------------------------------------------------------------------
    def prepare_teacher(self) -> None:
        if self.recipe.teachers:  # several: the first one stands for "the teacher" (student start, names)
            from distill.tasks.multi_teacher import Member

            self.members = [Member(m["name"], m["weight"],
                                   PretrainedTeacher(m["dir"], load_encoder, t.revision, log=self.log),
                                   load_tokenizer(m["backbone"]))
                            for m, t in zip(self.plan.info["members"], self.recipe.teachers, strict=True)]
        self.teacher = PretrainedTeacher(self.plan.info["teacher_dir"], load_encoder,
                                         self.recipe.teacher.revision, log=self.log)
        self.teacher_tokenizer = load_tokenizer(self.plan.info["teacher"]["backbone"])
        if self.members:
            self.members[0].source = self.teacher

    # -- student start ------------------------------------------------------------------------------------
    def student_init(self) -> Path:
        """The student's starting weights (after the store: a static student may start in the teacher's fitted
        PCA basis)."""
        with process_state().main_process_first():
            return self._build_student_init()

    def _build_student_init(self) -> Path:
        r = self.recipe
        init = self.out / "student_init"
        basis = self._teacher_basis
        # a SIF-weighted static start depends on the distillation text's token counts
        sif_texts = list(self.kd_data()["text"]) if r.student.static and r.student.static_sif else None
        fp = fingerprint({"student": r.student.fingerprinted(), "seed": r.train.seed, "task": r.task,
                          "teacher": self.teacher.fingerprint()
                          if (r.student.from_teacher or r.student.static) else None,
                          "basis": None if basis is None or not r.student.static
                          else hashlib.sha256(basis.numpy().tobytes()).hexdigest(),
                          **({"sif_text": fingerprint(sif_texts)} if sif_texts is not None else {})})
        if stage_done(init, fp):
            self.student_tokenizer = load_tokenizer(str(init))
            return init
        from transformers import set_seed

        from distill.students.inherit import student_from_teacher

        set_seed(r.train.seed)
        if r.student.static:
            from distill.students.static import sif_weights, static_from_teacher

            weights = None
            if sif_texts is not None:
                self.log(f"static student: SIF weights (a = {r.student.static_sif:g}) from the token counts "
                         f"of {len(sif_texts):,} distillation sentences")
                weights = sif_weights(self.teacher_tokenizer, sif_texts, r.student.static_sif)
            self.log("static student: running the teacher once on every vocabulary entry")
            model: SentenceEncoder | StaticEncoder = static_from_teacher(
                self.teacher_model(), self.teacher_tokenizer, r.student.static_dim, log=self.log, basis=basis,
                weights=weights)
            tokenizer = self.teacher_tokenizer
        elif r.student.from_teacher:
            teacher = self.teacher_model()
            model = SentenceEncoder(student_from_teacher(teacher.backbone, list(r.student.layers or [])),
                                    teacher.pooling, teacher.normalize)
            tokenizer = self.teacher_tokenizer
        else:
            model = load_encoder(self.plan.info["student_dir"])
            if r.student.layers and isinstance(model, SentenceEncoder):
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
        capture = ({f for f in ("embeddings", "hidden_states") if distiller.needs(f, "teacher")}
                   or {"embeddings"})
        cfg = self.recipe.store
        layers = tuple(distiller.teacher_layers()) if "hidden_states" in capture else ()
        return StoreSpec(capture=tuple(sorted(capture)), layers=layers, topk=0, dtype=cfg.dtype,
                         shard_size=cfg.shard_size, reconstruct=cfg.reconstruct)

    def store_key(self, distiller: Distiller, teacher: Any = None, tokenizer: Any = None) -> str:
        """The key of ``teacher``'s store (default: the run's teacher; each of several has its own)."""
        r = self.recipe
        return text_store_key(teacher or self.teacher, tokenizer or self.teacher_tokenizer, self.kd_data(),
                              r.data.max_length, r.task, self.store_spec(distiller))

    def teacher_outputs(self, distiller: Distiller) -> tuple[Any, torch.nn.Module | None]:
        if not self.recipe.store.enabled:
            return None, self.teacher_model()
        store = self.teacher_store(distiller)
        self.fit_teacher(distiller, store, len(self.kd_data()))
        return store, None

    def teacher_store(self, distiller: Distiller, build: bool = True):
        if self.members:  # each teacher's own store, read as one (their vectors joined)
            from distill.store.ensemble import EmbeddingEnsemble

            opened = [self._open_store(distiller, m.source, m.tokenizer, build) for m in self.members]
            for m in self.members[1:]:
                m.source.release()
            seconds = [took for _, took in opened if took is not None]
            if seconds:
                self.report["store_build_seconds"] = sum(seconds)
            return EmbeddingEnsemble([store for store, _ in opened], [m.name for m in self.members],
                                     [m.weight for m in self.members])
        store, seconds = self._open_store(distiller, self.teacher, self.teacher_tokenizer, build)
        if seconds is not None:
            self.report["store_build_seconds"] = seconds
        return store

    def _open_store(self, distiller: Distiller, teacher: Any, tokenizer: Any, build: bool):
        r = self.recipe
        return open_text_store(
            store_root(r.store), self.store_key(distiller, teacher, tokenizer), self.store_spec(distiller),
            self.kd_data(), teacher, tokenizer,
            max_length=r.data.max_length, batch_size=r.train.eval_batch_size,
            meta={"teacher": teacher.path, "recipe_task": r.task, "labels": self.plan.labels},
            log=self.log, build=build)

    def fit_teacher(self, distiller: Distiller, store: Any, n: int) -> None:
        """Losses that need the teacher's embeddings of the whole training text (a PCA basis, a bank of
        neighbours) get them here, from the store: deterministic, so a resumed run fits the same thing."""
        fitting = [loss for loss in distiller.losses if loss.needs_teacher_fit]
        if not fitting:
            return
        from distill.store import stored_embeddings

        emb = stored_embeddings(store, torch.arange(n))  # (N, D_T)
        for loss in fitting:
            fitted = loss.fit_teacher(emb)
            if fitted is not None:  # a basis (D_S, D_T): a static student may start in it
                self._teacher_basis = fitted.detach().cpu().clone()
                self.log(f"fitted the teacher's {tuple(self._teacher_basis.shape)} PCA basis on {n} stored "
                         "embeddings")
            else:
                self.log(f"loss {loss.name!r}: read the teacher's {n} stored embeddings")

    def cache(self) -> str:
        from distill.store.reader import format_info

        self.prepare_teacher()
        store = self.teacher_store(self.distiller())
        if self.members:
            return "\n\n".join(f"teacher {name}:\n{format_info(s.info())}"
                               for name, s in zip(store.names, store.stores, strict=True))
        return format_info(store.info())

    def cache_info(self) -> str:
        from distill.store import TeacherStore
        from distill.store.reader import format_info

        self.prepare_teacher()  # resolves the teacher directory and tokenizer; loads no weights
        distiller = self.distiller()
        r = self.recipe
        parts = []
        for name, teacher, tokenizer in ([(m.name, m.source, m.tokenizer) for m in self.members]
                                         or [(None, self.teacher, self.teacher_tokenizer)]):
            root, key = store_root(r.store), self.store_key(distiller, teacher, tokenizer)
            text = (format_info(TeacherStore.open(root / key).info())
                    if (root / key / "manifest.json").exists()
                    else f"no store yet for key {key} under {root}; `distill cache RECIPE` builds it")
            parts.append(text if name is None else f"teacher {name}:\n{text}")
        return "\n\n".join(parts)

    # -- students -----------------------------------------------------------------------------------------
    def kd_data(self) -> pd.DataFrame:
        """The distillation text: the training split and the unlabelled text, without any unlabelled row that
        is (up to case and punctuation) one of the probe texts the models are scored on; with
        ``data.augment``, word-replaced variants of all of it after that (the teacher embeds them too)."""
        if self._kd_frame is None:
            from distill.packaged import normalised_text

            sp = self.plan.splits
            frame = sp.with_unlabeled()
            if sp.unlabeled is not None and len(sp.unlabeled):
                probe = {normalised_text(t) for texts, _ in self._probe_sets().values() for t in texts}
                extra = frame.iloc[len(sp.train):]
                keep = ~extra["text"].map(normalised_text).isin(probe)
                self.dropped_as_probe_text = int((~keep).sum())
                frame = pd.concat([frame.iloc[: len(sp.train)], extra[keep]], ignore_index=True)
            cfg = self.recipe.data.augment
            if cfg is not None:
                from distill.data.text_augment import augmented_frame

                # every sentence of the transfer text is varied, not only the training split: there are no
                # labels here, and each sentence is as much in domain as the next
                variants, self.report["augmentation"] = augmented_frame(
                    cfg, frame[["text"]], cfg.model or self.teacher.path, store_root(self.recipe.store),
                    self.log)
                variants = variants[["text"]].assign(**({"label": -1} if "label" in frame.columns else {}))
                frame = pd.concat([frame, variants], ignore_index=True)
            self._kd_frame = frame
        return self._kd_frame

    def _dataset(self, frame: pd.DataFrame, teacher_inputs: bool):
        r = self.recipe
        ttok = self.teacher_tokenizer if teacher_inputs else None
        return to_dataset(frame, self.student_tokenizer, ttok, max_length=r.data.max_length,
                          student_special_tokens=not self.static)

    def train(self, name: str, distiller: Distiller, data: pd.DataFrame, *, store: Any = None,
              teacher: torch.nn.Module | None = None, max_steps: int | None = None) -> torch.nn.Module:
        from transformers import set_seed

        from distill.data.collator import DistillCollator
        from distill.store import fingerprint_rows
        from distill.training import DistillTrainer
        from distill.training.args import training_arguments

        r = self.recipe
        init = self.student_init()
        final = self.out / name
        fp = fingerprint({
            "train": r.train.fingerprinted(), "losses": [spec.__dict__ for spec in r.losses],
            "init": hash_files(init),
            "max_length": r.data.max_length, "data": fingerprint_rows(list(data["text"])),
            "store": getattr(store, "key", None),
            "teacher": self.teacher.fingerprint() if teacher is not None else None,
            **({"dense": True} if r.student.dense else {}),
        })
        if (done := stage_done(final, fp)) is not None:
            self.log(f"{name}: already trained, reusing {final}")
            self.report["training"][name] = done.get("training", {})
            return load_encoder(final)
        set_seed(r.train.seed)
        model = load_encoder(init)
        set_dropout(model, r.train.dropout)
        if r.student.dense:
            model.dense = self._fitted_dense(model, data, store)
        # the online teacher needs its own inputs when the tokenizers differ or the student drops special
        # tokens
        teacher_inputs = teacher is not None and (not self.plan.same_tokenizer or self.static)
        train_ds = self._dataset(data, teacher_inputs)
        ckpt = stage_checkpoints(self.out, name, fp, self.log)
        trainer = DistillTrainer(
            model=model, args=training_arguments(r.train, str(ckpt), evaluate=False), train_dataset=train_ds,
            data_collator=DistillCollator(self.student_tokenizer,
                                          self.teacher_tokenizer if teacher_inputs else None),
            distiller=distiller, teacher=teacher, store=store, anchor=r.train.anchor,
            neighbour_group=r.train.neighbour_group,  # the recipe check guarantees a store with it
        )
        self.log(f"{name}: training on {len(train_ds)} sentences "
                 f"({'teacher from the store' if store is not None else 'online teacher'})")
        info, model = train_resuming(trainer, ckpt, name, r.train.resume, self.log)
        state = process_state()
        if state.is_main_process:
            write_stage(final, fp, lambda d: (model.save(d), self.student_tokenizer.save_pretrained(d)), info)
            shutil.rmtree(ckpt, ignore_errors=True)
        state.wait_for_everyone()
        self.report["training"][name] = info
        return model

    def _fitted_dense(self, model: SentenceEncoder, data: pd.DataFrame, store: Any) -> torch.nn.Linear:
        """``student.dense``: the linear layer from the student's pooled vector to the teacher's, started as
        the (lightly ridge-regularised) least-squares map on up to 4,096 seeded training sentences (teacher
        vectors from the store, or from the teacher's cached encodings without one)."""
        from distill.evaluation.embedding import encode

        r = self.recipe
        pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(r.train.seed))[:4096]
        pick = pick.sort().values
        texts = [str(t) for t in data["text"].iloc[pick.tolist()]]
        normalize, model.normalize = model.normalize, False  # the layer reads the pooled vector as it is
        try:
            x = torch.from_numpy(encode(model, self.student_tokenizer, texts, r.data.max_length,
                                        r.train.eval_batch_size, True)).double()
        finally:
            model.normalize = normalize
        if store is not None:
            y = store.fetch(pick).embeddings.double()
        else:
            y = torch.from_numpy(self._encode("teacher", None, texts)).double()
        # ridge, lightly: near-identical pooled vectors (an untrained or collapsed encoder) would otherwise
        # give huge weights, and training from them diverges
        xtx = x.T @ x
        ridge = 1e-3 * xtx.diagonal().mean() * torch.eye(x.shape[1], dtype=x.dtype)
        w = torch.linalg.solve(xtx + ridge, x.T @ y)  # (H, D)
        layer = torch.nn.Linear(x.shape[1], y.shape[1], bias=False)
        with torch.no_grad():
            layer.weight.copy_(w.T.float())
        fit = torch.nn.functional.cosine_similarity(x @ w, y, dim=-1).mean()
        self.log(f"student.dense: {x.shape[1]} -> {y.shape[1]} linear layer fitted on {len(texts)} sentences "
                 f"(mean cosine with the teacher's vectors {float(fit):.3f})")
        return layer

    def export_student(self, student: torch.nn.Module) -> None:
        from distill.export.sentence_transformers import save_sentence_transformer

        if process_state().is_main_process:
            save_sentence_transformer(student, self.student_tokenizer, self.out / "student",
                                      self.recipe.data.max_length)

    def baseline(self) -> None:
        """The student before distillation: the same start, untouched."""
        self.student_init()
        self.evaluate("student_untrained", load_encoder(self.out / "student_init"))

    # -- evaluation ---------------------------------------------------------------------------------------
    def _probe_sets(self) -> dict[str, tuple[list[str], np.ndarray]]:
        """Labelled probe rows per packaged set, never including a text the students trained on."""
        if self._probes is None:
            from sklearn.model_selection import train_test_split

            from distill.packaged import load_packaged_data

            # drawn before the distillation text is chosen (which then leaves them out): only the training
            # split's own texts are excluded here
            seen = set(self.plan.splits.train["text"])
            self._probes = {}
            for name in self.recipe.eval.probe_sets:
                df = load_packaged_data(name)
                df = df[~df["text"].isin(seen)].reset_index(drop=True)
                n = min(self.recipe.eval.probe_rows, len(df))
                if n < len(df):
                    df, _ = train_test_split(df, train_size=n, random_state=0, stratify=df["label"])
                self._probes[name] = (list(df["text"]), df["label"].to_numpy())
        return self._probes

    def _encode(self, role: str, model: torch.nn.Module, texts: list[str]) -> np.ndarray:
        """Encode ``texts``; the teacher's vectors are cached on disk by (teacher, texts, max length), so runs
        that try other students on the same data do not pay for the teacher again."""
        from distill.evaluation.embedding import encode

        r = self.recipe
        special = not isinstance(model, StaticEncoder)
        tokenizer = self.teacher_tokenizer if role == "teacher" else self.student_tokenizer
        if role != "teacher":
            return encode(model, tokenizer, texts, r.data.max_length, r.train.eval_batch_size, special)
        if self.members:  # the joined vectors of every teacher
            from distill.store.ensemble import concat_embeddings

            parts = [self._teacher_vectors(m.source, m.tokenizer, texts) for m in self.members]
            return concat_embeddings([torch.as_tensor(p) for p in parts],
                                     [m.weight for m in self.members]).float().numpy()
        return self._teacher_vectors(self.teacher, tokenizer, texts)

    def _teacher_vectors(self, source: Any, tokenizer: Any, texts: list[str]) -> np.ndarray:
        """One teacher's vectors of ``texts``, cached on disk by (teacher, texts, max length)."""
        from distill.evaluation.embedding import encode
        from distill.store import fingerprint_rows
        from distill.store.eval_cache import cached_teacher_outputs

        r = self.recipe
        return cached_teacher_outputs(
            store_root(r.store),
            {"what": "sentence-embeddings", "teacher": source.fingerprint(),
             "texts": fingerprint_rows(texts), "max_length": r.data.max_length},
            lambda: encode(source.model(), tokenizer, texts, r.data.max_length, r.train.eval_batch_size,
                           True),
            write=process_state().is_main_process)

    def evaluate(self, role: str, model: torch.nn.Module) -> dict[str, Any]:
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
        tokenizer = self.teacher_tokenizer if role == "teacher" else self.student_tokenizer
        texts = list(self.plan.splits.test["text"])
        self.log(f"evaluating the {role} on {len(texts)} held-out sentences")
        emb = self._encode(role, model, texts)
        if role == "teacher":
            self._teacher_test = emb
        metrics: dict[str, Any] = {"dim": int(emb.shape[1]), "parameters": count_parameters(model)}
        if role != "teacher":
            metrics["spearman"] = similarity_agreement(emb, self._teacher_test, ev.agreement_pairs)
            self.pair_errors[role] = pair_errors(emb, self._teacher_test, ev.agreement_pairs)
            metrics["recall_at_k"] = retrieval_agreement(emb, self._teacher_test, ev.retrieval_k)
        else:
            metrics["spearman"], metrics["recall_at_k"] = 1.0, 1.0
        probes, agreements = [], []
        for name, (ptexts, labels) in self._probe_sets().items():
            pemb = self._encode(role, model, ptexts)
            metrics[f"probe_{name}"] = probe_accuracy(pemb, labels)
            probes.append(metrics[f"probe_{name}"])
            # agreement with the teacher on each probe set's texts too: outside the training text's domain
            if role == "teacher":
                self._teacher_probe[name] = pemb
                metrics[f"spearman_{name}"] = 1.0
            else:
                metrics[f"spearman_{name}"] = similarity_agreement(pemb, self._teacher_probe[name],
                                                                   ev.agreement_pairs)
            agreements.append(metrics[f"spearman_{name}"])
        metrics["probe_mean"] = float(np.mean(probes)) if probes else None
        metrics["spearman_probe_sets_mean"] = float(np.mean(agreements)) if agreements else None
        sample = (texts * (ev.throughput_sentences // max(len(texts), 1) + 1))[:ev.throughput_sentences]
        if role == "teacher" and self.members:  # serving the joined vectors runs every teacher in turn
            seconds = 0.0
            for m in self.members:
                seconds += 1.0 / throughput(m.source.model(), m.tokenizer, sample, r.data.max_length, 32,
                                            True, ev.latency_threads)
            metrics["sentences_per_second"] = 1.0 / seconds
            metrics["parameters"] = sum(count_parameters(m.source.model()) for m in self.members)
            metrics["teachers"] = len(self.members)
            self.report["teachers"] = self.members_section(texts)
        else:
            metrics["sentences_per_second"] = throughput(model, tokenizer, sample, r.data.max_length, 32,
                                                         special, ev.latency_threads)
        self.report["models"][role] = metrics
        return metrics

    def members_section(self, texts: list[str]) -> dict[str, Any]:
        """The report's ``teachers`` section: each teacher's weight, width, agreement (Spearman of pairwise
        similarities) with the joined vectors and with every other teacher, on the held-out sentences."""
        from distill.evaluation.embedding import similarity_agreement

        pairs = self.recipe.eval.agreement_pairs
        vectors = {m.name: self._teacher_vectors(m.source, m.tokenizer, texts) for m in self.members}
        names = list(vectors)
        rows = [{"name": m.name, "path": m.source.path, "weight": m.weight,
                 "dim": int(vectors[m.name].shape[1]),
                 "spearman_with_combined": similarity_agreement(vectors[m.name], self._teacher_test, pairs)}
                for m in self.members]
        agreement = {f"{a} | {b}": similarity_agreement(vectors[a], vectors[b], pairs)
                     for i, a in enumerate(names) for b in names[i + 1:]}
        return {"rule": "concat", "members": rows, "agreement": agreement}

    # -- report -------------------------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        from distill.evaluation.embedding import (
            embedding_significance,
            format_embedding_table,
            summarise_embedding,
        )

        r = self.recipe
        models = self.report["models"]
        student_dir = self.out / "student"
        if process_state().is_main_process:
            (student_dir / "recipe.yaml").write_text(r.to_yaml())
        self.sizes_on_disk({"student_kd": student_dir, "student_untrained": self.out / "student_init",
                            **({} if self.members else {"teacher": Path(self.teacher.path)})})
        self.report["significance"] = embedding_significance(self.pair_errors, seed=r.train.seed)
        summary = summarise_embedding(models)
        table = format_embedding_table(models, summary, r.eval.retrieval_k, self.report)
        sp = self.plan.splits
        self.report.update({
            **self.common_report(), "summary": summary,
            "data": {"train": len(sp.train), "unlabeled": 0 if sp.unlabeled is None else len(sp.unlabeled),
                     "validation": len(sp.validation), "test": len(sp.test),
                     # what the distilled student saw: sentences per epoch, epochs, and the unlabelled rows
                     # left out because they are probe texts
                     "distillation_sentences": len(self.kd_data()), "epochs": r.train.epochs,
                     "dropped_as_probe_text": self.dropped_as_probe_text,
                     # word-replaced variants among the distillation sentences (data.augment)
                     "augmented": self.report.get("augmentation", {}).get("rows", 0)},
            "student_parameters": models.get("student_kd", {}).get("parameters"),
            "student_kind": self.student_kind(),
        })
        if not process_state().is_main_process:
            return self.report
        if r.export.model_card:
            from distill.export.model_card import write_embedding_model_card

            write_embedding_model_card(student_dir, r, self.report, table)
        self.write_outputs(table, f"student saved to {student_dir} "
                                  f"(SentenceTransformer('{student_dir}') loads it); ")
        return self.report
