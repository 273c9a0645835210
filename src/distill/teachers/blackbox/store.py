"""Every paid answer, kept in SQLite the moment it arrives.

One row per answer, keyed by a hash of everything that decides it: the model that answers, the prompt
template, the rendered messages and the generation parameters (not the API key, the URL or the label
synonyms: a new synonym re-reads stored answers for free). Each insert is its own transaction in WAL mode
with ``synchronous=FULL``, so an answer committed before a crash, SIGKILL or Ctrl-C is there on the rerun,
which asks nothing already answered. Several threads (or processes) may write at once.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.teachers.blackbox.backend import ChatResponse, Message, TokenChoice

FORMAT = 1
FILENAME = "teacher_responses.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    template TEXT NOT NULL,
    messages TEXT NOT NULL,
    params TEXT NOT NULL,
    answer TEXT NOT NULL,
    tokens TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    cost REAL,
    created REAL NOT NULL
);
"""


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def answer_key(model: str, template: str, messages: list[Message], params: dict[str, Any]) -> str:
    """sha256 of (format, model, template, messages, params) in canonical JSON."""
    blob = _canonical({"format": FORMAT, "model": model, "template": template, "messages": messages,
                       "params": params})
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class StoredAnswer:
    response: ChatResponse
    cost: float | None


def _tokens_json(tokens: tuple[TokenChoice, ...] | None) -> str | None:
    if tokens is None:
        return None
    return json.dumps([[t.token, t.logprob, [list(x) for x in t.top]] for t in tokens], ensure_ascii=False)


def _tokens_from_json(text: str | None) -> tuple[TokenChoice, ...] | None:
    if text is None:
        return None
    return tuple(TokenChoice(tok, lp, tuple((a, b) for a, b in top)) for tok, lp, top in json.loads(text))


class ResponseStore:
    """The SQLite file of answers; ``with ResponseStore(path) as store: ...``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # one connection shared by the labeler's threads, serialised by our own lock; autocommit
        # (isolation_level=None) makes every INSERT a transaction of its own
        self._conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None,
                                     check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")  # paid answers: fsync each commit
            self._conn.executescript(_SCHEMA)
            self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (str(FORMAT),))
            found = self._conn.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()[0]
        if found != str(FORMAT):
            self.close()
            raise RuntimeError(f"{self.path} holds answers in store format {found}, this distill reads "
                               f"{FORMAT}; move the file away to start a new store")

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def get_many(self, keys: Iterable[str]) -> dict[str, StoredAnswer]:
        keys = list(dict.fromkeys(keys))
        out: dict[str, StoredAnswer] = {}
        with self._lock:
            for i in range(0, len(keys), 500):  # below SQLite's bound-parameter limit
                chunk = keys[i:i + 500]
                rows = self._conn.execute(
                    "SELECT key, answer, tokens, prompt_tokens, completion_tokens, cost FROM answers "
                    f"WHERE key IN ({','.join('?' * len(chunk))})", chunk).fetchall()
                for key, answer, tokens, pt, ct, cost in rows:
                    out[key] = StoredAnswer(ChatResponse(answer, _tokens_from_json(tokens), pt, ct), cost)
        return out

    def put(self, key: str, model: str, template: str, messages: list[Message], params: dict[str, Any],
            response: ChatResponse, cost: float | None) -> None:
        """Commit one answer now (a second answer for the same key is ignored: the first was paid for)."""
        row = (key, model, template, _canonical(messages), _canonical(params), response.text,
               _tokens_json(response.tokens), response.prompt_tokens, response.completion_tokens, cost,
               time.time())
        with self._lock:
            self._conn.execute("INSERT OR IGNORE INTO answers VALUES (?,?,?,?,?,?,?,?,?,?,?)", row)

    def totals(self) -> tuple[int, float]:
        """(answers, estimated cost) over the whole store: what every run so far has bought."""
        with self._lock:
            count, cost = self._conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(cost), 0) FROM answers").fetchone()
        return int(count), float(cost)
