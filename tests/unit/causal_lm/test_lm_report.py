"""What a causal-LM run tells its user: bits per byte, the verdict (said plainly when distillation made the
student worse), the learning-curve comparison, the packaged corpus, and the recipe checks."""

from __future__ import annotations

import math

import pytest

from distill.config import RecipeError, recipe_from_dict
from distill.evaluation.perplexity import (
    bits_per_byte,
    curve_comparison,
    describe_curve,
    lm_verdict,
    scored_bytes,
)


def test_scored_bytes_count_the_text_of_the_scored_tokens(lm_tokenizer):
    ids = lm_tokenizer("the king sleeps")["input_ids"]
    assert len(ids) == 3
    # the first token is never scored (nothing predicts it): "king sleeps" = 11 bytes
    assert scored_bytes([{"input_ids": ids, "prompt_length": 0}], lm_tokenizer) == [11]
    # prompt tokens are not scored either: only "sleeps"
    assert scored_bytes([{"input_ids": ids, "prompt_length": 2}], lm_tokenizer) == [6]
    assert scored_bytes([{"input_ids": ids[:1], "prompt_length": 0}], lm_tokenizer) == [0]


def test_bits_per_byte_golden():
    # 10 nats over 8 bytes: 10 / (8 ln 2) bits per byte
    assert bits_per_byte(10.0, 8) == pytest.approx(1.8033688011112042, rel=1e-15)
    assert bits_per_byte(1.0, 0) is None


def _report(kd_ppl, no_kd_ppl, diff, p, significant, **extra):
    models = {"teacher": {"perplexity": 90.0, "bits_per_byte": 1.2},
              "student_kd": {"perplexity": kd_ppl, "bits_per_byte": 1.5},
              "student_no_kd": {"perplexity": no_kd_ppl, "bits_per_byte": 1.4}}
    cmp = {"difference": diff, "ci95": [diff - 0.1, diff + 0.1], "perplexity_ratio": math.exp(diff),
           "perplexity_ratio_ci95": [math.exp(diff - 0.1), math.exp(diff + 0.1)], "p": p,
           "significant": significant, "chunks": 39, "bits_per_byte_difference": 0.1,
           "bits_per_byte_ci95": [0.05, 0.15]}
    return {"models": models, "significance": {"student_kd_vs_student_no_kd": cmp},
            "recipe": {"output_dir": "runs/lm"}, **extra}


def test_verdict_says_plainly_when_distillation_made_the_student_worse():
    v = lm_verdict(_report(443.7, 375.4, 0.17, 0.001, True))
    assert v[0] == ("Held-out perplexity 443.70, 1.5000 bits per byte for the distilled student, "
                    "perplexity 375.40, 1.4000 bits per byte for the same student trained on the text "
                    "alone, perplexity 90.00, 1.2000 bits per byte for the teacher.")
    assert "significantly higher" in v[1] and "bits per byte +0.1000 (95% CI +0.0500 to +0.1500)" in v[1]
    assert "made this student WORSE" in v[1] and "runs/lm/student_no_kd" in v[1]


def test_verdict_for_a_win_and_for_a_tie():
    win = lm_verdict(_report(285.0, 390.0, -0.31, 0.0002, True))
    assert "significantly lower" in win[1] and "WORSE" not in win[1]
    tie = lm_verdict(_report(400.0, 390.0, 0.02, 0.4, False))
    assert "not distinguishable at this test size" in tie[1] and "has not paid off" in tie[1]
    assert "WORSE" not in tie[1]


def _point(step, nll, tokens=10):
    return {"step": step, "perplexity": math.exp(sum(nll) / (tokens * len(nll))), "bits_per_byte": None,
            "chunk_nll": nll, "chunk_tokens": [tokens] * len(nll)}


def test_curve_comparison_finds_the_crossover():
    n = 30
    kd = [_point(50, [70.0] * n), _point(100, [52.0 + (i % 2) for i in range(n)]), _point(200, [40.0] * n)]
    no_kd = [_point(50, [60.0] * n), _point(100, [52.0 + ((i + 1) % 2) for i in range(n)]),
             _point(200, [48.0] * n)]
    rows = curve_comparison(kd, no_kd, seed=0)
    assert [r["step"] for r in rows] == [50, 100, 200]
    assert rows[0]["perplexity_ratio"] == pytest.approx(math.exp(1.0)) and rows[0]["significant"]
    assert not rows[1]["significant"]
    assert rows[2]["perplexity_ratio"] == pytest.approx(math.exp(-0.8)) and rows[2]["significant"]
    text = describe_curve(rows)
    assert "step 50:" in text and "(behind," in text and "(level," in text and "(ahead," in text
    assert "behind early and ahead from step 200" in text
    assert curve_comparison(kd, None) == []


