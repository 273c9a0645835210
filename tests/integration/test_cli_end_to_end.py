"""End to end through the ``distill`` command on tiny random models: fine-tune a teacher, build the store,
distil, train the no-KD baseline, evaluate, export, reload; then interrupt-and-resume behaviour."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from conftest import tiny_recipe
from distill.cli.main import main


def write_recipe(path, recipe):
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_encoder, sentiment_csv):
    tmp = tmp_path_factory.mktemp("e2e")
    recipe = tiny_recipe(tmp, tiny_encoder, sentiment_csv,
                         teacher={"model": str(tiny_encoder), "finetune": {"epochs": 3, "learning_rate": 3e-3,
                                                                           "batch_size": 16}},
                         export={"onnx": True})
    path = write_recipe(tmp / "recipe.yaml", recipe)
    assert main(["run", path]) == 0
    return tmp, recipe, path


def test_report_holds_three_models(finished_run):
    tmp, recipe, _ = finished_run
    report = json.loads((tmp / "run" / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "student_kd", "student_no_kd"}
    for m in report["models"].values():
        for key in ("accuracy", "macro_f1", "parameters", "size_mb", "latency_ms_b1", "latency_ms_b4"):
            assert key in m
    assert report["models"]["student_kd"]["parameters"] < report["models"]["teacher"]["parameters"]
    assert 0 <= report["models"]["student_kd"]["teacher_agreement"] <= 1
    assert report["store"]["key"] and report["summary"]["size_ratio"] > 1
    assert any("loss/kd" in h for h in report["training"]["student"]["log_history"])


def test_exported_student_reloads_with_transformers(finished_run):
    from transformers import AutoModelForSequenceClassification, pipeline

    tmp, _, _ = finished_run
    out = tmp / "run" / "student"
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    clf = pipeline("text-classification", model=str(out))
    assert clf("a good film")[0]["label"] in {"negative", "positive"}
    card = (out / "README.md").read_text()
    assert "Hinton" in card and "student (distilled)" in card
    assert (out / "recipe.yaml").exists() and (out / "model.onnx").exists()


def test_onnx_matches_pytorch(finished_run):
    ort = pytest.importorskip("onnxruntime")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = finished_run[0] / "run" / "student"
    tok = AutoTokenizer.from_pretrained(out)
    enc = tok(["a good film", "the plot was dull and flat"], padding=True, return_tensors="np")
    sess = ort.InferenceSession(str(out / "model.onnx"))
    got = sess.run(None, {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})[0]
    want = AutoModelForSequenceClassification.from_pretrained(out)(
        input_ids=torch.tensor(enc["input_ids"]), attention_mask=torch.tensor(enc["attention_mask"])).logits
    assert abs(got - want.detach().numpy()).max() < 1e-4


def test_rerun_reuses_every_finished_stage(finished_run, capsys):
    tmp, recipe, path = finished_run
    assert main(["run", path]) == 0
    out = capsys.readouterr().out
    assert "reusing the fine-tuned teacher" in out
    assert "teacher outputs found in the store" in out
    assert "student: already trained" in out and "student_no_kd: already trained" in out


def test_bad_recipe_fails_fast_with_exit_2(tmp_path, tiny_classifier, sentiment_csv, capsys):
    recipe = tiny_recipe(tmp_path, tiny_classifier, sentiment_csv,
                         student={"from_teacher": True, "layers": [0, 9]})
    assert main(["run", write_recipe(tmp_path / "r.yaml", recipe)]) == 2
    assert "student.layers: [9] out of range; the teacher has 4 layers" in capsys.readouterr().err


def test_teacher_must_be_a_classifier(tmp_path, tiny_encoder, sentiment_csv, capsys):
    recipe = tiny_recipe(tmp_path, tiny_encoder, sentiment_csv)
    assert main(["run", write_recipe(tmp_path / "r.yaml", recipe)]) == 2
    assert "not a sequence classifier" in capsys.readouterr().err


def test_label_mismatch_with_teacher(tmp_path, tiny_classifier, sentiment_csv, capsys):
    import pandas as pd

    df = pd.read_csv(sentiment_csv)
    df["label"] = df["label"].map({"positive": "pos", "negative": "neg"})
    df.to_csv(tmp_path / "other.csv", index=False)
    recipe = tiny_recipe(tmp_path, tiny_classifier, tmp_path / "other.csv")
    assert main(["run", write_recipe(tmp_path / "r.yaml", recipe)]) == 2
    err = capsys.readouterr().err
    assert "label 'neg'" in err or "label 'pos'" in err


def test_cli_help_comes_from_field_docstrings(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "--train.epochs" in out and "Passes over the training data." in out


def test_methods_lists_every_loss(capsys):
    from distill.losses import LOSSES

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in LOSSES)
    assert main(["methods", "kd"]) == 0
    assert "{name: kd, weight: 1.0, temperature: 2.0" in capsys.readouterr().out


def test_cache_info_and_damaged_shard_rebuilt(finished_run, capsys):
    tmp, recipe, path = finished_run
    assert main(["cache", path, "--info"]) == 0
    info = capsys.readouterr().out
    report = json.loads((tmp / "run" / "report.json").read_text())
    key = report["store"]["key"]
    assert key in info
    shard = next((tmp / "stores" / key).glob("shard-*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert main(["cache", path]) == 0
    out = capsys.readouterr().out
    assert shard.name.split(".")[0] in out  # the damaged shard is named
    from distill.store import TeacherStore

    assert TeacherStore.open(tmp / "stores" / key).verify() == []


def test_training_from_store_never_loads_the_teacher(finished_run, monkeypatch, capsys):
    """With the store in place, the teacher is loaded for its test-split evaluation and for the interleaved
    timing at the end, and is out of memory while the student trains: force a retrain of the distilled
    student and check both."""
    import shutil

    from distill.tasks import text_classification as task

    tmp, recipe, path = finished_run
    shutil.rmtree(tmp / "run" / "student")
    calls, held_while_training = [], []
    real = task.load_classifier
    monkeypatch.setattr(task, "load_classifier", lambda *a, **k: calls.append(a) or real(*a, **k))
    train = task.TextClassificationTask.train
    monkeypatch.setattr(task.TextClassificationTask, "train",
                        lambda self, *a, **k: (held_while_training.append(self.teacher.loaded)
                                               or train(self, *a, **k)))
    assert main(["run", path]) == 0
    out = capsys.readouterr().out
    assert "teacher outputs found in the store" in out and "student: training" in out
    assert len(calls) == 2 and held_while_training == [False, False]


def test_label_free_distillation_on_unlabelled_text(tmp_path, tiny_classifier, sentiment_csv):
    """No loss reads labels: the student learns from train + unlabelled text through the store alone,
    which also keeps mean-pooled teacher embeddings when asked."""
    import pandas as pd

    from distill.store import TeacherStore

    df = pd.read_csv(sentiment_csv)
    fresh = df[["text"]].head(60).assign(text=lambda d: d["text"] + " indeed " + d.index.astype(str))
    fresh.to_csv(tmp_path / "unlabelled.csv", index=False)  # new texts: none repeats a test input
    recipe = tiny_recipe(tmp_path, tiny_classifier, sentiment_csv,
                         data={"train": str(sentiment_csv), "unlabeled": str(tmp_path / "unlabelled.csv"),
                               "max_length": 32},
                         losses=[{"name": "kd", "divergence": "symmetric_kl", "temperature": 1.0}],
                         store={"dir": str(tmp_path / "stores"), "topk": 1,
                                "capture": ["logits", "embeddings"]},
                         eval={"baseline": False, "latency_batch_sizes": [1], "latency_repeats": 1})
    # the output directory moved by a top-level override in the --FIELD VALUE form
    assert main(["run", write_recipe(tmp_path / "r.yaml", recipe),
                 "--output_dir", str(tmp_path / "moved")]) == 0
    assert not (tmp_path / "run").exists()
    report = json.loads((tmp_path / "moved" / "report.json").read_text())
    assert report["data"]["unlabeled"] == 60
    store = TeacherStore.open(tmp_path / "stores" / report["store"]["key"])
    assert len(store) == report["data"]["train"] + 60
    out = store.fetch([0, 1])
    assert out.embeddings.shape == (2, 32) and out.logits.k == 1  # top-1 of 2 classes: sparse
    assert report["training"]["student"]["steps"] > 0
