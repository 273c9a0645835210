"""The labeler over a real local server: the store answers reruns, identical prompts are asked once,
budgets stop cleanly, failures and unparseable answers are reported, soft labels come from log-probs."""

from __future__ import annotations

import json
import math
import sqlite3

import pytest
from _chat_server import SECRET, FakeChatServer, keyed_server, rule_answer, server  # noqa: F401, F811 (fixtures)

from distill.teachers.blackbox import ChatClient, ChatResponse, Labeler, Prices, ResponseStore, answer_key

LABELS = ["positive", "negative"]
TEXTS = [f"the film {w} and {w}" for w in ["good", "bad", "lovely", "dull", "fun", "weak", "smart", "flat",
                                           "superb", "messy"]]


def make(srv, tmp_path, api_key=None, logs=None, **kw):
    client = ChatClient(srv.url, "fake-llm", api_key=api_key, backoff=0.01, timeout=2.0, max_retries=1,
                        logprobs=kw.pop("logprobs", False), sleep=lambda s: None)
    store = ResponseStore(tmp_path / "responses.sqlite")
    log = logs.append if logs is not None else None
    return Labeler(client, LABELS, store, progress=False, log=log, **kw)


def truth(text):
    return 0 if rule_answer(f"Text: {text}\nLabel:").startswith("P") else 1


def test_labels_and_a_rerun_asks_nothing(server, tmp_path):  # noqa: F811 (fixture imported from _chat_server)
    labeler = make(server, tmp_path, max_concurrency=3)
    run = labeler.label(TEXTS + TEXTS[:2])  # two duplicates: asked once
    assert run.hard() == [truth(t) for t in TEXTS + TEXTS[:2]]
    assert run.stats["calls"] == 10 and run.stats["cached"] == 0 and run.stats["labelled"] == 12
    assert max(server.requests.values()) == 1
    labeler.store.close()

    server.reset_counts()
    again = make(server, tmp_path).label(TEXTS)
    assert sum(server.requests.values()) == 0  # calls saved by the store: 100 %
    assert again.stats["cached"] == 10 and again.stats["calls"] == 0 and all(i.cached for i in again.items)
    assert again.hard() == run.hard()[:10]


def test_max_calls_stops_cleanly_and_counts_over_reruns(server, tmp_path):  # noqa: F811 (fixture imported from _chat_server)
    logs: list[str] = []
    run = make(server, tmp_path, logs=logs, max_concurrency=3, max_calls=4).label(TEXTS)
    assert run.stats["calls"] == 4 and run.stats["not_labelled"] == 6
    assert run.stats["budget"]["stopped"] == "max_calls (4) reached"
    assert any("not labelled" in line for line in logs)
    assert sum(server.requests.values()) == 4

    # the cap covers the whole store: the same cap buys nothing more ...
    assert make(server, tmp_path, max_calls=4).label(TEXTS).stats["calls"] == 0
    # ... a higher one buys exactly the rest, never an answer twice
    done = make(server, tmp_path, max_calls=10).label(TEXTS)
    assert done.stats["calls"] == 6 and done.stats["cached"] == 4 and done.stats["labelled"] == 10
    assert max(server.requests.values()) == 1


def test_max_cost_stops_at_the_estimated_spend(server, tmp_path):  # noqa: F811 (fixture imported from _chat_server)
    # usage: 10 prompt + 2 completion tokens per answer -> 10 * 100,000 / 1e6 = 1.0 per answer
    run = make(server, tmp_path, max_concurrency=1, max_cost=3.5, prices=Prices(input=100_000)).label(TEXTS)
    assert run.stats["calls"] == 3 and run.stats["cost"] == pytest.approx(3.0)
    assert (run.stats["store"]["cost"] == pytest.approx(3.0)
            and run.stats["budget"]["stopped"].startswith("max_cost"))


def test_failures_and_parse_failures_are_reported_not_guessed(server, tmp_path):  # noqa: F811 (fixture imported from _chat_server)
    server.fail_prompts = {"dull"}  # always 500
    answers = {"weak": "I cannot decide.", "flat": "positive or negative"}
    server.answer = lambda p: next((a for w, a in answers.items() if w in p), rule_answer(p))
    run = make(server, tmp_path).label(TEXTS)
    s = run.stats
    assert (s["labelled"], s["unparseable"], s["failed"]) == (7, 2, 1)
    assert [f["index"] for f in s["parse_failures"]] == [5, 7]
    assert (s["parse_failures"][0]["answer"] == "I cannot decide."
            and s["parse_failures"][1]["reason"].startswith("ambiguous"))
    assert s["failures"][0]["index"] == 3 and "HTTP 500" in s["failures"][0]["error"]
    assert run.items[3].label is None and run.items[5].label is None and run.hard()[7] == -1
    # unparseable answers are kept, failures are not
    with sqlite3.connect(tmp_path / "responses.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 9


def test_soft_labels_from_logprobs(server, tmp_path):  # noqa: F811 (fixture imported from _chat_server)
    run = make(server, tmp_path, logprobs=True, soft_labels=True).label(TEXTS[:2])
    p = math.exp(-0.2) / (math.exp(-0.2) + math.exp(-1.8))
    assert run.items[0].probs == pytest.approx([p, 1 - p]) and run.items[1].probs == pytest.approx([1 - p, p])
    assert run.stats["soft_labelled"] == 2
    assert server.bodies[0]["logprobs"] is True


def test_store_roundtrip_and_key(tmp_path):
    msgs = [{"role": "user", "content": "x"}]
    key = answer_key("m", "t", msgs, {"temperature": 0})
    assert (key != answer_key("m2", "t", msgs, {"temperature": 0})
            != answer_key("m", "t", msgs, {"temperature": 1}))
    with ResponseStore(tmp_path / "s.sqlite") as store:
        store.put(key, "m", "t", msgs, {}, ChatResponse("hi", None, 3, 1), 0.5)
        store.put(key, "m", "t", msgs, {}, ChatResponse("second", None, 3, 1), 0.5)  # the first answer stays
        assert store.get_many([key, "missing"])[key].response.text == "hi"
        assert store.totals() == (1, 0.5)
    with sqlite3.connect(tmp_path / "s.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_api_key_stays_out_of_store_stats_and_logs(keyed_server, tmp_path, capsys):  # noqa: F811 (fixture imported from _chat_server)
    keyed_server.answer = lambda p: f"positive (the key was {SECRET})"  # a hostile endpoint echoing the key
    logs: list[str] = []
    labeler = make(keyed_server, tmp_path, api_key=SECRET, logs=logs, max_concurrency=2)
    run = labeler.label(TEXTS[:4])
    labeler.store.close()
    assert run.stats["labelled"] == 4 and "***" in run.items[0].answer
    blobs = [json.dumps(run.stats), repr(labeler.backend), "\n".join(logs), *capsys.readouterr()]
    blobs += [p.read_bytes().decode("latin-1") for p in tmp_path.iterdir()]  # the sqlite file, its WAL
    assert all(SECRET not in blob for blob in blobs)
