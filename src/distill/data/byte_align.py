"""Aligning two tokenizations of the same text by UTF-8 byte position (for cross-tokenizer distillation).

Two tokenizers cut one text differently; a teacher's and a student's per-token numbers can only be compared
over stretches of text both tokenizations cover exactly. Each token is turned into the byte span it covers
(:func:`byte_spans`, from a fast tokenizer's character offsets), and :func:`align_spans` walks both span
lists once, closing a *group* whenever both sides have a token ending at the same byte: every group is a
run of consecutive tokens on each side that together cover the same bytes, and the groups partition the
tokens that cover any bytes.

Where peers went wrong, and what this does instead:
- comparing decoded strings never reconciles a multi-byte character split over two byte-level tokens: here
  such tokens carry the span of the whole character (the tokenizer's offsets are per character), and tokens
  whose spans overlap are kept together (no boundary inside them), which also covers a prefix marker such as
  SentencePiece's "▁" that carries the offsets of the character after it;
- a BOS (or any special token) on one side only covers no bytes: tokens with empty spans belong to no group
  (they are returned as ``unaligned``), so they never shift the pairing of the rest;
- leading spaces that one tokenizer puts into a token and another drops from its offsets: only ends are
  compared, so a trimmed start does not matter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Alignment:
    """Groups of token indices on side A and side B that cover the same bytes; ``ends[g]`` is the byte at
    which group g closes; ``unaligned_a`` / ``unaligned_b`` are the tokens in no group (empty spans, or
    tokens after the last byte both sides reach)."""

    groups: list[tuple[list[int], list[int]]]
    ends: list[int]
    unaligned_a: list[int]
    unaligned_b: list[int]

    def chunk_ids(self, n_a: int, n_b: int) -> tuple[list[int], list[int]]:
        """Per token, the index of its group (-1: in none), for side A (``n_a`` tokens) and side B."""
        ids_a, ids_b = [-1] * n_a, [-1] * n_b
        for g, (ga, gb) in enumerate(self.groups):
            for i in ga:
                ids_a[i] = g
            for j in gb:
                ids_b[j] = g
        return ids_a, ids_b


def byte_spans(text: str, char_offsets: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Character offsets (a fast tokenizer's ``offset_mapping``) -> UTF-8 byte spans of ``text``."""
    starts = [0] * (len(text) + 1)
    pos = 0
    for i, ch in enumerate(text):
        starts[i] = pos
        pos += len(ch.encode("utf-8"))
    starts[len(text)] = pos
    out = []
    for s, e in char_offsets:
        s, e = max(0, min(int(s), len(text))), max(0, min(int(e), len(text)))
        out.append((starts[s], starts[max(s, e)]))
    return out


def _atoms(spans: Sequence[tuple[int, int]]) -> tuple[list[tuple[list[int], int]], list[int]]:
    """Runs of consecutive tokens whose spans overlap (the byte-level halves of one character, a prefix
    marker that carries the next character's offsets): no boundary can fall inside one. Returns (tokens,
    end byte) per run, and the tokens with empty spans."""
    atoms: list[tuple[list[int], int]] = []
    empty: list[int] = []
    for k, (s, e) in enumerate(spans):
        if e <= s:
            empty.append(k)
        elif atoms and s < atoms[-1][1]:
            atoms[-1] = (atoms[-1][0] + [k], max(atoms[-1][1], e))
        else:
            atoms.append(([k], e))
    return atoms, empty


def align_spans(a: Sequence[tuple[int, int]], b: Sequence[tuple[int, int]]) -> Alignment:
    """Group the tokens of two tokenizations of one text (their byte spans, in token order) into runs that
    end at the same byte on both sides."""
    atoms_a, empty_a = _atoms(a)
    atoms_b, empty_b = _atoms(b)
    groups: list[tuple[list[int], list[int]]] = []
    ends: list[int] = []
    cur_a: list[int] = []
    cur_b: list[int] = []
    i = j = 0
    while i < len(atoms_a) and j < len(atoms_b):
        (toks_a, ea), (toks_b, eb) = atoms_a[i], atoms_b[j]
        if ea <= eb:
            cur_a += toks_a
            i += 1
        if eb <= ea:
            cur_b += toks_b
            j += 1
        if ea == eb:
            groups.append((cur_a, cur_b))
            ends.append(ea)
            cur_a, cur_b = [], []
    # what is left covers bytes the other side never reaches (e.g. a trailing space only one side keeps)
    rest_a = cur_a + [k for toks, _ in atoms_a[i:] for k in toks]
    rest_b = cur_b + [k for toks, _ in atoms_b[j:] for k in toks]
    return Alignment(groups=groups, ends=ends, unaligned_a=sorted(empty_a + rest_a),
                     unaligned_b=sorted(empty_b + rest_b))


def align_texts(text: str, tokenizer_a, tokenizer_b, add_special_tokens: bool = True) -> tuple[
        list[int], list[int], Alignment]:
    """Tokenise ``text`` with two fast tokenizers and align them: (ids A, ids B, alignment)."""
    enc_a = tokenizer_a(text, return_offsets_mapping=True, add_special_tokens=add_special_tokens)
    enc_b = tokenizer_b(text, return_offsets_mapping=True, add_special_tokens=add_special_tokens)
    al = align_spans(byte_spans(text, enc_a["offset_mapping"]), byte_spans(text, enc_b["offset_mapping"]))
    return list(enc_a["input_ids"]), list(enc_b["input_ids"]), al
