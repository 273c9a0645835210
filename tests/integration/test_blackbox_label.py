"""`distill label` against a real chat-completions server on 127.0.0.1: labels and statistics on disk,
the API key nowhere, and a SIGKILLed run that resumes with no answer lost or asked twice."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "blackbox"))
from _chat_server import SECRET, FakeChatServer, input_text

from conftest import make_sentiment_rows
from distill.cli.main import main
from distill.config import DEFAULT_BLACKBOX_PROMPT as DEFAULT_PROMPT

ENV = "DISTILL_TEST_BLACKBOX_KEY"


def write_recipe(tmp_path: Path, url: str, rows: int, **blackbox) -> Path:
    data = tmp_path / "reviews.csv"
    pd.DataFrame(make_sentiment_rows(rows, seed=3)).to_csv(data, index=False)
    recipe = {
        "output_dir": str(tmp_path / "run"),
        "teacher": {"blackbox": {"base_url": url, "model": "fake-llm", "api_key_env": ENV,
                                 "max_concurrency": 2, "timeout": 5, "max_retries": 2, **blackbox}},
        "student": {"model": "unused/student"},
        "data": {"train": str(data), "max_length": 32},
        "losses": [{"name": "ce"}],
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def stored_prompts(db_path: Path) -> list[str]:
    with sqlite3.connect(db_path) as db:
        return [json.loads(m)[-1]["content"] for (m,) in db.execute("SELECT messages FROM answers")]


def test_distill_label_writes_labels_and_stats(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(ENV, SECRET)
    with FakeChatServer(api_key=SECRET) as server:
        server.faults.append("429")  # weathered on the way (every fault is tested against the client alone)
        server.retry_after = "0"
        recipe = write_recipe(tmp_path, server.url, 60, soft_labels=True)
        assert main(["label", str(recipe), "--test"]) == 0
    out = tmp_path / "run"
    rows = [json.loads(line) for line in (out / "teacher_labels.jsonl").read_text().splitlines()]
    stats = json.loads((out / "teacher_labels_stats.json").read_text())
    assert {r["split"] for r in rows} == {"train", "test"}
    assert all(r["status"] == "labelled" and r["label"] == r["data_label"] and len(r["probs"]) == 2
               for r in rows)
    train = stats["splits"]["train"]
    assert train["labelled"] == train["texts"] == sum(r["split"] == "train" for r in rows)
    # the teacher's own accuracy
    assert stats["splits"]["test"]["agreement_with_data_labels"]["accuracy"] == 1.0
    assert train["backend"]["retries"] == 1 and stats["store"]["answers"] == len({r["text"] for r in rows})

    printed = "".join(capsys.readouterr())
    assert "labelled" in printed
    files = [p.read_bytes().decode("latin-1") for p in out.iterdir() if p.is_file()]
    assert all(SECRET not in blob for blob in [printed, *files])

    # what the lead wires into `distill run`: the labelled training rows and their target distributions
    from distill.config import load_recipe
    from distill.data import load_splits
    from distill.teachers.blackbox import label_with_blackbox

    r = load_recipe(recipe)
    splits = load_splits(r.data)
    with FakeChatServer(api_key=SECRET) as server:  # a new server: everything comes from the store
        r.teacher.blackbox.base_url = server.url
        labels = label_with_blackbox(r, splits, log=lambda m: None, progress=False)
        assert sum(server.requests.values()) == 0
    frame, probs = labels.training_frame(splits)
    assert len(frame) == len(splits.train) == probs.shape[0] and probs.shape[1] == 2
    assert ((frame["label"] == frame["data_label"]).all()
            and (probs.argmax(1) == frame["label"].to_numpy()).all())


def test_sigkill_mid_run_then_resume_loses_nothing_and_asks_nothing_twice(tmp_path, monkeypatch):
    with FakeChatServer(api_key=SECRET, delay=0.05) as server:
        recipe = write_recipe(tmp_path, server.url, 150)
        env = {**os.environ, ENV: SECRET, "CI": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "distill.cli.main", "label", str(recipe)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120  # the child imports torch and transformers first
        db = tmp_path / "run" / "teacher_responses.sqlite"
        while True:
            # wait for answers *committed* by the child (an answer the server sent may still be in flight,
            # and a machine under load can hold it there for a while): kill it mid-run after ten
            try:
                if db.exists() and len(stored_prompts(db)) >= 10:
                    break
            except sqlite3.OperationalError:  # the child has not created the table yet
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("the labelling child did not get going: "
                            f"{proc.communicate()[0].decode()[-2000:]}")
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        output = proc.communicate()[0].decode()
        assert proc.returncode == -signal.SIGKILL

        kept = stored_prompts(db)  # answers committed before the kill
        asked_before = set(server.requests)
        assert len(kept) >= 10 and set(kept) <= asked_before

        server.reset_counts()
        monkeypatch.setenv(ENV, SECRET)
        assert main(["label", str(recipe)]) == 0
        asked_again = server.requests

    assert not set(kept) & set(asked_again)  # no answered prompt asked twice
    assert all(n == 1 for n in asked_again.values())
    rows = [json.loads(line) for line in (tmp_path / "run" / "teacher_labels.jsonl").read_text().splitlines()]
    assert all(r["status"] == "labelled" for r in rows)  # none lost
    final = stored_prompts(db)
    assert len(final) == len(set(final)) == len({r["text"] for r in rows})
    assert set(final) == set(kept) | set(asked_again)
    assert {input_text(p) for p in final} == {r["text"] for r in rows}
    assert SECRET not in output


def test_distill_run_with_a_blackbox_teacher(tmp_path, monkeypatch, tiny_student):
    """`distill run` end to end with a teacher behind a chat-completions endpoint: it labels the training text
    and the test split, trains the student from the teacher's (soft) labels through the store, trains the
    no-KD baseline on the human labels, and reports the teacher's own accuracy and the answer statistics."""
    monkeypatch.setenv(ENV, SECRET)
    with FakeChatServer(api_key=SECRET) as server:
        recipe = write_recipe(tmp_path, server.url, 80, soft_labels=True)
        r = yaml.safe_load(recipe.read_text())
        r["student"] = {"model": str(tiny_student)}
        r["losses"] = [{"name": "kd", "weight": 0.5, "temperature": 1.0}, {"name": "ce", "weight": 0.5}]
        r["train"] = {"epochs": 1, "batch_size": 16, "learning_rate": 1e-3}
        r["eval"] = {"latency_batch_sizes": [1], "latency_repeats": 1, "latency_min_seconds": 0,
                     "latency_precision": 0}
        r["store"] = {"dir": str(tmp_path / "stores")}
        r["select"] = {"enabled": False}
        recipe.write_text(yaml.safe_dump(r))
        assert main(["run", str(recipe)]) == 0
        asked = sum(server.requests.values())
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "student_kd", "student_no_kd"}
    # the rule-based fake teacher reads the sentiment words
    assert report["models"]["teacher"]["accuracy"] == 1.0
    assert report["models"]["teacher"]["answered_fraction"] == 1.0
    assert report["blackbox"]["splits"]["train"]["labelled"] == report["data"]["train"]
    assert report["store"]["key"] and asked > 0
    assert (tmp_path / "run" / "student" / "config.json").exists()
    blobs = [p.read_bytes().decode("latin-1") for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert all(SECRET not in b for b in blobs)


def _says_positive_unless_sure(prompt: str) -> str:
    """A teacher biased toward 'positive': negative only when the negative words clearly win."""
    from _chat_server import NEGATIVE, POSITIVE

    words = input_text(prompt).lower().split()
    score = sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)
    return "negative" if score <= -2 else "Positive."


