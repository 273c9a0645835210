"""Word-level text augmentation, TinyBERT-style: more in-domain text for the teacher to label.

Each variant of a sentence replaces every word, with probability ``rate``, by one of its ``candidates``
nearest words, from one of two sources:

- ``embedding``: neighbours in an encoder's input embedding table (cosine), among the single-piece words of
  its vocabulary; needs only the embedding matrix, so it runs offline on any packaged encoder;
- ``mlm``: the top predictions of a masked language model for the word's position, the word masked in its
  sentence (contextual, as TinyBERT does for single-piece words; needs a model with an MLM head).

Back-off: a word that is not a single piece of the vocabulary, or that has no candidate, is kept. Variants
equal to the sentence or to an earlier variant are dropped. Everything is seeded per (sentence, variant), so
the output does not depend on the order or the number of processes, and cached on disk by a fingerprint of
the texts, the settings and the model's weights.

Source: Jiao et al., TinyBERT: Distilling BERT for Natural Language Understanding, Findings of EMNLP 2020
(p_t = 0.4, N_a = 20, K = 15 there).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from distill.files import atomic_write

_WORD = re.compile(r"^[A-Za-z][A-Za-z'-]*$")


def _single_piece_words(tokenizer: Any) -> dict[str, int]:
    """Vocabulary entries that are whole alphabetic words (no sub-word marker), as text -> id."""
    out = {}
    for token, idx in tokenizer.get_vocab().items():
        if token in tokenizer.all_special_tokens:
            continue
        text = token.lstrip("\u0120\u2581")  # GPT-2 / SentencePiece word-start markers
        if _WORD.match(text) and not token.startswith("##") and len(text) > 1:
            out.setdefault(text.lower() if getattr(tokenizer, "do_lower_case", False) else text, idx)
    return out


def embedding_neighbours(words: Sequence[str], tokenizer: Any, embeddings: torch.Tensor,
                         k: int = 15, chunk: int = 1024) -> dict[str, list[str]]:
    """For each word of ``words`` that is one piece of the vocabulary: its ``k`` nearest single-piece words by
    cosine similarity of the input embeddings ``embeddings`` (V, D), nearest first, itself excluded."""
    vocab = _single_piece_words(tokenizer)
    cand_words = sorted(vocab)
    cand_ids = torch.tensor([vocab[w] for w in cand_words])
    table = torch.nn.functional.normalize(embeddings.detach().float()[cand_ids], dim=-1)  # (W, D)
    queries = [w for w in dict.fromkeys(words) if w in vocab]
    out: dict[str, list[str]] = {}
    for start in range(0, len(queries), chunk):
        part = queries[start:start + chunk]
        q = torch.nn.functional.normalize(embeddings.detach().float()[[vocab[w] for w in part]], dim=-1)
        sims = q @ table.T  # (n, W)
        top = sims.topk(min(k + 1, sims.shape[1]), dim=-1).indices
        for word, row in zip(part, top.tolist()):
            out[word] = [cand_words[i] for i in row if cand_words[i] != word][:k]
    return out


class WordReplacer:
    """Makes variants of sentences by replacing words with candidates from ``neighbours`` (embedding source)
    or from a masked language model (``mlm``, with its ``tokenizer``)."""

    def __init__(self, neighbours: dict[str, list[str]] | None = None, mlm: Any = None, tokenizer: Any = None,
                 k: int = 15, lowercase: bool = True):
        self.neighbours = neighbours or {}
        self.mlm, self.tokenizer, self.k, self.lowercase = mlm, tokenizer, k, lowercase

    def _key(self, word: str) -> str:
        return word.lower() if self.lowercase else word

    def variant(self, text: str, rate: float, rng: random.Random) -> str:
        words = text.split()
        if self.mlm is not None:
            return self._mlm_variant(words, rate, rng)
        out = []
        for w in words:
            cands = self.neighbours.get(self._key(w))
            out.append(rng.choice(cands) if cands and rng.random() < rate else w)
        return " ".join(out)

    @torch.no_grad()
    def _mlm_variant(self, words: list[str], rate: float, rng: random.Random) -> str:
        tok = self.tokenizer
        picks = [i for i, w in enumerate(words) if _WORD.match(w) and rng.random() < rate]
        if not picks:
            return " ".join(words)
        masked = [tok.mask_token if i in picks else w for i, w in enumerate(words)]
        enc = tok(" ".join(masked), return_tensors="pt", truncation=True, max_length=256)
        logits = self.mlm(**enc).logits[0]  # (L, V)
        positions = (enc["input_ids"][0] == tok.mask_token_id).nonzero(as_tuple=True)[0].tolist()
        out = list(words)
        for i, pos in zip(picks, positions):
            best = [tok.convert_ids_to_tokens(t) for t in logits[pos].topk(self.k + 5).indices.tolist()]
            cands = [b.lstrip("\u0120\u2581") for b in best if _WORD.match(b.lstrip("\u0120\u2581"))
                     and not b.startswith("##") and self._key(b) != self._key(words[i])][: self.k]
            if cands:
                out[i] = rng.choice(cands)
        return " ".join(out)


def augment_texts(texts: Sequence[str], replacer: WordReplacer, variants: int, rate: float,
                  seed: int) -> list[tuple[int, str]]:
    """Up to ``variants`` distinct variants of every text, as (index of the source text, variant)."""
    out = []
    for i, text in enumerate(texts):
        seen = {text}
        for v in range(variants):
            rng = random.Random(f"{seed}:{i}:{v}")  # the same variant whatever else runs
            new = replacer.variant(text, rate, rng)
            if new not in seen:
                seen.add(new)
                out.append((i, new))
    return out


def cached_augmentation(path: Path, make: Any) -> list[tuple[int, str]]:
    """The variants stored at ``path`` (JSON lines), or ``make()``'s, written there atomically first."""
    if path.exists():
        lines = path.read_text(encoding="utf-8").splitlines()
        return [(int(r["source"]), r["text"]) for r in map(json.loads, lines)]
    rows = make()
    atomic_write(path, lambda fh: fh.writelines(json.dumps({"source": i, "text": t}) + "\n" for i, t in rows))
    return rows


