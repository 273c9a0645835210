"""Data: sources -> labelled/unlabelled splits -> per-model tokenisation -> collation."""

from distill.data.collator import DistillCollator
from distill.data.splits import TextSplits, load_splits
from distill.data.tokenize import TEACHER_PREFIX, same_tokenizer, to_dataset

__all__ = ["DistillCollator", "TextSplits", "load_splits", "to_dataset", "same_tokenizer", "TEACHER_PREFIX"]