@pytest.mark.parametrize("method", ["prior", "contextual"])
def test_calibration_is_fitted_on_stored_answers_and_reported(tmp_path, monkeypatch, method):
    from distill.config import load_recipe
    from distill.data import load_splits
    from distill.teachers.blackbox import label_with_blackbox

    monkeypatch.setenv(ENV, SECRET)
    extra = {"calibration_prior": {"negative": 0.5, "positive": 0.5}} if method == "prior" else {}
    with FakeChatServer(answer=_says_positive_unless_sure, api_key=SECRET) as server:
        recipe = write_recipe(tmp_path, server.url, 80, soft_labels=True, calibration=method, **extra)
        r = load_recipe(recipe)
        splits = load_splits(r.data)
        labels = label_with_blackbox(r, splits, log=lambda m: None, include_test=True, progress=False)
        asked = sum(server.requests.values())
        cf_asked = sum(v for k, v in server.requests.items() if input_text(k) in ("N/A", "", "[MASK]"))
    cal = labels.stats["calibration"]
    assert cal["method"] == method and len(cal["weights"]) == 2
    assert cal["pool_shares_before"][1] > 0.6  # the biased teacher: mostly 'positive'
    # every calibrated answer is a distribution whose arg-max is the label it now gives
    frame, probs = labels.training_frame(splits)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert (probs.argmax(1) == frame["label"].to_numpy()).all()
    if method == "prior":
        assert cal["target"] == [0.5, 0.5] and cal["target_from"] == "calibration_prior"
        assert abs(float(np.mean(probs[:, 1])) - 0.5) < 0.01  # the pool's mean distribution is the target
        assert cf_asked == 0
    else:
        assert cf_asked == 3 and cal["fitted_on"] == 3  # the content-free inputs, through the store
        # the weights make the teacher's answer to "no content" uniform
        from distill.teachers.blackbox.calibrate import Calibration

        uniform = Calibration("contextual", cal["weights"]).apply(np.array([cal["content_free_mean"]]))
        np.testing.assert_allclose(uniform, [[0.5, 0.5]], atol=1e-6)
    for key in ("test_before", "test_after"):
        assert set(cal[key]) >= {"accuracy", "macro_f1", "confusion"}
    if method == "prior":  # two probability levels only: the hard labels may stay (the unit tests rank)
        assert cal["test_after"]["macro_f1"] >= cal["test_before"]["macro_f1"]
    stats = json.loads((tmp_path / "run" / "teacher_labels_stats.json").read_text())
    assert stats["calibration"]["weights"] == cal["weights"]
    # a rerun asks nothing and fits the same weights from the stored answers
    with FakeChatServer(answer=_says_positive_unless_sure, api_key=SECRET) as server:
        r.teacher.blackbox.base_url = server.url
        again = label_with_blackbox(r, load_splits(r.data), log=lambda m: None, include_test=True,
                                    progress=False)
        assert sum(server.requests.values()) == 0
    assert again.stats["calibration"]["weights"] == cal["weights"] and asked > 0
    files = [p.read_bytes().decode("latin-1") for p in (tmp_path / "run").iterdir() if p.is_file()]
    assert all(SECRET not in blob for blob in files)


