"""Data for causal language models: plain text cut into fixed-length token chunks, prompt/response pairs
with the prompt masked out of the loss, a domain id per example (for DDK), and the collator that turns
rows into next-token batches.

A row is a dict ``{input_ids: list[int], prompt_length: int, domain: int, example_index: int}``: the first
``prompt_length`` tokens are context only (never a prediction target). The collator pads on the right and
adds ``labels`` already shifted by one (``labels[t]`` is the token that the logits at position ``t`` must
predict, -100 where nothing is trained) and ``loss_mask = labels != -100``, which every token-level loss
reads. So ``ce`` on (B, L, V) logits and ``kd`` line up without any shifting inside the losses.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from distill._dataclass_io import RecipeError

IGNORE = -100


class RowDataset(torch.utils.data.Dataset):
    """A list of row dicts as a map-style dataset (what the Trainer and the samplers need)."""

    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]

    @property
    def domains(self) -> list[int]:
        return [r["domain"] for r in self.rows]


def _separator(tokenizer) -> list[int]:
    eos = tokenizer.eos_token_id
    return [] if eos is None else [int(eos)]


def chunk_texts(texts: Sequence[str], tokenizer, length: int, min_length: int = 8,
                stride: int | None = None) -> list[list[int]]:
    """Tokenise ``texts`` (no special tokens), join them with the EOS token and cut the stream into chunks
    of ``length`` tokens (a last chunk shorter than ``min_length`` is dropped). ``stride`` < ``length``
    makes chunks overlap."""
    if length < 2:
        raise RecipeError(f"causal_lm.chunk_length: {length} is too short; a chunk needs at least 2 tokens")
    sep = _separator(tokenizer)
    stream: list[int] = []
    enc = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    for ids in enc:
        if ids:
            stream.extend(ids + sep)
    step = stride or length
    chunks = [stream[i:i + length] for i in range(0, max(len(stream) - 1, 1), step)]
    return [c for c in chunks if len(c) >= min(min_length, length)]


def domain_groups(df: pd.DataFrame, text_column: str = "text",
                  domain_column: str | None = None) -> list[tuple[str, pd.DataFrame]]:
    """``(domain name, rows)`` in name order (one ``all`` group without a domain column), after checking that
    the named columns exist."""
    if text_column not in df.columns:
        raise RecipeError(f"data.text_column: no column {text_column!r} in the data; "
                          f"columns: {list(df.columns)}")
    if domain_column and domain_column not in df.columns:
        raise RecipeError(f"causal_lm.domain_column: no column {domain_column!r} in the data; "
                          f"columns: {list(df.columns)}")
    return ([("all", df)] if not domain_column
            else [(str(k), g) for k, g in df.groupby(domain_column, sort=True)])


def chunk_frame(df: pd.DataFrame, tokenizer, length: int, domain_column: str | None = None,
                text_column: str = "text") -> tuple[list[dict[str, Any]], list[str]]:
    """Chunk a text table per domain (chunks never mix domains). Returns rows and the domain names."""
    groups = domain_groups(df, text_column, domain_column)
    names = [g for g, _ in groups]
    rows: list[dict[str, Any]] = []
    for d, (_, part) in enumerate(groups):
        for ids in chunk_texts(part[text_column].astype(str).tolist(), tokenizer, length):
            rows.append({"input_ids": ids, "prompt_length": 0, "domain": d})
    for i, r in enumerate(rows):
        r["example_index"] = i
    return rows, names


def prompt_response_rows(df: pd.DataFrame, tokenizer, max_length: int, prompt_column: str,
                         response_column: str, domain_column: str | None = None,
                         chat_template: bool = True) -> tuple[list[dict[str, Any]], list[str]]:
    """Instruction / chat data: one row per (prompt, response); only the response tokens are trained.

    With ``chat_template`` and a tokenizer that has one, the prompt is rendered as a user turn with the
    generation prompt appended and the response follows it; otherwise prompt and response are joined with a
    newline. Rows are truncated to ``max_length`` tokens; a row whose prompt fills it is dropped.
    """
    for col, field in ((prompt_column, "causal_lm.prompt_column"),
                       (response_column, "causal_lm.response_column")):
        if col not in df.columns:
            raise RecipeError(f"{field}: no column {col!r} in the data; columns: {list(df.columns)}")
    domains = sorted(df[domain_column].astype(str).unique()) if domain_column else ["all"]
    use_template = chat_template and getattr(tokenizer, "chat_template", None)
    eos = _separator(tokenizer)
    rows: list[dict[str, Any]] = []
    for _, rec in df.iterrows():
        prompt, response = str(rec[prompt_column]), str(rec[response_column])
        if use_template:
            p_ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True,
                                                  add_generation_prompt=True)
            if isinstance(p_ids, dict) or hasattr(p_ids, "keys"):
                p_ids = p_ids["input_ids"]
            p_ids = list(p_ids)
        else:
            p_ids = tokenizer(prompt + "\n", add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + eos
        ids = (p_ids + r_ids)[:max_length]
        if len(p_ids) >= len(ids):
            continue
        d = domains.index(str(rec[domain_column])) if domain_column else 0
        rows.append({"input_ids": ids, "prompt_length": len(p_ids), "domain": d})
    for i, r in enumerate(rows):
        r["example_index"] = i
    return rows, domains


def next_token_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      prompt_length: torch.Tensor) -> torch.Tensor:
    """(B, L) labels aligned with the logits: ``labels[b, t] = input_ids[b, t+1]`` where token t+1 is real
    and past the prompt, else -100 (so the last position is always -100)."""
    labels = torch.full_like(input_ids, IGNORE)
    nxt = input_ids[:, 1:]
    pos = torch.arange(1, input_ids.shape[1], device=input_ids.device).unsqueeze(0)  # position of token t+1
    trained = (attention_mask[:, 1:] != 0) & (pos >= prompt_length.unsqueeze(1))
    labels[:, :-1] = torch.where(trained, nxt, torch.full_like(nxt, IGNORE))
    return labels


class CausalLMCollator:
    """Rows -> ``{input_ids, attention_mask, labels (shifted), loss_mask, example_index, domain}``, padded
    on the right to the longest row (the store's per-token teacher logits are padded the same way)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = int(pad_token_id)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.as_tensor(r["input_ids"], dtype=torch.long)
            mask[i, :n] = 1
        prompt = torch.tensor([int(r.get("prompt_length", 0)) for r in rows], dtype=torch.long)
        labels = next_token_labels(ids, mask, prompt)
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels,
                 "loss_mask": (labels != IGNORE).long(), "prompt_length": prompt}
        if "example_index" in rows[0]:
            batch["example_index"] = torch.tensor([r["example_index"] for r in rows], dtype=torch.long)
        if "domain" in rows[0]:
            batch["domain"] = torch.tensor([r["domain"] for r in rows], dtype=torch.long)
        return batch


