"""task: image-classification end to end on scikit-learn's 8x8 digits, in seconds: the toolkit trains a CNN
teacher, builds the augmented-view (TinyViT) store, distils a smaller CNN from it, trains the no-KD baseline
and a data-free student, and writes the three-way report; a second run reuses the teacher and the store."""

from __future__ import annotations

import json

import pytest
import torch

from distill.config import RecipeError, recipe_from_dict
from distill.runner import run
from distill.tasks import task_for
from distill.tasks.image_classification import ImageClassificationTask


def _recipe(tmp_path, **over):
    data = {
        "task": "image-classification",
        "teacher": {"model": "packaged:cnn-small",
                    "finetune": {"epochs": 8, "learning_rate": 0.005, "batch_size": 32}},
        "student": {"model": "packaged:cnn-tiny"},
        "data": {"source": "packaged", "name": "digits", "max_train_examples": 400},
        "losses": [{"name": "kd", "weight": 0.7, "temperature": 4.0}, {"name": "ce", "weight": 0.3}],
        "store": {"topk": 3, "dir": str(tmp_path / "stores")},
        "vision": {"augment": {"pad": 1}, "datafree": {"num_images": 64, "batch_size": 32, "steps": 5,
                                                             "epochs": 3}},
        "train": {"epochs": 3, "batch_size": 32, "learning_rate": 0.005},
        "eval": {"latency_batch_sizes": [1], "latency_repeats": 2, "latency_min_seconds": 0,
                 "latency_precision": 0},
        "output_dir": str(tmp_path / "run"),
    }
    data.update(over)
    return recipe_from_dict(data)


def test_digits_end_to_end_with_store_and_datafree(tmp_path):
    recipe = _recipe(tmp_path)
    assert type(task_for(recipe)) is ImageClassificationTask
    report = run(recipe)
    models = report["models"]
    assert set(models) == {"teacher", "student_kd", "student_no_kd", "student_datafree"}
    assert models["teacher"]["accuracy"] > 0.5  # 10 classes: chance is 0.1
    for role in models:
        assert 0 <= models[role]["accuracy"] <= 1 and models[role]["latency_ms_b1"] > 0
    assert models["teacher"]["parameters"] > models["student_kd"]["parameters"]
    store = report["store"]
    assert store["epochs"] == 3 and store["k"] == 3
    assert store["payload_bytes_per_image_per_epoch"] == 4 + 3 * 3
    on_disk = json.loads((tmp_path / "run" / "report.json").read_text())
    assert on_disk["summary"]["kd_gain_accuracy"] == pytest.approx(
        models["student_kd"]["accuracy"] - models["student_no_kd"]["accuracy"])
    assert (tmp_path / "run" / "student" / "model.safetensors").exists()
    card = (tmp_path / "run" / "student" / "README.md").read_text()  # image runs write a model card too
    assert "pipeline_tag: image-classification" in card and "load_image_model" in card
    assert "Is the difference real?" in card and "student (distilled)" in card
    html = (tmp_path / "run" / "report.html").read_text()
    for title in ("teacher", "student (distilled)", "student (no KD)", "student (data-free)"):
        assert title in html
    assert "Confusion matrices" in html and "Training loss" in html
    assert not list((tmp_path / "run").glob("checkpoints/*/*.pt"))  # removed once the results are saved

    # a second run finds the trained teacher and the finished store
    again = run(_recipe(tmp_path, vision={"augment": {"pad": 1}}))
    assert again["store"]["key"] == store["key"]
    assert again["models"]["teacher"]["accuracy"] == models["teacher"]["accuracy"]


def test_feature_losses_run_with_an_online_teacher(tmp_path):
    report = run(_recipe(tmp_path, losses=[{"name": "fitnet",
                                            "layer_map": [["stage2", "stage2"], ["stage3", "stage3"]]},
                                           {"name": "at", "weight": 100.0}, {"name": "dkd"}, {"name": "ce"}],
                         vision={"augment": {"pad": 0}}, eval={"baseline": False, "latency_batch_sizes": [1],
                                                              "latency_repeats": 1}))
    assert "store" not in report and report["models"]["student_kd"]["accuracy"] > 0


def test_text_sources_and_vision_sections_are_rejected(tmp_path):
    with pytest.raises(RecipeError, match="data.source"):
        _recipe(tmp_path, data={"source": "files", "train": "x.csv"})
    with pytest.raises(RecipeError, match="vision"):
        recipe_from_dict({"teacher": {"model": "m"}, "student": {"model": "s"}, "data": {"train": "x.csv"},
                          "vision": {}})


class Interrupted(Exception):
    pass


def test_student_stage_resumes_after_an_interruption_to_identical_weights(tmp_path, monkeypatch):
    import distill.tasks.image_classification as vision_pipeline
    from distill.students.vision import load_image_model

    over = {"vision": {"augment": {"pad": 1}}, "eval": {"baseline": False, "latency_batch_sizes": [1],
                                                        "latency_repeats": 1}}
    run(_recipe(tmp_path, **over))  # uninterrupted (also trains the teacher and the store, shared below)
    straight = load_image_model(tmp_path / "run" / "student").net.state_dict()

    real = vision_pipeline.train_image_model

    def stop_student_after_one_epoch(*args, **kwargs):
        if kwargs.get("checkpoint") is not None and kwargs["checkpoint"].parent.name == "student":
            def stop(done):
                if done == 1:
                    raise Interrupted
            kwargs["on_epoch_end"] = stop
        return real(*args, **kwargs)

    resumed_out = str(tmp_path / "resumed")
    monkeypatch.setattr(vision_pipeline, "train_image_model", stop_student_after_one_epoch)
    with pytest.raises(Interrupted):
        run(_recipe(tmp_path, output_dir=resumed_out, **over))
    assert len(list((tmp_path / "resumed" / "checkpoints" / "student").glob("*.pt"))) == 1
    monkeypatch.setattr(vision_pipeline, "train_image_model", real)
    report = run(_recipe(tmp_path, output_dir=resumed_out, **over))
    assert report["training"]["student"]["resumed_from_epoch"] == 1
    again = load_image_model(tmp_path / "resumed" / "student").net.state_dict()
    assert straight.keys() == again.keys()
    for name in straight:
        assert torch.equal(straight[name], again[name]), name
    assert not list((tmp_path / "resumed").glob("checkpoints/*/*.pt"))


def test_few_labels_teacher_and_baseline_see_the_labelled_images_with_the_same_step_budget(tmp_path):
    recipe = _recipe(tmp_path, data={"source": "packaged", "name": "digits", "max_train_examples": 400,
                                     "labeled_fraction": 0.25},
                     vision={"augment": {"pad": 1}})
    report = run(recipe)
    data, training = report["data"], report["training"]
    labelled = data["train"]
    assert data["train"] + data["unlabeled"] == 400 and 90 <= labelled <= 110  # stratified 25% keep labels
    assert training["student"]["rows"] == 400  # the teacher labels every training image for the student
    assert training["student_no_kd"]["rows"] == labelled  # the baseline: the labelled images only
    # same budget: the student's 3 epochs x 13 batches; the baseline gets the whole epochs over its images
    # that reach as many steps (about 10 epochs of 4 batches), not 3 epochs of 4 batches
    assert training["student"]["steps"] == 3 * 13
    per_epoch = -(-labelled // 32)
    assert training["student_no_kd"]["steps"] == -(-39 // per_epoch) * per_epoch >= 39
