"""Demonstrations (which examples a text is shown), ensemble combination rules and their recipe checks, on
inputs whose right answer is known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from distill.config import RecipeError
from distill.config.teacher import BlackBoxConfig
from distill.teachers.blackbox.annotate import combine_runs
from distill.teachers.blackbox.demos import Demonstrations
from distill.teachers.blackbox.labeler import LabelRun, TeacherLabel
from distill.teachers.blackbox.prompt import PromptTemplate

POOL = ["a good film", "a bad film", "great acting", "awful acting", "fine story", "dull story"]
GOLD = [1, 0, 1, 0, 1, 0]
LABELS = ["negative", "positive"]


def test_balanced_draw_alternates_classes_and_never_shows_a_text_itself():
    demos = Demonstrations(POOL, GOLD, k=4, selection="balanced", seed=3)
    for text in POOL + ["something new"]:
        shots = demos.pick([text])[0]
        assert len(shots) == 4 and text not in [s[0] for s in shots]
        assert sorted(label for _, _, label in shots) == [0, 0, 1, 1]
        assert len({s[0] for s in shots}) == 4  # no example twice


def test_the_draw_depends_on_the_text_and_seed_only():
    demos = Demonstrations(POOL, GOLD, k=3, selection="random", seed=0)
    texts = ["x one", "x two", "x three"]
    forward = demos.pick(texts)
    backward = demos.pick(texts[::-1])[::-1]
    assert forward == backward  # order and batch do not matter: a rerun renders the same prompts
    assert demos.pick(["x one"])[0] == forward[0]
    other = Demonstrations(POOL, GOLD, k=3, selection="random", seed=1)
    assert any(other.pick([t])[0] != f for t, f in zip(texts, forward))


def test_large_pools_duplicates_and_an_exhausted_class():
    texts = [f"review number {i}" for i in range(500)] + ["review number 7"]  # a duplicate of row 7
    gold = [i % 2 for i in range(500)] + [1]
    for selection in ("balanced", "random"):
        demos = Demonstrations(texts, gold, k=6, selection=selection, seed=0)
        for shots in demos.pick(["review number 7", "review number 8", "new"]):
            shown = [s[0] for s in shots]
            assert len(shots) == 6 and len(set(shown)) == 6
        assert "review number 7" not in [s[0] for s in demos.pick(["review number 7"])[0]]
    # one negative row only: the draw takes it once, then fills up with the other class
    few = Demonstrations(["bad", "good", "fine", "great", "nice"], [0, 1, 1, 1, 1], k=4, seed=2)
    assert sorted(label for _, _, label in few.pick(["something"])[0]) == [0, 1, 1, 1]
    assert sorted(label for _, _, label in few.pick(["bad"])[0]) == [1, 1, 1, 1]


def _bag_of_words(texts):
    vocab = sorted({w for t in POOL + ["good acting", "dull film"] for w in t.split()})
    return np.array([[t.split().count(w) for w in vocab] for t in texts], dtype=float)


def test_nearest_takes_the_closest_labelled_rows_most_similar_last():
    demos = Demonstrations(POOL, GOLD, k=2, selection="nearest", embed=_bag_of_words)
    shots = demos.pick(["good acting"])[0]
    # "great acting" and "awful acting" share one word, "a good film" shares one word of three: ties go
    # by pool order; every chosen one shares a word, the last is the most similar
    sims = {s: float(_bag_of_words([s])[0] @ _bag_of_words(["good acting"])[0]
                     / np.linalg.norm(_bag_of_words([s])[0]) / np.sqrt(2)) for s in POOL}
    chosen = [s[0] for s in shots]
    assert sims[chosen[-1]] == max(sims.values())
    assert all(sims[c] > 0 for c in chosen)
    # a pool text asked about is not its own neighbour
    assert "dull story" not in [s[0] for s in demos.pick(["dull story"])[0]]


def test_shots_are_rendered_as_answered_turns_before_the_text():
    template = PromptTemplate("Text: {text}\nLabel:", system="Labels: {labels}")
    messages = template.render("the query", LABELS, shots=[("a bad film", None, 0), ("a good film", None, 1)])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[1]["content"] == "Text: a bad film\nLabel:" and messages[2]["content"] == "negative"
    assert messages[4]["content"] == "positive" and messages[-1]["content"] == "Text: the query\nLabel:"


def _run(items):
    return {"train": LabelRun(LABELS, items)}


def _item(label, probs=None):
    return TeacherLabel("labelled", label, probs, answer=LABELS[label])


def test_mean_is_the_weighted_mean_of_distributions():
    a = _run([_item(1, [0.2, 0.8]), _item(0, [0.9, 0.1])])
    b = _run([_item(0, [0.7, 0.3]), _item(0)])  # no soft labels: one-hot of the answer
    out = combine_runs([("a", 1.0, a), ("b", 3.0, b)], LABELS, "mean")["train"]
    np.testing.assert_allclose(out.items[0].probs, [(0.2 + 3 * 0.7) / 4, (0.8 + 3 * 0.3) / 4])
    np.testing.assert_allclose(out.items[1].probs, [(0.9 + 3 * 1.0) / 4, (0.1 + 0.0) / 4])
    assert [item.label for item in out.items] == [0, 0]
    assert out.stats["labelled"] == 2 and out.stats["combine"] == "mean"


def test_vote_shares_and_a_tie_goes_to_the_higher_mean_probability():
    a = _run([_item(1, [0.45, 0.55]), _item(1, [0.1, 0.9])])
    b = _run([_item(0, [0.6, 0.4]), _item(1, [0.3, 0.7])])
    out = combine_runs([("a", 1.0, a), ("b", 1.0, b)], LABELS, "vote")["train"]
    assert out.items[0].probs == [0.5, 0.5] and out.items[0].label == 0  # mean prob of 0: 0.525 > 0.475
    assert out.items[1].probs == [0.0, 1.0] and out.items[1].label == 1
    weighted = combine_runs([("a", 2.0, a), ("b", 1.0, b)], LABELS, "vote")["train"]
    assert weighted.items[0].label == 1
    np.testing.assert_allclose(weighted.items[0].probs, [1 / 3, 2 / 3])


def test_only_members_that_answered_take_part():
    a = _run([TeacherLabel("unparseable", answer="hmm", reason="no label"),
              TeacherLabel("failed", reason="500")])
    b = _run([_item(1, [0.3, 0.7]), TeacherLabel("not_labelled", reason="budget")])
    out = combine_runs([("a", 1.0, a), ("b", 1.0, b)], LABELS, "mean")["train"]
    assert out.items[0].label == 1 and out.items[0].probs == [0.3, 0.7]
    assert out.items[1].status == "failed" and out.items[1].label is None
    assert out.stats["labelled"] == 1 and out.stats["failed"] == 1


BASE = {"base_url": "http://127.0.0.1:9/v1", "model": "m"}


def test_members_inherit_the_section_and_override_their_fields():
    cfg = BlackBoxConfig(**BASE, soft_labels=True, ensemble=[
        {"name": "plain"}, {"name": "strict", "prompt": "Strictly: {text}", "weight": 2, "demonstrations": 3},
        {"local_model": "packaged:smollm2-135m-instruct"}])
    (n0, w0, m0), (n1, w1, m1), (n2, _, m2) = cfg.members()
    assert (n0, w0, m0.prompt, m0.soft_labels) == ("plain", 1.0, cfg.prompt, True)
    assert (n1, w1, m1.prompt, m1.demonstrations) == ("strict", 2.0, "Strictly: {text}", 3)
    assert n2 == "member2" and m2.local_model and not m2.base_url and m2.ensemble == []


@pytest.mark.parametrize("fields, named", [
    ({"ensemble": [{"prompt": "x {text}"}]}, "teacher.blackbox.ensemble"),
    ({"ensemble": [{"promt": "x"}, {}]}, "teacher.blackbox.ensemble.0"),
    ({"ensemble": [{"weight": 0}, {}]}, "teacher.blackbox.ensemble.0.weight"),
    ({"ensemble": [{"prompt": "no placeholder"}, {}]}, "teacher.blackbox.ensemble.0"),
    ({"ensemble": [{"name": "a"}, {"name": "a"}]}, "teacher.blackbox.ensemble.1.name"),
    ({"min_confidence": 0.6}, "teacher.blackbox.min_confidence"),
    ({"min_confidence": 1.0, "soft_labels": True}, "teacher.blackbox.min_confidence"),
    ({"demonstrations": -1}, "teacher.blackbox.demonstrations"),
])
def test_bad_ensemble_and_abstention_fields_are_named(fields, named):
    with pytest.raises(RecipeError) as err:
        BlackBoxConfig(**BASE, **fields)
    assert str(err.value).startswith(named)
