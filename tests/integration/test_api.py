"""The object-level API and teacher/student pairs with different tokenizers."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertTokenizerFast

import distill
from conftest import NEGATIVE, NEUTRAL, POSITIVE, make_bert, make_sentiment_rows, tiny_recipe
from distill.cli.main import main


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory):
    """Same words, different ids and an extra token: a student tokenizer unlike the teacher's."""
    words = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "extra"]
             + list(reversed(POSITIVE + NEGATIVE + NEUTRAL)))
    path = tmp_path_factory.mktemp("tok2")
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)
    tok.save_pretrained(path)
    return tok, path


def test_distill_from_models_online_and_from_store(tmp_path, tiny_classifier, store_root):
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_classifier)
    tok = AutoTokenizer.from_pretrained(tiny_classifier)
    data = pd.DataFrame(make_sentiment_rows(64, seed=5))
    keys = []
    for store in (None, {"dtype": "float32"}):
        from distill.students import student_from_teacher

        student = student_from_teacher(teacher, [0, 3])
        result = distill.distill_from_models(
            teacher, student, data, student_tokenizer=tok, eval_data=data.head(16), store=store,
            losses=[{"name": "kd", "temperature": 2.0}], train={"epochs": 1, "batch_size": 16},
            output_dir=str(tmp_path / "api"))
        assert result.student is student
        assert set(result.metrics) == {"teacher", "student"}
        keys.append(result.store_key)
    assert keys[0] is None and keys[1] is not None
    assert any(store_root.glob(f"{keys[1]}/manifest.json"))


def test_api_rejects_label_mismatch(tiny_classifier):
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_classifier)
    student = AutoModelForSequenceClassification.from_pretrained(tiny_classifier, num_labels=3,
                                                                 ignore_mismatched_sizes=True)
    with pytest.raises(ValueError, match="student has 3 labels, teacher 2"):
        distill.distill_from_models(teacher, student, pd.DataFrame(make_sentiment_rows(8)),
                                    student_tokenizer=AutoTokenizer.from_pretrained(tiny_classifier))


@pytest.mark.parametrize("store", [True, False])
def test_student_with_its_own_tokenizer(tmp_path, tiny_classifier, sentiment_csv, other_tokenizer, store):
    tok, tok_path = other_tokenizer
    student_dir = make_bert(tmp_path / "student", tok, layers=2, hidden=16, heads=2, seed=2)
    recipe = tiny_recipe(tmp_path, tiny_classifier, sentiment_csv,
                         student={"model": str(student_dir), "from_teacher": False, "layers": None},
                         store={"enabled": store, "dir": str(tmp_path / "stores")},
                         losses=[{"name": "kd", "weight": 0.5}, {"name": "ce", "weight": 0.5},
                                 {"name": "hidden", "weight": 0.1, "pooling": "mean", "layer_map": "last"}],
                         eval={"baseline": False, "latency_batch_sizes": [1], "latency_repeats": 1})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path)]) == 0
    out = AutoTokenizer.from_pretrained(tmp_path / "run" / "student")
    assert out.get_vocab() == tok.get_vocab()  # the student keeps its own tokenizer


def test_token_level_hidden_loss_with_different_tokenizers_fails_early(
    tmp_path, tiny_classifier, sentiment_csv, other_tokenizer, capsys
):
    tok, _ = other_tokenizer
    student_dir = make_bert(tmp_path / "student", tok, layers=2, hidden=16, heads=2, seed=2)
    recipe = tiny_recipe(tmp_path, tiny_classifier, sentiment_csv,
                         student={"model": str(student_dir), "from_teacher": False, "layers": None},
                         losses=[{"name": "hidden"}])
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path)]) == 2
    assert "different tokenizers; set pooling: mean" in capsys.readouterr().err


def test_training_from_an_fp32_store_equals_the_online_teacher(tmp_path, tiny_classifier, store_root):
    """Through the trainer (shuffled batches, example_index lookups, padding): a dense fp32 store gives the
    same student as running the teacher every step."""
    import torch

    from distill.students import student_from_teacher

    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_classifier)
    tok = AutoTokenizer.from_pretrained(tiny_classifier)
    data = pd.DataFrame(make_sentiment_rows(48, seed=9))
    students = []
    for store in (None, {"dtype": "float32"}):
        torch.manual_seed(0)
        student = student_from_teacher(teacher, [1, 2])
        distill.distill_from_models(
            teacher, student, data, student_tokenizer=tok, store=store,
            losses=[{"name": "kd", "temperature": 2.0, "weight": 0.7}, {"name": "ce", "weight": 0.3}],
            train={"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "save_steps": 1000},
            output_dir=str(tmp_path / ("store" if store else "online")))
        students.append(student.state_dict())
    moved = 0
    for k, v in students[0].items():
        torch.testing.assert_close(students[1][k], v, atol=1e-6, rtol=1e-5)
        moved += 1
    assert moved