def pad_token_id(tokenizer) -> int:
    """The pad id, falling back to EOS (most causal LMs ship without a pad token)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    return 0


# ---------------------------------------------------------------------------------------------- vocabularies
def vocab_size_of(model_or_config) -> int:
    config = getattr(model_or_config, "config", model_or_config)
    return int(config.vocab_size)


def check_vocabularies(teacher_tokenizer, student_tokenizer, teacher_vocab: int, student_vocab: int) -> int:
    """The number of logit columns teacher and student share, after checking they speak one vocabulary.

    Tokenizers must map the same strings to the same ids (across tokenizers, see the ``alm`` loss).
    Output heads may still differ in size: models pad their embedding matrix to a multiple of 64 or 128
    (Qwen: 151,936 vs 152,064 rows), so the extra rows, which no token uses, are sliced off with a warning.
    """
    from distill.data.tokenize import same_tokenizer

    if not same_tokenizer(teacher_tokenizer, student_tokenizer):
        tv, sv = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
        differ = sorted(t for t in set(tv) | set(sv) if tv.get(t) != sv.get(t))
        if differ:
            raise RecipeError(
                "student.model: the student's tokenizer differs from the teacher's "
                f"({len(differ)} of {len(set(tv) | set(sv))} entries differ, e.g. {differ[:3]}); "
                "token-level losses such as kd need one vocabulary: distil across tokenizers with "
                "hybrid_kl (losses: [{name: hybrid_kl}, {name: ce}] and store.topk: 32) or alm, or use a "
                "student that shares the teacher's tokenizer (student.from_teacher, or a smaller model of "
                "the same family)"
            )
    used = max(len(teacher_tokenizer), len(student_tokenizer))
    shared = min(teacher_vocab, student_vocab)
    if shared < used:
        raise RecipeError(f"student.model: an output head has {shared} rows but the tokenizer has "
                          f"{used} tokens; the models do not match their tokenizer")
    if teacher_vocab != student_vocab:
        warnings.warn(
            f"teacher and student output heads differ in size ({teacher_vocab} vs {student_vocab}) but share "
            f"the tokenizer ({used} tokens): treating the extra rows as padding and comparing the first "
            f"{shared} logits", stacklevel=2)
    return shared


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


def hash_token_rows(rows: list[dict[str, Any]]) -> str:
    """One digest of every row's token ids (and loss mask, when it has one)."""
    h = hashlib.sha256()
    for row in rows:
        h.update(np.asarray(row["input_ids"], dtype=np.int64).tobytes())
        if "labels" in row:
            h.update(np.asarray(row["labels"], dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()
