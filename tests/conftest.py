"""Shared fixtures: tiny random HF models, a tiny tokenizer and synthetic sentiment data, all built
offline."""

from __future__ import annotations

import os
import random

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

POSITIVE = ["good", "great", "fine", "lovely", "superb", "fun", "moving", "smart"]
NEGATIVE = ["bad", "awful", "dull", "boring", "weak", "messy", "flat", "tired"]
NEUTRAL = ["the", "film", "movie", "plot", "cast", "story", "is", "was", "a", "and", "very", "quite", "but"]


def make_tokenizer(path):
    from transformers import BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + POSITIVE + NEGATIVE + NEUTRAL
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)
    tok.save_pretrained(path)
    return tok


def make_bert(path, tokenizer, layers=4, hidden=32, heads=4, classifier=False, labels=None, seed=0):
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=hidden * 2, max_position_embeddings=64)
    if classifier:
        labels = labels or ["negative", "positive"]
        cfg.num_labels = len(labels)
        cfg.id2label = {i: n for i, n in enumerate(labels)}
        cfg.label2id = {n: i for i, n in enumerate(labels)}
        model = BertForSequenceClassification(cfg)
    else:
        model = BertModel(cfg)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_sentiment_rows(n, seed=0):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.random() < 0.5
        strong = POSITIVE if label else NEGATIVE
        weak = NEGATIVE if label else POSITIVE
        words = (rng.choices(NEUTRAL, k=rng.randint(3, 8)) + rng.choices(strong, k=2)
                 + rng.choices(weak, k=rng.randint(0, 1)))
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": "positive" if label else "negative"})
    return rows


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_dir):
    return make_tokenizer(tiny_dir / "tokenizer")


@pytest.fixture(scope="session")
def tiny_encoder(tiny_dir, tiny_tokenizer):
    """A 4-layer random BERT encoder (not a classifier): a teacher to fine-tune."""
    return make_bert(tiny_dir / "encoder", tiny_tokenizer, layers=4)


@pytest.fixture(scope="session")
def tiny_classifier(tiny_dir, tiny_tokenizer):
    """A 4-layer random BERT sentiment classifier with named labels."""
    return make_bert(tiny_dir / "classifier", tiny_tokenizer, layers=4, classifier=True)


@pytest.fixture(scope="session")
def tiny_student(tiny_dir, tiny_tokenizer):
    """A 2-layer, narrower random BERT (a 'pre-trained compact' student)."""
    return make_bert(tiny_dir / "student", tiny_tokenizer, layers=2, hidden=16, heads=2, seed=1)


@pytest.fixture(scope="session")
def sentiment_csv(tiny_dir):
    import pandas as pd

    path = tiny_dir / "sentiment.csv"
    pd.DataFrame(make_sentiment_rows(240)).to_csv(path, index=False)
    return path


@pytest.fixture()
def store_root(tmp_path, monkeypatch):
    root = tmp_path / "stores"
    monkeypatch.setenv("DISTILL_CACHE", str(root))
    return root


def tiny_recipe(tmp_path, teacher_model, data_file, **sections):
    """A recipe dict for the tiny models: fast enough for the default test suite."""
    recipe = {
        "output_dir": str(tmp_path / "run"),
        "teacher": {"model": str(teacher_model)},
        "student": {"from_teacher": True, "layers": [0, 3]},
        "data": {"train": str(data_file), "max_length": 32},
        "losses": [{"name": "kd", "weight": 0.5, "temperature": 2.0}, {"name": "ce", "weight": 0.5}],
        "train": {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "logging_steps": 2, "save_steps": 5,
                  "eval_batch_size": 32},
        "eval": {"latency_batch_sizes": [1, 4], "latency_repeats": 2, "latency_min_seconds": 0,
                 "latency_precision": 0},
        "store": {"dir": str(tmp_path / "stores")},
        # the losses as written; tests of the validation-based choice switch it on
        "select": {"enabled": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    return recipe
