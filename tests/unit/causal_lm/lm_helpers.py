"""Tiny random Llama language models, a word-level tokenizer and a two-domain corpus, built in code."""

from __future__ import annotations

import random

WORDS = ("the king queen ghost night castle sword poison speaks walks sleeps dreams film actor scene plot "
         "great dull movie story good bad love hate and a of to is was").split()


def make_lm_tokenizer(path, extra: tuple[str, ...] = ()):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<eos>"] + list(WORDS) + list(extra))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
    path.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(path)
    return tok


def make_llama(path, tokenizer, layers=4, hidden=16, vocab=None, seed=0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab or len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=128, tie_word_embeddings=True,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # a peaked, non-uniform teacher so distillation has something to learn
        model.model.embed_tokens.weight.mul_(8.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_corpus(n=60, seed=0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        domain = "play" if i % 2 else "film"
        words = WORDS[:12] if domain == "play" else WORDS[12:24]
        rows.append({"text": " ".join(rng.choices(words + WORDS[24:], k=rng.randint(10, 30))), "domain": domain})
    return rows




def assert_same_step(big, t_big, small, t_small):
    """Two one-step runs (weight deltas, trainer) moved the weights alike and logged the same loss."""
    import pytest
    import torch

    moved = 0
    for k in big:
        torch.testing.assert_close(small[k], big[k], atol=1e-6, rtol=1e-4)
        moved += int(big[k].abs().sum() > 0)
    assert moved > 5  # the step really changed the weights
    loss_big = next(h["loss"] for h in t_big.state.log_history if "loss" in h)
    loss_small = next(h["loss"] for h in t_small.state.log_history if "loss" in h)
    assert loss_small == pytest.approx(loss_big, rel=1e-4)
