"""Turn the recipe's data section into labelled train / validation / test frames plus unlabelled text,
with every column and label checked before any model loads."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from sklearn.model_selection import train_test_split

from distill._dataclass_io import RecipeError
from distill.config import DataConfig
from distill.data.sources import read_hf_disk, read_table


@dataclass
class TextSplits:
    """Normalised data: columns ``text`` (+ ``text_pair``) and integer ``label`` (-1 for unlabelled)."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    unlabeled: pd.DataFrame | None
    labels: list[str]

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def with_unlabeled(self) -> pd.DataFrame:
        """The training rows followed by the unlabelled ones (label -1): what distillation trains on."""
        frames = [self.train]
        if self.unlabeled is not None and len(self.unlabeled):
            frames.append(self.unlabeled)
        return pd.concat(frames, ignore_index=True)


def _check_columns(df: pd.DataFrame, cfg: DataConfig, field: str, need_label: bool) -> None:
    cols = [cfg.text_column] + ([cfg.text_pair_column] if cfg.text_pair_column else [])
    if need_label:
        cols.append(cfg.label_column)
    for col in cols:
        if col not in df.columns:
            which = "data.label_column" if col == cfg.label_column else "data.text_column"
            raise RecipeError(
                f"{field}: column {col!r} not found (set by {which}); "
                f"columns present: {', '.join(map(str, df.columns))}"
            )


def _normalise(df: pd.DataFrame, cfg: DataConfig, label_ids: dict[str, int] | None,
               field: str) -> pd.DataFrame:
    out = pd.DataFrame({"text": df[cfg.text_column].fillna("").astype(str).values})
    if cfg.text_pair_column:
        out["text_pair"] = df[cfg.text_pair_column].fillna("").astype(str).values
    if label_ids is None:
        out["label"] = -1
        return out
    raw = df[cfg.label_column]
    ids = []
    for value in raw:
        key = str(value)
        if key in label_ids:
            ids.append(label_ids[key])
        elif isinstance(value, (int, float)) and not pd.isna(value) and 0 <= int(value) < len(label_ids) \
                and all(not k.isdigit() for k in label_ids):
            ids.append(int(value))  # integer ids against named labels
        else:
            raise RecipeError(
                f"{field}: label {value!r} in column {cfg.label_column!r} is not one of the labels "
                f"{list(label_ids)}; fix the data or set data.labels to the full label list"
            )
    out["label"] = ids
    return out


