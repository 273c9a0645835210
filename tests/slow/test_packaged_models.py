"""Slow tests on the real models and data shipped in PyPI packages (run with `pytest -m slow`)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_packaged_movie_snippets_and_benchmark_split():
    from distill.config import DataConfig
    from distill.data import load_splits
    from distill.packaged import load_packaged_data

    df = load_packaged_data("movie_snippets")
    assert len(df) == 10_568  # score-0 rows dropped (ASSETS.md)
    s = load_splits(DataConfig(source="packaged", name="movie_snippets"))
    assert len(s.test) == 2_114 and len(s.train) + len(s.validation) == 8_454


def test_packaged_models_resolve_offline():
    from transformers import AutoConfig

    from distill.packaged import resolve_model

    mini = AutoConfig.from_pretrained(resolve_model("packaged:all-MiniLM-L6-v2"))
    mpnet = AutoConfig.from_pretrained(resolve_model("packaged:all-mpnet-base-v2"))
    assert (mini.num_hidden_layers, mini.hidden_size) == (6, 384)
    assert (mpnet.num_hidden_layers, mpnet.hidden_size) == (12, 768)


def test_short_real_distillation(tmp_path, store_root):
    """The demo recipe, cut down: fine-tune MiniLM on 256 snippets, distil 2 of its layers, reload."""
    from transformers import pipeline

    from distill.cli.demo import demo_recipe_path
    from distill.config import load_recipe
    from distill.runner import run

    recipe = load_recipe(demo_recipe_path(), [
        f"output_dir={tmp_path / 'run'}", "data.max_train_examples=256", "train.epochs=1",
        "eval.latency_repeats=2", "eval.latency_min_seconds=0", "eval.latency_precision=0",
        "eval.latency_batch_sizes=[1]",
    ])
    report = run(recipe)
    assert set(report["models"]) == {"teacher", "student_kd", "student_no_kd"}
    assert report["models"]["student_kd"]["parameters"] < report["models"]["teacher"]["parameters"]
    clf = pipeline("text-classification", model=str(tmp_path / "run" / "student"))
    assert clf("A warm, funny and moving film.")[0]["label"] in {"positive", "negative"}
    assert json.loads((tmp_path / "run" / "report.json").read_text())["data"]["test"] == 2_114


def test_short_real_embedding_distillation(tmp_path, store_root):
    """`distill demo embeddings`, cut down: all-MiniLM-L6-v2 from mpnet on 256 snippets + 256 other sentences;
    distillation moves the student towards the teacher, and the export encodes like MiniLM (384-d, unit
    length)."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from distill.cli.demo import demo_recipe_path
    from distill.config import load_recipe
    from distill.runner import run

    recipe = load_recipe(demo_recipe_path("embeddings"), [
        f"output_dir={tmp_path / 'run'}", "data.max_train_examples=256", "data.max_unlabeled_examples=256",
        "data.test_fraction=0.03", "train.epochs=1", "eval.probe_sets=[tweet_snippets]",
        "eval.probe_rows=200", "eval.agreement_pairs=2000", "eval.throughput_sentences=64",
    ])
    report = run(recipe)
    assert set(report["models"]) == {"teacher", "student_kd", "student_untrained"}
    models = report["models"]  # 16 steps from a pre-trained MiniLM: closer to the teacher than it started
    assert models["student_kd"]["spearman"] > models["student_untrained"]["spearman"]
    vecs = SentenceTransformer(str(tmp_path / "run" / "student"), device="cpu").encode(["a moving film"])
    assert vecs.shape == (1, 384) and abs(float(np.linalg.norm(vecs)) - 1.0) < 1e-4
