"""Tokenise each example once per model: teacher and student may use different tokenizers, and each
gets its own input ids from the same text. Batched ``datasets.map`` over an in-memory table (fast:
tokenising the whole movie-snippet set takes about a second, so no on-disk cache is kept)."""

from __future__ import annotations

import datasets
import pandas as pd

TEACHER_PREFIX = "teacher_"
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def same_tokenizer(a, b) -> bool:
    if a is b:
        return True
    try:
        return a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    except AttributeError:
        return a.get_vocab() == b.get_vocab() and type(a) is type(b)


def to_dataset(
    df: pd.DataFrame,
    student_tokenizer,
    teacher_tokenizer=None,
    max_length: int = 128,
    start_index: int = 0,
    student_special_tokens: bool = True,
) -> datasets.Dataset:
    """Build a tokenised dataset with ``input_ids`` etc. for the student, ``teacher_input_ids`` etc. for a
    teacher with a different tokenizer, ``labels`` (-100 = unlabelled) and ``example_index`` (the row's
    position in the teacher-output store)."""
    ds = datasets.Dataset.from_pandas(df.reset_index(drop=True), preserve_index=False)
    ds = ds.add_column("example_index", list(range(start_index, start_index + len(ds))))
    has_pair = "text_pair" in df.columns

    def encode(batch, tok, prefix, special=True):
        enc = tok(
            batch["text"],
            batch["text_pair"] if has_pair else None,
            truncation=True,
            max_length=max_length,
            add_special_tokens=special,  # False for static students: they embed the words only
        )
        return {prefix + k: v for k, v in enc.items() if k in MODEL_INPUTS}

    ds = ds.map(lambda b: encode(b, student_tokenizer, "", student_special_tokens), batched=True,
                desc="tokenising (student)")
    if teacher_tokenizer is not None:
        ds = ds.map(lambda b: encode(b, teacher_tokenizer, TEACHER_PREFIX), batched=True,
                    desc="tokenising (teacher)")
    ds = ds.map(lambda b: {"labels": [lab if lab >= 0 else -100 for lab in b["label"]]}, batched=True)
    drop = [c for c in ("text", "text_pair", "label") if c in ds.column_names]
    return ds.remove_columns(drop)