def _hide_labels(train: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``train`` into the rows that keep their labels (a stratified ``fraction``, at least one per
    class) and the rest, whose labels are dropped (-1)."""
    n_keep = max(int(round(fraction * len(train))), train["label"].nunique())
    if n_keep >= len(train):
        return train, train.iloc[:0].assign(label=-1)
    keep, hidden = train_test_split(train, train_size=n_keep, random_state=seed, stratify=train["label"])
    return keep, hidden.assign(label=-1)


def _label_names(values: pd.Series) -> list[str]:
    uniq = sorted({str(v) for v in values.dropna()})
    if all(u.lstrip("-").isdigit() for u in uniq):
        return [str(i) for i in sorted(int(u) for u in uniq)]
    return uniq


def load_splits(cfg: DataConfig, labels: list[str] | None = None, require_labels: bool = True) -> TextSplits:
    """Read and split the data. ``labels`` (class names in id order) comes from the recipe or the teacher.

    With ``require_labels=False`` (sentence-embedding runs) a train file without the label column is plain
    text: every row is unlabelled (label -1), the splits are random with the fixed seed and ``labels`` is
    empty."""
    frames: dict[str, pd.DataFrame] = {}
    if cfg.source == "packaged":
        from distill.packaged import load_packaged_data

        frames["train"] = load_packaged_data(cfg.name or "")
        text_col, label_col = "text", "label"
        cfg = DataConfig(**{**cfg.__dict__, "text_column": text_col, "label_column": label_col})
    elif cfg.source == "hf_disk":
        extra_unlabeled = []
        for name, df in read_hf_disk(cfg.train or "", "data.train").items():
            if name in ("train", "validation", "test"):
                frames[name] = df
            elif name in ("unsupervised", "unlabeled", "unlabelled"):
                extra_unlabeled.append(df)  # e.g. IMDB's unsupervised split: distillation text
            # any other split (e.g. a second test set) is not used
    else:
        frames["train"] = read_table(cfg.train or "", "data.train")
        if cfg.validation:
            frames["validation"] = read_table(cfg.validation, "data.validation")
        if cfg.test:
            frames["test"] = read_table(cfg.test, "data.test")
    if cfg.source != "hf_disk":
        extra_unlabeled = []
    if not require_labels and cfg.label_column not in frames["train"].columns:
        return _text_only_splits(frames, cfg)
    for name, df in list(frames.items()):
        _check_columns(df, cfg, f"data.{name}", need_label=True)
        # rows labelled -1 or missing (the HF convention for "no label") are unlabelled text, not a class
        lab = df[cfg.label_column]
        nolabel = lab.isna() | lab.astype(str).isin(["-1", "-1.0"])
        if nolabel.any():
            if name == "train":
                extra_unlabeled.append(df[nolabel])
            frames[name] = df[~nolabel]
    if len(frames["train"]) < 4:
        raise RecipeError(f"data.train: only {len(frames['train'])} rows; need at least a handful")

    names = list(cfg.labels or labels or _label_names(frames["train"][cfg.label_column]))
    if len(names) < 2:
        raise RecipeError(f"data: found only the label(s) {names}; classification needs at least two classes")
    label_ids = {n: i for i, n in enumerate(names)}
    norm = {k: _normalise(v, cfg, label_ids, f"data.{k}") for k, v in frames.items()}

    train = norm["train"]
    if "test" not in norm:
        # stratified, fixed seed: every run (and the baseline) sees the same test rows
        train, test = train_test_split(
            train, test_size=cfg.test_fraction, random_state=cfg.split_seed, stratify=train["label"]
        )
        norm["test"] = test
    if "validation" not in norm:
        train, val = train_test_split(
            train, test_size=cfg.validation_fraction, random_state=cfg.split_seed, stratify=train["label"]
        )
        norm["validation"] = val
    if cfg.max_train_examples is not None and len(train) > cfg.max_train_examples:
        train = train.sample(n=cfg.max_train_examples, random_state=cfg.split_seed)

    unlabeled_parts = [_normalise(df, cfg, None, "data.train (unlabelled rows)") for df in extra_unlabeled]
    share = cfg.labeled_share(len(train))
    if share is not None and share < 1:
        train, hidden = _hide_labels(train, share, cfg.split_seed)
        unlabeled_parts.insert(0, hidden)
    if cfg.unlabeled:
        unlabeled_parts.append(read_unlabeled(cfg, [norm["validation"], norm["test"]]))
    unlabeled = None
    if unlabeled_parts:
        unlabeled = pd.concat(unlabeled_parts, ignore_index=True)
        # never distil on the evaluation texts: drop unlabelled rows that repeat a validation or test input
        held_out = set(norm["validation"]["text"]) | set(norm["test"]["text"])
        unlabeled = unlabeled[~unlabeled["text"].isin(held_out)].reset_index(drop=True)
        unlabeled = cap_unlabeled(unlabeled, cfg)
    return TextSplits(
        train=train.reset_index(drop=True),
        validation=norm["validation"].reset_index(drop=True),
        test=norm["test"].reset_index(drop=True),
        unlabeled=unlabeled,
        labels=names,
    )


def _text_only_splits(frames: dict[str, pd.DataFrame], cfg: DataConfig) -> TextSplits:
    """Unlabelled text: random fixed-seed validation / test splits, no classes."""
    for name, df in frames.items():
        _check_columns(df, cfg, f"data.{name}", need_label=False)
    norm = {k: _normalise(v, cfg, None, f"data.{k}") for k, v in frames.items()}
    train = norm["train"]
    if len(train) < 4:
        raise RecipeError(f"data.train: only {len(train)} rows; need at least a handful")
    if "test" not in norm:
        train, norm["test"] = train_test_split(train, test_size=cfg.test_fraction,
                                               random_state=cfg.split_seed)
    if "validation" not in norm:
        train, norm["validation"] = train_test_split(train, test_size=cfg.validation_fraction,
                                                     random_state=cfg.split_seed)
    if cfg.max_train_examples is not None and len(train) > cfg.max_train_examples:
        train = train.sample(n=cfg.max_train_examples, random_state=cfg.split_seed)
    unlabeled = None
    if cfg.unlabeled:
        unlabeled = read_unlabeled(cfg, [norm["validation"], norm["test"]])
        held_out = set(norm["validation"]["text"]) | set(norm["test"]["text"])
        unlabeled = unlabeled[~unlabeled["text"].isin(held_out)].reset_index(drop=True)
        unlabeled = cap_unlabeled(unlabeled, cfg)
    return TextSplits(train=train.reset_index(drop=True),
                      validation=norm["validation"].reset_index(drop=True),
                      test=norm["test"].reset_index(drop=True), unlabeled=unlabeled, labels=[])


def cap_unlabeled(unlabeled: pd.DataFrame, cfg: DataConfig) -> pd.DataFrame:
    """``data.max_unlabeled_examples``: a seeded sample of the unlabelled rows, kept in their original order
    (so the store's rows follow the corpus)."""
    n = cfg.max_unlabeled_examples
    if n is None or len(unlabeled) <= n:
        return unlabeled
    return unlabeled.sample(n=n, random_state=cfg.split_seed).sort_index().reset_index(drop=True)


def read_unlabeled(cfg: DataConfig, held_out: list[pd.DataFrame]) -> pd.DataFrame:
    """``data.unlabeled``: a file of text, or ``packaged:NAME`` for a packaged corpus (e.g.
    ``packaged:english_text``, every offline English sentence of the packages), whose rows that match a
    held-out text up to case and punctuation are dropped here (a file's exact repeats are dropped by the
    caller)."""
    if cfg.unlabeled and cfg.unlabeled.startswith("packaged:"):
        from distill.packaged import (
            PACKAGED_CORPORA,
            load_english_text,
            load_packaged_corpus,
            normalised_text,
        )

        name = cfg.unlabeled.split(":", 1)[1]
        if name not in PACKAGED_CORPORA:
            raise RecipeError(f"data.unlabeled: unknown packaged corpus {name!r}; "
                              f"valid: {', '.join('packaged:' + n for n in PACKAGED_CORPORA)}")
        if cfg.text_pair_column:
            raise RecipeError(f"data.unlabeled: {cfg.unlabeled} is single sentences, but "
                              "data.text_pair_column asks for pairs; give a file with both columns")
        exclude = {normalised_text(t) for frame in held_out for t in frame["text"]}
        if name == "english_text":
            raw = load_english_text(exclude)  # leaves the excluded texts out while de-duplicating
            if cfg.unlabeled_sources:
                raw = raw[raw["domain"].isin(cfg.unlabeled_sources)]
        else:
            raw = load_packaged_corpus(name)
            raw = raw[~raw["text"].map(normalised_text).isin(exclude)]
        return pd.DataFrame({"text": raw["text"].astype(str).tolist(), "label": -1})
    raw = read_table(cfg.unlabeled or "", "data.unlabeled")
    _check_columns(raw, cfg, "data.unlabeled", need_label=False)
    return _normalise(raw, cfg, None, "data.unlabeled")