def make_replacer(cfg: Any, source: str, texts: Sequence[str]) -> WordReplacer:
    """The replacer ``cfg`` (``data.augment``) asks for, from the model ``source``, for the words of
    ``texts``."""
    from distill.models import load_tokenizer

    tok = load_tokenizer(source)
    lower = bool(getattr(tok, "do_lower_case", False))
    if cfg.source == "mlm":
        from transformers import AutoModelForMaskedLM

        return WordReplacer(mlm=AutoModelForMaskedLM.from_pretrained(source).eval(), tokenizer=tok,
                            k=cfg.candidates, lowercase=lower)
    from transformers import AutoModel

    weights = AutoModel.from_pretrained(source).get_input_embeddings().weight
    words = {w.lower() if lower else w for text in texts for w in str(text).split()}
    return WordReplacer(embedding_neighbours(sorted(words), tok, weights, cfg.candidates), lowercase=lower)


def augmented_frame(cfg: Any, train: Any, source: str, cache_root: Path,
                    log: Any) -> tuple[Any, dict[str, Any]]:
    """Variants of the sentences of ``train`` (a frame with ``text``, maybe ``text_pair``) as unlabelled rows
    (label -1), made once and cached under ``cache_root/augmented-text`` by a fingerprint of the texts, the
    settings and the model's weights; and a summary for the report."""
    import pandas as pd

    from distill.stages import fingerprint, model_fingerprint
    from distill.store import fingerprint_rows

    texts = list(train["text"])
    key = fingerprint({"texts": fingerprint_rows(texts), "augment": cfg.__dict__,
                       "model": model_fingerprint(source)})
    path = cache_root / "augmented-text" / f"{key}.jsonl"

    def make() -> list[tuple[int, str]]:
        log(f"augmenting {len(texts)} training sentences x {cfg.variants} ({cfg.source} replacements from "
            f"{source}, rate {cfg.rate})")
        return augment_texts(texts, make_replacer(cfg, source, texts), cfg.variants, cfg.rate, cfg.seed)

    rows = cached_augmentation(path, make)
    out = pd.DataFrame({"text": [t for _, t in rows], "label": -1})
    if "text_pair" in train.columns:
        out["text_pair"] = [train["text_pair"].iloc[i] for i, _ in rows]
    summary = {"rows": len(out), "from": len(texts), "source": cfg.source, "model": source, "rate": cfg.rate,
               "variants": cfg.variants, "file": str(path)}
    return out, summary
