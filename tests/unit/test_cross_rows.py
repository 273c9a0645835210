"""Rows of a cross-tokenizer run (windows kept as exact substrings, both sides aligned, the start token
scoring the first real token) and the teacher's token log-probability store (atomic shards, resume)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from distill.data.cross_rows import aligned_row, encode_spans, group_logliks, text_windows

_spec = importlib.util.spec_from_file_location(
    "lm_helpers", Path(__file__).parent / "causal_lm" / "lm_helpers.py")
lm_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lm_helpers)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("cross_rows")
    words = lm_helpers.make_lm_tokenizer(d / "words")
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.train_from_iterator([r["text"] for r in lm_helpers.make_corpus(40)],
                             trainers.BpeTrainer(vocab_size=50, special_tokens=["<pad>", "<unk>", "<s>"]))
    bpe = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                  bos_token="<s>")
    return words, bpe, d


def test_windows_are_exact_substrings_of_at_most_length_tokens(tokenizers):
    words, bpe, _ = tokenizers
    df = pd.DataFrame(lm_helpers.make_corpus(10))
    rows, names = text_windows(df, bpe, 7, "domain")
    assert names == ["film", "play"] and rows
    for r in rows:
        source = df.text[df.domain == names[r["domain"]]]
        assert any(r["text"] in t for t in source)
        n = len(bpe(r["text"], add_special_tokens=False)["input_ids"])
        assert 4 <= n <= 7 + 1  # re-tokenising a cut piece may split its last word differently


def test_start_token_and_alignment(tokenizers):
    words, bpe, _ = tokenizers
    row = aligned_row({"text": "the king speaks", "domain": 0}, bpe, words)
    assert row["input_ids"][0] == bpe.bos_token_id          # BOS on the student side
    assert row["teacher_ids"][0] == words.eos_token_id      # no BOS on the teacher's: its EOS starts the row
    assert row["teacher_chunks"] == [-1, 0, 1, 2]           # one word per teacher token
    ids, spans = encode_spans("the king speaks", bpe)
    # the student position before each token predicts it: position k carries the group of token k + 1
    s_chunks = [-1] + row["position_chunks"][:-1]
    assert len(row["position_chunks"]) == len(ids) and row["position_chunks"][-1] == -1
    for k, (s, e) in enumerate(spans):
        if e > s:
            word = "the king speaks"[s:e]
            assert s_chunks[k] == ["the", "king", "speaks"].index(
                next(w for w in ["the", "king", "speaks"] if word in w))
    assert row["groups"] == 3


def test_group_logliks_sums_and_flags():
    lp = np.array([np.nan, -1.0, -2.0, -0.5], dtype=np.float32)
    ll, ok = group_logliks(lp, [-1, 0, 0, 1], 3)
    assert ll.tolist() == [-3.0, -0.5, 0.0] and ok.tolist() == [True, True, False]
    ll, ok = group_logliks(lp, [0, 0, 1, 1], 2)  # a group holding the unscored first token is unusable
    assert ok.tolist() == [False, True]


def test_token_logprob_store_resumes_shard_by_shard(tokenizers, tmp_path):
    from distill.store.token_logprobs import TokenLogprobStore, build_token_logprob_store

    words, bpe, d = tokenizers
    model = lm_helpers.make_llama(d / "lm", words, layers=1)
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(str(model))
    calls = []

    def teacher():
        calls.append(1)
        return lm

    rows = [aligned_row({"text": r["text"], "domain": 0}, bpe, words) for r in lm_helpers.make_corpus(7)]
    folder = tmp_path / "store"
    store, seconds = build_token_logprob_store(folder, rows, teacher, pad_id=0, vocab_size=None, batch_size=3,
                                               shard_size=3, log=lambda m: None)
    assert seconds is not None and len(store.ids) == 7 and store.manifest["shards"] == 3
    # the stored values are the model's own log-probabilities of the observed tokens
    ids = torch.tensor([rows[4]["teacher_ids"]])
    with torch.no_grad():
        lp = torch.log_softmax(lm(input_ids=ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
    assert np.isnan(store.logprobs[4][0])
    np.testing.assert_allclose(store.logprobs[4][1:], lp.numpy(), rtol=1e-5, atol=1e-6)
    assert [tuple(s) for s in store.spans[4]] == [tuple(s) for s in rows[4]["teacher_spans"]]
    # a killed build: the manifest and the last shard missing -> only that shard is computed again
    before = (folder / "shard-00001.npz").read_bytes()
    (folder / "manifest.json").unlink()
    (folder / "shard-00002.npz").unlink()
    calls.clear()
    again, seconds = build_token_logprob_store(folder, rows, teacher, pad_id=0, vocab_size=None, batch_size=3,
                                               shard_size=3, log=lambda m: None)
    assert len(calls) == 1 and (folder / "shard-00001.npz").read_bytes() == before
    for a, b in zip(again.logprobs, store.logprobs):
        np.testing.assert_array_equal(a, b)
    # a finished store opens without the teacher
    calls.clear()
    _, seconds = build_token_logprob_store(folder, rows, teacher, pad_id=0, vocab_size=None, batch_size=3,
                                           shard_size=3, log=lambda m: None)
    assert seconds is None and not calls
    assert TokenLogprobStore.open(folder).info()["rows"] == 7


def test_shared_vocabulary_pairs_tokens_by_text(tokenizers):
    from distill.data.cross_rows import shared_vocabulary

    words, bpe, _ = tokenizers
    t2s, shared = shared_vocabulary(words, bpe, len(words), len(bpe))
    assert len(t2s) == len(words) and len(shared) == len(bpe)
    pairs = [(t, int(s)) for t, s in enumerate(t2s) if s >= 0]
    assert pairs, "some whole words are single BPE tokens"
    for t, s in pairs:
        assert words.decode([t]) == bpe.decode([s]) and shared[s]
    assert t2s[words.eos_token_id] == -1 and t2s[words.pad_token_id] == -1  # special tokens never pair
    assert shared.sum() == len(pairs)


def test_group_topk_merges_by_the_chain_rule():
    from distill.data.cross_rows import group_topk

    row = {"groups": 2, "teacher_chunks": [-1, 0, 0, 1]}
    lp = np.array([np.nan, -1.0, -2.0, -0.5], dtype=np.float32)
    top_ids = np.array([[5, 6], [7, 5], [6, 7], [5, 6]], dtype=np.int32)
    top_lp = np.array([[-0.1, -2.0], [-0.3, -1.5], [-0.2, -1.9], [-0.4, -1.1]], dtype=np.float32)
    t2s = np.array([-1, -1, -1, -1, -1, 0, 1, -1])
    ids, logp = group_topk(row, lp, top_ids, top_lp, t2s)
    # group 0 = teacher tokens 1, 2: the distribution at position 1 (predicts token 2) + log P(token 1)
    assert ids[0].tolist() == [-1, 0] and np.allclose(logp[0], [-0.3 - 1.0, -1.5 - 1.0])
    # group 1 = token 3 alone: the distribution at position 2, no prefix
    assert ids[1].tolist() == [1, -1] and np.allclose(logp[1], [-0.2, -1.9])