@pytest.mark.parametrize("keep", [True, False])
def test_few_human_labels_stay_the_hard_labels_of_their_rows(tmp_path, monkeypatch, tiny_student, keep):
    """data.labeled_examples: 20 rows keep their human labels, the teacher labels every row; the distilled
    student's hard labels are the human ones on those 20 (keep_human_labels, the default) and the teacher's
    elsewhere, and its soft targets are the teacher's everywhere."""
    from distill.config import load_recipe
    from distill.tasks import task_for

    monkeypatch.setenv(ENV, SECRET)
    with FakeChatServer(answer=_says_positive_unless_sure, api_key=SECRET) as server:
        path = write_recipe(tmp_path, server.url, 80, soft_labels=True, keep_human_labels=keep)
        recipe = load_recipe(path, [f"student.model={tiny_student}", "data.labeled_examples=20"])
        task = task_for(recipe)
        task.prepare_teacher()
    sp = task.plan.splits
    assert len(sp.train) == 20 and (sp.unlabeled["label"] == -1).all()
    n_train = int(sum(item.label is not None for item in task.answers.runs["train"].items))
    teacher_train = [item.label for item in task.answers.runs["train"].items if item.label is not None]
    gold_train = [y for item, y in zip(task.answers.runs["train"].items, sp.train["label"])
                  if item.label is not None]
    hard = task.frame["label"].tolist()
    assert hard[:n_train] == (gold_train if keep else teacher_train)
    assert gold_train != teacher_train  # the biased teacher disagrees with some human labels
    unl = [item.label for item in task.answers.runs["unlabeled"].items if item.label is not None]
    assert hard[n_train:] == unl
    assert (task.probs.argmax(1) == np.array(teacher_train + unl)).all()  # soft targets: the teacher's
    counts = task.report["blackbox"]["student_hard_labels"]
    assert counts == ({"human": n_train, "teacher": len(unl), "none": 0} if keep
                      else {"human": 0, "teacher": len(hard), "none": 0})


def _strict_or_plain(prompt: str) -> str:
    """Two prompts, two teachers: 'STRICT' prompts answer like the biased teacher, others read the words."""
    from _chat_server import rule_answer

    return _says_positive_unless_sure(prompt) if prompt.startswith("STRICT") else rule_answer(prompt)


