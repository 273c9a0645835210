"""The in-process generative teacher on a tiny random GPT-2 built in code: same prompt, parser and store as
the HTTP client. Its output is garbage, so the tests check the plumbing, and that garbage is counted as
unparseable, never turned into a label."""

from __future__ import annotations

import math

import pytest
import torch

from distill.teachers.blackbox import Labeler, LabelParser, ResponseStore
from distill.teachers.blackbox.local import LocalGenerativeTeacher

LABELS = ["positive", "negative"]
WORDS = ["[UNK]", "[PAD]", "[EOS]", "classify", "the", "text", "into", "exactly", "one", "of", "these",
         "labels", ":", ",", ".", "answer", "with", "label", "only", "positive", "negative", "banana", "film",
         "good", "bad", "user", "assistant"]
TEXTS = ["the film good", "the film bad", "good good film"]


@pytest.fixture(scope="module")
def tiny_lm():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                  eos_token="[EOS]")
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(WORDS), n_positions=128, n_embd=16, n_layer=1, n_head=2,
                     eos_token_id=vocab["[EOS]"], bos_token_id=vocab["[EOS]"], pad_token_id=vocab["[PAD]"])
    return GPT2LMHeadModel(cfg), tok


def rigged(model, scores: dict[str, float]):
    """Make every next-token distribution softmax(bias): ``scores`` on some words, 0 on the rest."""
    bias = torch.zeros(len(WORDS))
    for word, value in scores.items():
        bias[WORDS.index(word)] = value
    return model.lm_head.register_forward_hook(lambda module, args, out: out * 0 + bias)


def labeler(model, tok, tmp_path, **kw):
    teacher = LocalGenerativeTeacher(model, tok, max_new_tokens=3, logprobs=True, top_logprobs=4)
    return Labeler(teacher, LABELS, ResponseStore(tmp_path / "local.sqlite"), soft_labels=True,
                   progress=False, **kw)


def test_answers_parse_and_soft_labels_come_from_the_logits(tiny_lm, tmp_path):
    model, tok = tiny_lm
    handle = rigged(model, {"positive": 5.0, "negative": 4.0})
    try:
        lab = labeler(model, tok, tmp_path, max_concurrency=8)
        assert lab.max_concurrency == 1  # a local model runs one generation at a time
        run = lab.label(TEXTS)
    finally:
        handle.remove()
    assert run.hard() == [0, 0, 0] and run.items[0].answer.startswith("positive")
    p = 1 / (1 + math.exp(-1.0))  # softmax over the two label tokens: e^5 / (e^5 + e^4)
    assert run.items[0].probs == pytest.approx([p, 1 - p], abs=1e-5)
    assert run.stats["backend"]["generations"] == 3 and run.stats["labelled"] == 3


def test_garbage_is_unparseable_not_guessed(tiny_lm, tmp_path):
    model, tok = tiny_lm
    handle = rigged(model, {"banana": 5.0, "positive": 4.9})  # 'positive' is a close second, but not said
    try:
        run = labeler(model, tok, tmp_path).label(TEXTS)
    finally:
        handle.remove()
    assert [item.status for item in run.items] == ["unparseable"] * 3
    assert all(item.label is None and item.probs is None for item in run.items)
    assert run.stats["parse_failures"][0]["answer"].startswith("banana")


def test_random_model_plumbing_and_store(tiny_lm, tmp_path):
    model, tok = tiny_lm
    first = labeler(model, tok, tmp_path).label(TEXTS)
    parser = LabelParser(LABELS)
    for item in first.items:  # whatever the random model says, a label is given only when the answer names it
        assert item.status in ("labelled", "unparseable")
        assert item.label == parser.parse(item.answer).label
    again = labeler(model, tok, tmp_path)
    second = again.label(TEXTS)
    assert again.backend.generations == 0 and second.stats["cached"] == 3  # answered from the store
    assert [i.answer for i in second.items] == [i.answer for i in first.items]


def test_recipe_local_model_builds_the_local_teacher(tiny_lm, tmp_path):
    from distill.config import BlackBoxConfig
    from distill.teachers.blackbox import build_backend

    model, tok = tiny_lm
    model.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    teacher = build_backend(BlackBoxConfig(local_model=str(tmp_path / "lm"), max_tokens=2, soft_labels=True))
    assert isinstance(teacher, LocalGenerativeTeacher) and teacher.params["max_new_tokens"] == 2
    assert teacher.identity == LocalGenerativeTeacher(model, tok).identity  # same weights, same key
    response = teacher.complete([{"role": "user", "content": "the film good"}])
    assert response.completion_tokens <= 2 and len(response.tokens) == response.completion_tokens
