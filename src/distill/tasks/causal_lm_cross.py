"""``task: causal-lm`` with a cross-tokenizer loss (``alm``): a student whose tokenizer differs from the
teacher's.

Text -> windows of the student's tokens kept as exact substrings -> each window encoded by both tokenizers
and aligned by byte position (:mod:`distill.data.cross_rows`) -> the teacher runs once over its own
tokenization into a store of one log-probability per token, with byte spans
(:mod:`distill.store.token_logprobs`) -> per aligned group, the teacher's log-likelihood -> the student
trains on its own tokens with ``alm`` (and ``ce``), reading those groups, the teacher out of memory ->
held-out bits per byte for teacher, distilled and text-only student (perplexities of different
tokenizers do not compare; every token of every window is scored on both sides, so the NLL of each window is
the NLL of the same bytes).

``hybrid_kl`` also reads each teacher position's top-k next tokens (``store.topk``), mapped onto the student's
vocabulary by token text. Not with this path yet: chat rows, sequence-level KD, on-policy batches, DDK, and
token-level losses other than ``alm``, ``hybrid_kl`` and ``ce`` (they compare distributions position by
position, which needs one vocabulary).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from distill._dataclass_io import RecipeError
from distill.config import Recipe
from distill.data.cross_rows import (
    aligned_row,
    group_logliks,
    group_topk,
    shared_vocabulary,
    teacher_rows_of,
    text_windows,
)
from distill.data.text_lm import CausalLMCollator, pad_token_id, read_text_table, split_rows
from distill.losses import LossContext, build_losses
from distill.losses.cross_tokenizer import (
    CHUNK_LOGLIK,
    CHUNK_VALID,
    GROUP_TOPK_IDS,
    GROUP_TOPK_LOGP,
    STUDENT_CHUNKS,
    STUDENT_SHARED,
)
from distill.models import hidden_size, load_tokenizer
from distill.outputs import ModelOutputs
from distill.stages import store_root
from distill.tasks import CROSS_TOKENIZER_LOSSES, register_task
from distill.tasks.base import Plan
from distill.tasks.causal_lm import CausalLMTask, model_configs
from distill.training import Distiller

TEXT_ONLY_LOSSES = {"ce"}


def plan_cross_tokenizer_lm(recipe: Recipe) -> Plan:
    """Validate a cross-tokenizer causal-LM recipe without loading weights."""

    c = recipe.causal_lm
    for field, value in (("causal_lm.sequence_kd", c.sequence_kd), ("causal_lm.on_policy", c.on_policy),
                         ("causal_lm.ddk", c.ddk)):
        if value is not None:
            raise RecipeError(f"{field}: not available with a cross-tokenizer loss (alm) yet; drop it, or "
                              "use a student with the teacher's tokenizer and kd")
    if c.format != "text":
        raise RecipeError(f"causal_lm.format: {c.format!r} is not available with a cross-tokenizer loss "
                          "(alm) yet; use format: text")
    for i, spec in enumerate(recipe.losses):
        if spec.name not in CROSS_TOKENIZER_LOSSES | TEXT_ONLY_LOSSES:
            raise RecipeError(
                f"losses[{i}].name: {spec.name!r} compares the two models position by position, which needs "
                "one tokenizer; a cross-tokenizer run takes "
                f"{sorted(CROSS_TOKENIZER_LOSSES | TEXT_ONLY_LOSSES)}")
    if any(s.name == "hybrid_kl" for s in recipe.losses) and recipe.store.topk <= 0:
        raise RecipeError(f"store.topk: {recipe.store.topk}; hybrid_kl reads the teacher's k most likely "
                          "next tokens at each position from the store: set store.topk, e.g. 32")
    t = recipe.teacher
    (tdir, tconf, t_layers), (sdir, sconf, s_layers) = model_configs(recipe)
    for side, path in (("teacher.model", tdir), ("student.model", sdir)):
        tok = load_tokenizer(path, t.revision if side == "teacher.model" else None)
        if not getattr(tok, "is_fast", False):
            raise RecipeError(f"{side}: {path} has no fast tokenizer; cross-tokenizer alignment needs the "
                              "character offsets only fast tokenizers give")
    s_vocab = int((sconf or tconf).vocab_size)
    ctx = LossContext(student_hidden_size=hidden_size(sconf or tconf), teacher_hidden_size=hidden_size(tconf),
                      student_num_layers=s_layers, teacher_num_layers=t_layers, num_classes=s_vocab,
                      same_tokenizer=False)
    build_losses(recipe.losses, ctx)
    from distill.data.splits import TextSplits

    empty = pd.DataFrame({"text": []})
    splits = TextSplits(train=empty, validation=empty, test=empty, unlabeled=None, labels=[])
    return Plan(recipe, splits, tconf, sconf, True, ctx,
                {"teacher_dir": tdir, "student_dir": sdir, "vocab_size": s_vocab,
                 "teacher_vocab": int(tconf.vocab_size), "student_vocab": s_vocab})


class CrossCollator(CausalLMCollator):
    """The student's batch plus ``student_chunk_ids``: per position, the aligned group of the token it
    predicts (-1: none, and on padding)."""

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = super().__call__(rows)
        chunks = torch.full(batch["input_ids"].shape, -1, dtype=torch.long)
        for i, r in enumerate(rows):
            chunks[i, :len(r["position_chunks"])] = torch.as_tensor(r["position_chunks"], dtype=torch.long)
        batch[STUDENT_CHUNKS] = chunks
        return batch


class AlignedTeacher:
    """The teacher side of the cross-tokenizer losses for the training rows, read by ``example_index``: each
    row's group log-likelihoods and validity (``alm``) and, with a top-k store and the shared vocabulary
    (``shared``: teacher id -> student id, and the student's shared-token mask), each group's merged top-k
    next tokens as student ids (``hybrid_kl``), computed once from the token log-probability store."""

    def __init__(self, store: Any, rows: list[dict[str, Any]],
                 shared: tuple[np.ndarray, np.ndarray] | None = None):
        self.store, self.key, self.path = store, store.key, store.path
        self.loglik: list[np.ndarray] = []
        self.valid: list[np.ndarray] = []
        self.top_ids: list[np.ndarray] = []
        self.top_logp: list[np.ndarray] = []
        self.student_shared = None if shared is None else torch.as_tensor(shared[1])
        self.shared_tokens = None if shared is None else int(shared[1].sum())
        for i, row in enumerate(rows):
            if len(store.ids[i]) != len(row["teacher_ids"]) or not np.array_equal(store.ids[i],
                                                                                   row["teacher_ids"]):
                raise ValueError(f"{store.path}: row {i} holds other teacher tokens than the run's row; the "
                                 "store does not belong to this data")
            ll, ok = group_logliks(store.logprobs[i], row["teacher_chunks"], row["groups"])
            self.loglik.append(ll)
            self.valid.append(ok)
            if shared is not None:
                ids, logp = group_topk(row, store.logprobs[i], store.topk_ids[i], store.topk_logprobs[i],
                                       shared[0])
                self.top_ids.append(ids.astype(np.int32))
                self.top_logp.append(logp.astype(np.float32))

    def info(self) -> dict[str, Any]:
        groups = sum(len(v) for v in self.valid)
        out = {**self.store.info(), "groups": groups,
               "usable_groups": int(sum(int(v.sum()) for v in self.valid))}
        if self.shared_tokens is not None:
            out["shared_student_tokens"] = self.shared_tokens
        return out

    def fetch(self, indices: torch.Tensor, device: Any = None) -> ModelOutputs:
        idx = [int(i) for i in indices]
        width = max(1, max(len(self.loglik[i]) for i in idx))
        ll = torch.zeros(len(idx), width, dtype=torch.float32)
        ok = torch.zeros(len(idx), width, dtype=torch.bool)
        for r, i in enumerate(idx):
            n = len(self.loglik[i])
            ll[r, :n] = torch.as_tensor(self.loglik[i], dtype=torch.float32)
            ok[r, :n] = torch.as_tensor(self.valid[i])
        extra = {CHUNK_LOGLIK: ll, CHUNK_VALID: ok}
        if self.student_shared is not None:
            k = self.top_ids[idx[0]].shape[1]
            ids = torch.full((len(idx), width, k), -1, dtype=torch.long)
            logp = torch.zeros(len(idx), width, k, dtype=torch.float32)
            for r, i in enumerate(idx):
                n = len(self.top_ids[i])
                ids[r, :n] = torch.as_tensor(self.top_ids[i], dtype=torch.long)
                logp[r, :n] = torch.as_tensor(self.top_logp[i])
            extra.update({GROUP_TOPK_IDS: ids, GROUP_TOPK_LOGP: logp, STUDENT_SHARED: self.student_shared})
        return ModelOutputs(extra=extra)


@register_task("causal-lm-cross-tokenizer")
class CrossTokenizerLMTask(CausalLMTask):
    """Causal LMs across tokenizers: windows of text -> teacher log-probabilities per token (store) ->
    aligned groups -> ``alm`` student and text-only student -> bits per byte for all three."""

    name = "causal-lm"

    def make_plan(self) -> Plan:
        return plan_cross_tokenizer_lm(self.recipe)

    def resolve_teacher(self) -> None:
        super().resolve_teacher()
        self.teacher_pad_id = self.pad_id
        sdir = self.plan.info["student_dir"]
        self.student_tokenizer = load_tokenizer(sdir, None if sdir != self.teacher.path
                                                else self.recipe.teacher.revision)
        self.pad_id = pad_token_id(self.student_tokenizer)  # the students' batches
        self.vocab_size = self.plan.info["student_vocab"]

    def load_rows(self) -> None:
        c, d = self.recipe.causal_lm, self.recipe.data
        if d.source == "packaged":
            from distill.packaged import load_packaged_corpus

            df = load_packaged_corpus(d.name or "")
        else:
            df = read_text_table(d.train or "")
        domains = c.domain_column or ("domain" if d.source == "packaged" else None)
        windows, names = text_windows(df, self.student_tokenizer, c.chunk_length, domains, d.text_column)
        if not windows:
            raise RecipeError("data.train: no training text came out of the data (empty text?)")
        self.domains = names
        train, val, test = split_rows(windows, len(names), d.test_fraction, d.validation_fraction,
                                      d.split_seed)
        if d.max_train_examples:
            train = train[: d.max_train_examples]

        def encode(part: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{**aligned_row(w, self.student_tokenizer, self.teacher_tokenizer), "example_index": i}
                    for i, w in enumerate(part)]

        self.train_rows, self.val_rows, self.test_rows = encode(train), encode(val), encode(test)
        self.teacher_test_rows = teacher_rows_of(self.test_rows)
        groups = sum(x["groups"] for x in self.train_rows)
        s_tok = sum(len(x["input_ids"]) - 1 for x in self.train_rows)
        t_tok = sum(len(x["teacher_ids"]) - 1 for x in self.train_rows)
        self.report["cross_tokenizer"] = {
            "train_bytes": int(sum(len(x["text"].encode("utf-8")) for x in self.train_rows)),
            "student_tokens": s_tok, "teacher_tokens": t_tok, "aligned_groups": groups,
            "student_tokens_per_group": s_tok / max(groups, 1),
            "teacher_tokens_per_group": t_tok / max(groups, 1),
        }
        self.log(f"data: {len(self.train_rows)} train / {len(self.val_rows)} validation / "
                 f"{len(self.test_rows)} held-out windows over domains {names}; {s_tok} student and "
                 f"{t_tok} teacher tokens in {groups} aligned groups")

    # -- store: one log-probability per teacher token -----------------------------------------------------
    def store_key(self, distiller: Distiller, rows: list[dict[str, Any]]) -> str:
        from distill.store import StoreSpec, fingerprint_rows, fingerprint_tokenizer, store_key

        return store_key(teacher=self.teacher.fingerprint(),
                         tokenizer=fingerprint_tokenizer(self.teacher_tokenizer),
                         data=fingerprint_rows([x["text"] for x in rows]), task="causal-lm-cross-tokenizer",
                         kind="token_logprobs", topk=self.teacher_topk(),
                         spec=StoreSpec(capture=("logits",)),
                         vocab=self.plan.info["teacher_vocab"])

    def teacher_topk(self) -> int:
        """Top-k next tokens kept per teacher position: only ``hybrid_kl`` reads them."""
        return self.recipe.store.topk if any(s.name == "hybrid_kl" for s in self.recipe.losses) else 0

    def teacher_store(self, distiller: Distiller, build: bool = True) -> AlignedTeacher:
        from distill.store.token_logprobs import build_token_logprob_store

        r = self.recipe
        folder = store_root(r.store) / self.store_key(distiller, self.kd_rows)
        store, seconds = build_token_logprob_store(
            folder, self.kd_rows, self.teacher_model, pad_id=self.teacher_pad_id,
            vocab_size=self.plan.info["teacher_vocab"], batch_size=r.train.eval_batch_size,
            topk=self.teacher_topk(), meta={"teacher": self.teacher.path, "recipe_task": r.task},
            log=self.log)
        if seconds is not None:
            self.report["store_build_seconds"] = seconds
        shared = None
        if self.teacher_topk():
            shared = shared_vocabulary(self.teacher_tokenizer, self.student_tokenizer,
                                       self.plan.info["teacher_vocab"], self.plan.info["student_vocab"])
            self.log(f"shared vocabulary: {int(shared[1].sum())} of the student's "
                     f"{self.plan.info['student_vocab']} tokens have a teacher token with the same text")
        return AlignedTeacher(store, self.kd_rows, shared)

    def teacher_outputs(self, distiller: Distiller) -> tuple[Any, torch.nn.Module | None]:
        # the teacher always runs once into its (small) store: its groups are read from there
        return (self.teacher_store(distiller), None) if distiller.needs_teacher else (None, None)

    def describe_store(self, store: AlignedTeacher) -> str:
        return _describe({"key": store.key, "path": store.path, **store.info()})

    def cache_info(self) -> str:
        self.resolve_teacher()
        self.teacher_rows(generate=False)
        folder = store_root(self.recipe.store) / self.store_key(self.distiller(), self.kd_rows)
        if not (folder / "manifest.json").exists():
            return (f"no store yet for key {folder.name} under {folder.parent}; `distill cache RECIPE` "
                    "builds it")
        from distill.store.token_logprobs import TokenLogprobStore

        info = TokenLogprobStore.open(folder).info()
        return _describe({"key": folder.name, "path": folder, **info})

    def collator(self) -> CausalLMCollator:
        return CrossCollator(self.pad_id)

    # -- evaluation: the teacher on its own tokens, every model in bits per byte ---------------------------
    def test_bytes(self) -> list[int]:
        if self._test_bytes is None:
            self._test_bytes = [len(x["text"].encode("utf-8")) for x in self.test_rows]
        return self._test_bytes

    def evaluate(self, role: str, model: torch.nn.Module) -> dict[str, Any]:
        if role != "teacher":
            return super().evaluate(role, model)
        rows, pad, vocab = self.test_rows, self.pad_id, self.vocab_size
        self.test_rows, self.pad_id, self.vocab_size = (self.teacher_test_rows, self.teacher_pad_id,
                                                        self.plan.info["teacher_vocab"])
        try:
            return super().evaluate(role, model)
        finally:
            self.test_rows, self.pad_id, self.vocab_size = rows, pad, vocab

    def finish(self) -> dict[str, Any]:
        m = self.report["models"]
        self.report["cross_tokenizer"].update({
            "loss": [s.name for s in self.kd_specs if s.name in CROSS_TOKENIZER_LOSSES],
            "bits_per_byte": {role: m[role].get("bits_per_byte") for role in m},
        })
        return super().finish()


def _describe(info: dict[str, Any]) -> str:
    return "\n".join(f"{k:<15} {v}" for k, v in info.items())
