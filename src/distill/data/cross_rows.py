"""Rows of a cross-tokenizer causal-LM run: stretches of text, each tokenised by the teacher's and by the
student's tokenizer and aligned by UTF-8 byte position (:mod:`distill.data.byte_align`).

A row is a piece of the original text (never a decoded token sequence: decoding a window of byte-level
tokens can cut a character in two). Each side encodes it without special tokens behind one *start token*
of its own (its BOS, else its EOS), which covers no bytes: every token of the text is then predicted by a
position before it, so each model's held-out NLL is the NLL of the same bytes, and bits per byte compare
models across tokenizers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from distill._dataclass_io import RecipeError
from distill.data.byte_align import align_spans, byte_spans
from distill.data.text_lm import domain_groups


def start_token(tokenizer) -> int:
    """The id a row starts with on this side: BOS, else EOS (a causal LM without either cannot score the
    first token of a text)."""
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise RecipeError(f"tokenizer {type(tokenizer).__name__} has neither a BOS nor an EOS token; a "
                      "cross-tokenizer run starts every row with one of them")


def encode_spans(text: str, tokenizer) -> tuple[list[int], list[tuple[int, int]]]:
    """``[start] + ids`` of ``text`` and the UTF-8 byte span of each (the start token covers none)."""
    if not getattr(tokenizer, "is_fast", False):
        raise RecipeError(f"tokenizer {type(tokenizer).__name__}: cross-tokenizer alignment needs a fast "
                          "tokenizer (character offsets); load it with use_fast=True")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = [(0, 0)] + byte_spans(text, enc["offset_mapping"])
    return [start_token(tokenizer)] + list(enc["input_ids"]), spans


def text_windows(df: pd.DataFrame, tokenizer, length: int, domain_column: str | None = None,
                 text_column: str = "text", min_tokens: int = 4) -> tuple[list[dict[str, Any]], list[str]]:
    """Cut every text of ``df`` into windows of at most ``length`` tokens of ``tokenizer`` (the student's),
    each kept as the exact substring it covers. Returns rows ``{"text", "domain"}`` and the domain names."""
    if length < 2:
        raise RecipeError(f"causal_lm.chunk_length: {length} is too short; a chunk needs at least 2 tokens")
    groups = domain_groups(df, text_column, domain_column)
    rows: list[dict[str, Any]] = []
    for d, (_, part) in enumerate(groups):
        texts = [str(t) for t in part[text_column].tolist()]
        offsets = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        for text, offs in zip(texts, offsets):
            offs = [(s, e) for s, e in offs if e > s]
            for i in range(0, len(offs), length):
                piece = offs[i:i + length]
                if len(piece) >= min(min_tokens, length):
                    rows.append({"text": text[piece[0][0]:piece[-1][1]], "domain": d})
    return rows, [g for g, _ in groups]


def aligned_row(row: dict[str, Any], student_tokenizer, teacher_tokenizer) -> dict[str, Any]:
    """A window, encoded on both sides and aligned. Adds ``input_ids`` (student), ``teacher_ids``,
    ``teacher_spans``, ``teacher_chunks`` (group per teacher token, -1: none) and ``position_chunks`` (per
    student position, the group of the token it predicts, -1: none)."""
    s_ids, s_spans = encode_spans(row["text"], student_tokenizer)
    t_ids, t_spans = encode_spans(row["text"], teacher_tokenizer)
    al = align_spans(t_spans, s_spans)
    t_chunks, s_chunks = al.chunk_ids(len(t_ids), len(s_ids))
    return {**row, "input_ids": s_ids, "prompt_length": 0, "teacher_ids": t_ids, "teacher_spans": t_spans,
            "teacher_chunks": t_chunks, "position_chunks": s_chunks[1:] + [-1], "groups": len(al.groups)}


def teacher_rows_of(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same windows as the teacher reads them (for its held-out perplexity and bits per byte)."""
    return [{"input_ids": r["teacher_ids"], "prompt_length": 0, "domain": r["domain"], "text": r["text"],
             "example_index": r["example_index"]} for r in rows]


def group_logliks(teacher_logprobs: np.ndarray, teacher_chunks: list[int],
                  n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """A row's teacher log-likelihood per group (the sum over the group's teacher tokens of the stored
    observed-token log-probabilities; position 0, the start token, has none) and whether it is usable (every
    token of the group scored, the value finite)."""
    ll = np.zeros(n_groups, dtype=np.float64)
    ok = np.ones(n_groups, dtype=bool)
    seen = np.zeros(n_groups, dtype=bool)
    for k, g in enumerate(teacher_chunks):
        if g < 0:
            continue
        seen[g] = True
        value = float(teacher_logprobs[k]) if k > 0 else float("nan")
        if not np.isfinite(value):
            ok[g] = False
        else:
            ll[g] += value
    return ll, ok & seen


def _token_texts(tokenizer) -> dict[str, int]:
    """Each non-special token's text (decoded alone) -> its id, for texts only one token has (a text two
    tokens share, e.g. SentencePiece's "▁the" and "the" once the leading space is dropped, and byte
    fragments that decode to U+FFFD are left out: a wrong pairing would teach the wrong token)."""
    special = set(tokenizer.all_special_ids)
    seen: dict[str, list[int]] = {}
    for tid in range(len(tokenizer)):
        if tid in special:
            continue
        text = tokenizer.decode([tid])
        if text and "\ufffd" not in text:
            seen.setdefault(text, []).append(tid)
    return {text: ids[0] for text, ids in seen.items() if len(ids) == 1}


def shared_vocabulary(teacher_tokenizer, student_tokenizer, teacher_vocab: int,
                      student_vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens both vocabularies have, by their text: ``(teacher id -> student id or -1, of length
    teacher_vocab; student ids that have a teacher counterpart, a bool mask of length student_vocab)``."""
    t_texts, s_texts = _token_texts(teacher_tokenizer), _token_texts(student_tokenizer)
    t2s = np.full(max(teacher_vocab, len(teacher_tokenizer)), -1, dtype=np.int64)
    shared = np.zeros(max(student_vocab, len(student_tokenizer)), dtype=bool)
    for text, tid in t_texts.items():
        sid = s_texts.get(text)
        if sid is not None:
            t2s[tid] = sid
            shared[sid] = True
    return t2s, shared[:student_vocab]


def group_topk(row: dict[str, Any], teacher_logprobs: np.ndarray, topk_ids: np.ndarray,
               topk_logprobs: np.ndarray, t2s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per group of a row, the teacher's merged top-k next tokens at the group's last teacher position (as
    student ids, -1: not shared) and their log-probabilities plus the log-probability of the group's earlier
    teacher tokens (the chain rule). Shapes (G, k)."""
    n_groups, k = row["groups"], topk_ids.shape[1]
    ids = np.full((n_groups, k), -1, dtype=np.int64)
    logp = np.zeros((n_groups, k), dtype=np.float64)
    members: dict[int, list[int]] = {}
    for tok, g in enumerate(row["teacher_chunks"]):
        if g >= 0:
            members.setdefault(g, []).append(tok)
    for g, toks in members.items():
        last = max(toks)
        prefix = float(sum(teacher_logprobs[t] for t in toks if t != last))
        ids[g] = t2s[topk_ids[last - 1]]  # position last - 1 predicts the group's last token
        logp[g] = topk_logprobs[last - 1].astype(np.float64) + prefix
    return ids, logp