def _lm_recipe(**data):
    return {"task": "causal-lm", "teacher": {"model": "t"}, "student": {"from_teacher": True, "layers": [0]},
            "data": data, "store": {"topk": 8}}


def test_packaged_corpus_recipe_checks():
    r = recipe_from_dict(_lm_recipe(source="packaged", name="three_domains"))
    assert r.data.name == "three_domains" and r.select.metric_for(r.task) == "perplexity"
    with pytest.raises(RecipeError, match="data.name.*three_domains"):
        recipe_from_dict(_lm_recipe(source="packaged", name="movie_snippets"))
    with pytest.raises(RecipeError, match="data.source"):
        recipe_from_dict(_lm_recipe(source="images", train="x"))
    bad = _lm_recipe(source="packaged", name="hamlet")
    bad["select"] = {"metric": "macro_f1"}
    with pytest.raises(RecipeError, match="select.metric"):
        recipe_from_dict(bad)
    bad = _lm_recipe(train="x.csv")
    bad["causal_lm"] = {"curve_steps": [0, 10]}
    with pytest.raises(RecipeError, match="causal_lm.curve_steps"):
        recipe_from_dict(bad)


def test_classification_refuses_perplexity_selection():
    r = {"teacher": {"model": "t"}, "student": {"model": "s"}, "data": {"train": "x.csv"},
         "select": {"metric": "perplexity"}}
    with pytest.raises(RecipeError, match="select.metric.*causal-lm"):
        recipe_from_dict(r)


def test_causal_lm_candidates_default_to_temperature_one():
    r = recipe_from_dict(_lm_recipe(source="packaged", name="hamlet"))
    assert r.select.candidates(r.task) == [(0.0, None), (0.5, 1.0), (0.9, 1.0)]
    assert r.select.candidates("text-classification") == [(0.0, None), (0.5, 2.0), (0.9, 2.0)]


def test_packaged_corpus_three_domains():
    pytest.importorskip("pandas")
    from distill.packaged import CORPUS_WORDS_PER_DOMAIN, load_packaged_corpus

    try:
        df = load_packaged_corpus("three_domains")
    except RecipeError as exc:  # the text packages are installed by scripts/setup.sh
        pytest.skip(str(exc))
    assert list(df.columns) == ["text", "domain"]
    assert sorted(df["domain"].unique()) == ["hamlet", "movie_dialogue", "movie_reviews"]
    for _, part in df.groupby("domain"):
        words = part["text"].str.split().str.len()
        # whole passages until the cap is reached: at least the cap, short of it without the last passage
        assert words.sum() >= CORPUS_WORDS_PER_DOMAIN > words.sum() - words.iloc[-1]
    assert df.equals(load_packaged_corpus("three_domains"))  # deterministic
    with pytest.raises(RecipeError, match="unknown packaged corpus"):
        load_packaged_corpus("nope")


def test_intervals_bracket_the_estimates():
    from distill.evaluation.perplexity import add_intervals

    nll = [30.0, 45.0, 20.0, 60.0, 38.0, 41.0]
    tokens = [10, 12, 8, 15, 11, 10]
    row_bytes = [40, 50, 30, 62, 45, 41]
    m = add_intervals({"chunk_nll": nll, "chunk_tokens": tokens}, row_bytes, seed=0)
    ppl = math.exp(sum(nll) / sum(tokens))
    bpb = sum(nll) / (math.log(2) * sum(row_bytes))
    lo, hi = m["perplexity_ci95"]
    assert lo < ppl < hi
    blo, bhi = m["bits_per_byte_ci95"]
    assert blo < bpb < bhi
    # the same resamples: the per-byte interval is the per-token one rescaled when bytes are proportional
    m2 = add_intervals({"chunk_nll": nll, "chunk_tokens": tokens}, [4 * t for t in tokens], seed=0)
    assert m2["bits_per_byte_ci95"][0] == pytest.approx(math.log(lo) / (4 * math.log(2)), rel=1e-12)
