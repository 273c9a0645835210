"""Fixtures: tiny random Llama language models and a word-level tokenizer (see lm_helpers)."""

from __future__ import annotations

import pytest

from .lm_helpers import make_corpus, make_llama, make_lm_tokenizer


@pytest.fixture(scope="session")
def lm_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_lm")


@pytest.fixture(scope="session")
def lm_tokenizer(lm_dir):
    return make_lm_tokenizer(lm_dir / "tokenizer")


@pytest.fixture(scope="session")
def tiny_llama(lm_dir, lm_tokenizer):
    return make_llama(lm_dir / "teacher", lm_tokenizer, layers=4)


@pytest.fixture(scope="session")
def corpus_csv(lm_dir):
    import pandas as pd

    path = lm_dir / "corpus.csv"
    pd.DataFrame(make_corpus()).to_csv(path, index=False)
    return path
