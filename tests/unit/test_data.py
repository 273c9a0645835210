from __future__ import annotations

import pandas as pd
import pytest

from distill.config import DataConfig, RecipeError
from distill.data import DistillCollator, load_splits, to_dataset


def test_splits_are_stratified_fixed_and_disjoint(sentiment_csv):
    cfg = DataConfig(train=str(sentiment_csv))
    a, b = load_splits(cfg), load_splits(cfg)
    assert a.labels == ["negative", "positive"]
    assert a.test["text"].tolist() == b.test["text"].tolist()
    n = len(pd.read_csv(sentiment_csv))
    assert len(a.train) + len(a.validation) + len(a.test) == n
    assert abs(a.test["label"].mean() - a.train["label"].mean()) < 0.1


def test_missing_column_and_unknown_label(tmp_path, sentiment_csv):
    with pytest.raises(RecipeError, match="column 'review' not found .*data.text_column"):
        load_splits(DataConfig(train=str(sentiment_csv), text_column="review"))
    with pytest.raises(RecipeError, match="label '(positive|negative)' .* is not one of the labels"):
        load_splits(DataConfig(train=str(sentiment_csv)), labels=["neg", "pos"])
    with pytest.raises(RecipeError, match="does not exist"):
        load_splits(DataConfig(train=str(tmp_path / "none.csv")))


def test_formats_and_unlabeled(tmp_path, sentiment_csv):
    df = pd.read_csv(sentiment_csv)
    df.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    df.to_parquet(tmp_path / "d.parquet")
    df[["text"]].to_csv(tmp_path / "u.csv", index=False)
    for name in ("d.jsonl", "d.parquet"):
        s = load_splits(DataConfig(train=str(tmp_path / name), unlabeled=str(tmp_path / "u.csv")))
        held_out = set(s.validation["text"]) | set(s.test["text"])
        assert len(s.unlabeled) == sum(t not in held_out for t in df["text"]) > 0
        assert (s.unlabeled["label"] == -1).all()


def test_tokenise_two_tokenizers_and_collate(sentiment_csv, tiny_tokenizer):
    s = load_splits(DataConfig(train=str(sentiment_csv)))
    ds = to_dataset(s.train.head(8), tiny_tokenizer, tiny_tokenizer, max_length=6, start_index=100)
    row = ds[0]
    assert "teacher_input_ids" in row and row["example_index"] == 100 and len(row["input_ids"]) <= 6
    batch = DistillCollator(tiny_tokenizer, tiny_tokenizer)([ds[i] for i in range(4)])
    assert batch["input_ids"].shape == batch["teacher_input_ids"].shape
    assert batch["example_index"].tolist() == [100, 101, 102, 103]


def test_hf_datasets_on_disk(tmp_path, sentiment_csv):
    import datasets

    df = pd.read_csv(sentiment_csv)
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_pandas(df.iloc[:150]),
        "validation": datasets.Dataset.from_pandas(df.iloc[150:190].reset_index(drop=True)),
        "test": datasets.Dataset.from_pandas(df.iloc[190:].reset_index(drop=True)),
    })
    dd.save_to_disk(tmp_path / "ds")
    s = load_splits(DataConfig(source="hf_disk", train=str(tmp_path / "ds")))
    assert (len(s.train), len(s.validation), len(s.test)) == (150, 40, len(df) - 190)


def test_hf_disk_unlabelled_rows_and_splits(tmp_path, sentiment_csv):
    import datasets

    df = pd.read_csv(sentiment_csv)
    unsup = df.iloc[:30].assign(label=-1)
    extra = pd.concat([df.iloc[200:].reset_index(drop=True), df.iloc[30:35].assign(label=None)],
                      ignore_index=True)
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_pandas(extra.astype({"label": object})),
        "unsupervised": datasets.Dataset.from_pandas(unsup[["text", "label"]].reset_index(drop=True)),
    })
    dd.save_to_disk(tmp_path / "ds")
    s = load_splits(DataConfig(source="hf_disk", train=str(tmp_path / "ds")))
    assert s.labels == ["negative", "positive"]
    held_out = set(s.validation["text"]) | set(s.test["text"])
    assert s.unlabeled is not None and not set(s.unlabeled["text"]) & held_out
    assert len(s.train) + len(s.validation) + len(s.test) == len(df) - 200


def test_unlabelled_text_never_repeats_test_inputs(tmp_path, sentiment_csv):
    s0 = load_splits(DataConfig(train=str(sentiment_csv)))
    leak = pd.DataFrame({"text": list(s0.test["text"][:5]) + ["a brand new sentence"]})
    leak.to_csv(tmp_path / "u.csv", index=False)
    s = load_splits(DataConfig(train=str(sentiment_csv), unlabeled=str(tmp_path / "u.csv")))
    assert list(s.unlabeled["text"]) == ["a brand new sentence"]