def test_demonstrations_are_labelled_rows_in_the_prompt_and_in_the_key(tmp_path, monkeypatch):
    from distill.config import load_recipe
    from distill.data import load_splits
    from distill.teachers.blackbox import label_with_blackbox

    monkeypatch.setenv(ENV, SECRET)
    with FakeChatServer(api_key=SECRET) as server:
        path = write_recipe(tmp_path, server.url, 60, soft_labels=True, demonstrations=2)
        r = load_recipe(path, ["data.labeled_examples=10"])
        splits = load_splits(r.data)
        labels = label_with_blackbox(r, splits, log=lambda m: None, include_test=True, progress=False)
        bodies = list(server.bodies)
    human = dict(zip(splits.train["text"], splits.train["label"]))
    assert labels.stats["demonstrations"] and len(bodies) == labels.stats["store"]["answers"]
    for body in bodies:
        msgs = body["messages"]
        assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
        shown = [input_text(m["content"]) for m in msgs[0:4:2]]
        answers = [m["content"] for m in msgs[1:4:2]]
        assert all(text in human for text in shown)  # only rows with a human label are shown ...
        assert [splits.labels[human[t]] for t in shown] == answers  # ... answered by that label
        assert sorted(answers) == ["negative", "positive"]  # balanced
        assert input_text(msgs[-1]["content"]) not in shown  # never a text as its own example
    # the examples are part of the key: the same recipe asks nothing, another draw asks everything again
    with FakeChatServer(api_key=SECRET) as server:
        r.teacher.blackbox.base_url = server.url
        label_with_blackbox(r, load_splits(r.data), log=lambda m: None, include_test=True, progress=False)
        assert sum(server.requests.values()) == 0
        r.teacher.blackbox.demonstration_seed = 1
        label_with_blackbox(r, load_splits(r.data), log=lambda m: None, include_test=True, progress=False)
        assert sum(server.requests.values()) > 0


@pytest.mark.parametrize("mode", ["drop", "soft_only"])
def test_an_ensemble_of_two_prompts_votes_and_low_agreement_abstains(tmp_path, monkeypatch, tiny_student,
                                                                     mode):
    """Two members (the plain prompt and a 'STRICT' one answered by the biased teacher), combined by vote:
    where they disagree the vote is 50/50, below min_confidence 0.6, so those texts (without a human label)
    are left out (drop) or lose their hard label (soft_only); the report has each member's test accuracy and
    the agreement between them."""
    from distill.config import load_recipe
    from distill.tasks import task_for

    monkeypatch.setenv(ENV, SECRET)
    members = [{"name": "plain"}, {"name": "strict", "prompt": "STRICT " + DEFAULT_PROMPT}]
    with FakeChatServer(answer=_strict_or_plain, api_key=SECRET) as server:
        path = write_recipe(tmp_path, server.url, 80, soft_labels=True, ensemble=members, combine="vote",
                            min_confidence=0.6, abstain=mode)
        recipe = load_recipe(path, [f"student.model={tiny_student}", "data.labeled_examples=20"])
        task = task_for(recipe)
        task.prepare_teacher()
        asked = sum(server.requests.values())
    ens = task.answers.stats["ensemble"]
    assert [m["name"] for m in ens["members"]] == ["plain", "strict"]
    plain, strict = ens["members"]
    assert plain["test"]["accuracy"] == 1.0 and strict["test"]["accuracy"] < 1.0
    agreement = ens["pairwise_agreement"]["plain | strict"]
    assert 0 < agreement < 1
    # where the two disagree, neither label wins the vote outright
    unl = task.answers.runs["unlabeled"]
    split = [i for i, item in enumerate(unl.items) if item.probs == [0.5, 0.5]]
    assert split and len(split) < len(unl.items)
    abst = task.report["blackbox"]["abstention"]
    assert abst["below"] == len(split) and abst["mode"] == mode
    n_train = len(task.plan.splits.train)
    if mode == "drop":
        assert len(task.frame) == n_train + len(unl.items) - len(split)
    else:
        assert len(task.frame) == n_train + len(unl.items)
        assert (task.frame["label"] == -1).sum() == len(split)
        assert task.report["blackbox"]["student_hard_labels"]["none"] == len(split)
    from distill.evaluation.report import verdict_sentences

    said = " ".join(verdict_sentences({"blackbox": task.report["blackbox"]}))
    assert "2 members combined by vote" in said and "plain 1.0000" in said and "plain | strict" in said
    assert f"{len(split)} of {len(task.answers.runs['train'].items) + len(unl.items)}" in said
    # each member asked each text once; a rerun asks nothing
    assert asked == 2 * len({*task.plan.splits.train["text"], *task.plan.splits.unlabeled["text"],
                             *task.plan.splits.test["text"]})
    with FakeChatServer(answer=_strict_or_plain, api_key=SECRET) as server:
        recipe.teacher.blackbox.base_url = server.url
        again = task_for(recipe)
        again.prepare_teacher()
        assert sum(server.requests.values()) == 0
    files = [p.read_bytes().decode("latin-1") for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert all(SECRET not in blob for blob in files)
