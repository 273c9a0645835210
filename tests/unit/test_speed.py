"""Interleaved timing: the round order, what is reported, and when a figure is called unreliable. No timed
assertions: the runners here are fakes whose "durations" are read from a script, not measured."""

from __future__ import annotations

import gc

import pytest

from distill.evaluation import speed
from distill.evaluation.speed import apply_latency, interleaved_times, latency_report, unreliable_note


def test_every_round_runs_every_model_once_in_a_fresh_order_after_a_warm_up():
    calls: list[str] = []
    runners = {n: (lambda n=n: calls.append(n)) for n in ("a", "b", "c")}
    times = interleaved_times(runners, rounds=12, warmup=1)
    assert calls[:3] == ["a", "b", "c"]  # warm-up
    rounds = [tuple(calls[i:i + 3]) for i in range(3, len(calls), 3)]
    assert len(rounds) == 12 and all(sorted(r) == ["a", "b", "c"] for r in rounds)
    assert len(set(rounds)) > 2  # the order changes from round to round
    firsts = {r[0] for r in rounds}
    assert firsts == {"a", "b", "c"}  # nobody is always first
    assert all(len(v) == 12 for v in times.values())
    calls.clear()
    interleaved_times(runners, rounds=12, warmup=1)
    assert [tuple(calls[i:i + 3]) for i in range(3, len(calls), 3)] == rounds  # seeded: the same orders again


def test_garbage_collection_is_off_while_timing_and_restored_after():
    seen = []
    interleaved_times({"a": lambda: seen.append(gc.isenabled())}, rounds=2, warmup=0)
    assert seen == [False, False] and gc.isenabled()


def test_min_seconds_adds_rounds_up_to_the_cap(monkeypatch):
    clock = iter(range(10_000))
    monkeypatch.setattr(speed.time, "perf_counter", lambda: float(next(clock)))
    times = interleaved_times({"a": lambda: None}, rounds=2, warmup=0, min_seconds=20.0, max_rounds=1000)
    assert 2 < len(times["a"]) < 30  # each round advances the fake clock by a few "seconds"
    capped = interleaved_times({"a": lambda: None}, rounds=2, warmup=0, min_seconds=1e9, max_rounds=7)
    assert len(capped["a"]) == 7


def test_report_uses_the_median_and_the_ratio_of_figures():
    teacher = [10.0, 10.0, 10.0, 10.0, 50.0, 10.0, 10.0, 10.0]  # one call hit by other work
    student = [2.0] * 8
    rep = latency_report({"teacher": {1: teacher}, "student_kd": {1: student}})
    assert rep["models"]["teacher"]["b1"]["ms"] == pytest.approx(10.0)
    assert rep["speedup"]["student_kd"]["b1"]["ratio"] == pytest.approx(5.0)
    lo, hi = rep["speedup"]["student_kd"]["b1"]["ci95"]
    assert lo <= 5.0 <= hi
    assert rep["reliable"] and unreliable_note(rep) is None
    models = {"teacher": {}, "student_kd": {}}
    apply_latency(models, rep)
    assert (models["teacher"]["latency_ms_b1"] == pytest.approx(10.0)
            and "latency_spread_b1" in models["teacher"])


def test_a_noisy_figure_is_marked_unreliable():
    noisy = [5.0, 9.0, 13.0, 20.0, 6.0, 15.0, 8.0, 11.0]
    rep = latency_report({"teacher": {32: noisy}, "student_kd": {32: [1.0] * 8}})
    assert not rep["reliable"] and rep["noisy"] == ["teacher@b32"]
    assert "teacher@b32" in unreliable_note(rep)


def test_precision_adds_rounds_on_a_noisy_machine_and_none_on_a_quiet_one(monkeypatch):
    import itertools

    import numpy as np

    def clock(steps):
        t = itertools.accumulate(steps, initial=0.0)
        monkeypatch.setattr(speed.time, "perf_counter", lambda: next(t))

    clock(itertools.repeat(0.001))  # every call takes exactly 1 ms: the median is exact at once
    quiet = interleaved_times({"a": lambda: None, "b": lambda: None}, rounds=20, warmup=0, precision=0.02,
                              max_seconds=1e9)
    assert len(quiet["a"]) == 20
    rng = np.random.default_rng(0)  # durations spread over 1-3 ms: the median needs a few hundred rounds
    clock(itertools.cycle(list(rng.uniform(0.001, 0.003, 997))))
    noisy = interleaved_times({"a": lambda: None, "b": lambda: None}, rounds=20, warmup=0, precision=0.02,
                              max_seconds=1e9)
    assert len(noisy["a"]) > 100 and speed.median_rel_error(noisy["a"]) <= 0.02
    clock(itertools.cycle(list(rng.uniform(0.001, 0.003, 997))))
    capped = interleaved_times({"a": lambda: None}, rounds=20, warmup=0, precision=0.001, max_seconds=0.2)
    assert len(capped["a"]) < 200  # stopped by max_seconds (each round ~2 ms of fake time) well before 1000