def test_max_unlabeled_examples_is_a_seeded_sample_in_file_order(tmp_path, sentiment_csv):
    extra = pd.DataFrame({"text": [f"sentence number {i}" for i in range(50)]})
    extra.to_csv(tmp_path / "u.csv", index=False)

    def rows(**kw):
        cfg = DataConfig(train=str(sentiment_csv), unlabeled=str(tmp_path / "u.csv"), **kw)
        return list(load_splits(cfg).unlabeled["text"])

    a, b = rows(max_unlabeled_examples=10), rows(max_unlabeled_examples=10)
    assert a == b and len(a) == 10 and len(set(a)) == 10
    order = [int(t.rsplit(" ", 1)[1]) for t in a]
    assert order == sorted(order) and order != list(range(10))  # sampled, kept in file order
    assert rows(max_unlabeled_examples=10, split_seed=1) != a
    assert len(rows(max_unlabeled_examples=500)) == 50  # a cap above the rows keeps them all
    with pytest.raises(RecipeError, match="data.max_unlabeled_examples.*positive"):
        DataConfig(train=str(sentiment_csv), max_unlabeled_examples=0)


def test_labeled_examples_keeps_that_many_labels_stratified(sentiment_csv):
    full = load_splits(DataConfig(train=str(sentiment_csv)))
    s = load_splits(DataConfig(train=str(sentiment_csv), labeled_examples=20))
    assert len(s.train) == 20 and sorted(set(s.train["label"])) == [0, 1]
    assert len(s.train) + len(s.unlabeled) == len(full.train) and (s.unlabeled["label"] == -1).all()
    assert list(s.test["text"]) == list(full.test["text"])  # the held-out rows do not move
    with pytest.raises(RecipeError, match="data.labeled_examples.*not both"):
        DataConfig(train=str(sentiment_csv), labeled_examples=20, labeled_fraction=0.1)


def test_packaged_english_text_transfer_set(tmp_path):
    """``data.unlabeled: packaged:english_text``: every packaged English sentence, one per row, de-duplicated
    on case- and punctuation-free text, without the run's validation and test texts."""
    from distill.data.splits import load_splits
    from distill.packaged import ENGLISH_TEXT_SOURCES, load_english_text, normalised_text

    try:
        full = load_english_text()
    except RecipeError as exc:  # the text packages are installed by scripts/setup.sh
        pytest.skip(str(exc))
    assert set(full["domain"]) == set(ENGLISH_TEXT_SOURCES)
    keys = full["text"].map(normalised_text)
    assert keys.is_unique and len(full) > 100_000
    assert normalised_text("It's  GREAT, isn't it?") == "it s great isn t it"
    # a run whose held-out rows are packaged sentences written differently: none of them comes back
    held = full["text"].iloc[:300].tolist()
    path = tmp_path / "train.csv"
    pd.DataFrame({"text": [t.lower() + " !" for t in held] + [f"own text {i}" for i in range(300)]}).to_csv(
        path, index=False)
    from distill.config import DataConfig

    splits = load_splits(DataConfig(train=str(path), unlabeled="packaged:english_text", test_fraction=0.3,
                                    validation_fraction=0.2), require_labels=False)
    held_out = {normalised_text(t) for t in list(splits.validation["text"]) + list(splits.test["text"])}
    unl = set(splits.unlabeled["text"].map(normalised_text))
    assert held_out and not held_out & unl
    assert len(splits.unlabeled) >= len(full) - len(held_out)
    with pytest.raises(RecipeError, match="data.unlabeled.*packaged:english_text"):
        DataConfig(train=str(path), unlabeled="packaged:wikipedia")
    # data.unlabeled_sources: in-domain text only, still without the held-out texts
    only = load_splits(DataConfig(train=str(path), unlabeled="packaged:english_text", test_fraction=0.3,
                                  validation_fraction=0.2, unlabeled_sources=["hamlet", "tweet_snippets"]),
                       require_labels=False).unlabeled
    expected = full[full["domain"].isin(["hamlet", "tweet_snippets"])]
    assert set(only["text"]) <= set(expected["text"])
    assert len(expected) - len(held_out) <= len(only) <= len(expected)
    assert not held_out & set(only["text"].map(normalised_text))
    with pytest.raises(RecipeError, match=r"data.unlabeled_sources: \['imdb'\].*rotten_tomatoes"):
        DataConfig(train=str(path), unlabeled="packaged:english_text", unlabeled_sources=["imdb"])
    with pytest.raises(RecipeError, match="data.unlabeled_sources.*set data.unlabeled: packaged:english"):
        DataConfig(train=str(path), unlabeled="more.csv", unlabeled_sources=["hamlet"])
