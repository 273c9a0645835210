"""Annotate texts with a black-box teacher: store first, then concurrent requests within a budget.

Answers already in the response store are read, not asked; identical prompts are asked once. The rest go
to up to ``max_concurrency`` threads. Each answer is committed to the store as it arrives, then parsed. A
budget (``max_calls`` answers and/or ``max_cost``, counted over the whole store so a rerun does not spend
it twice) stops the run cleanly: what is answered is kept, the rest is reported as not labelled.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from distill.teachers.blackbox.backend import Backend, BackendError, ChatResponse, FatalBackendError
from distill.teachers.blackbox.demos import Demonstrations
from distill.teachers.blackbox.parse import LabelParser
from distill.teachers.blackbox.prompt import PromptTemplate
from distill.teachers.blackbox.store import ResponseStore, StoredAnswer, answer_key

Status = Literal["labelled", "unparseable", "failed", "not_labelled"]
_EXCERPT = 500  # characters of an answer or text kept in the stats


@dataclass(frozen=True)
class Prices:
    """Price per million prompt (``input``) and completion (``output``) tokens."""

    input: float = 0.0
    output: float = 0.0

    def cost(self, response: ChatResponse) -> float | None:
        """Estimated cost of one answer; None when prices are set but the answer reported no usage."""
        if not (self.input or self.output):
            return 0.0
        if response.prompt_tokens is None or response.completion_tokens is None:
            return None
        return (response.prompt_tokens * self.input + response.completion_tokens * self.output) / 1e6


@dataclass
class TeacherLabel:
    """The teacher's verdict on one text."""

    status: Status
    label: int | None = None
    """Label index when ``status`` is ``labelled``."""
    probs: list[float] | None = None
    """Soft labels over the label set, when asked for and the answer's log-probabilities allow."""
    answer: str | None = None
    """The raw answer text (None when the teacher was not asked or failed)."""
    reason: str | None = None
    """Why it is unparseable, failed or not labelled."""
    cached: bool = False
    """The answer came from the response store, not from a new request."""


@dataclass
class LabelRun:
    """Per-text results (in input order), the label names and the run's statistics."""

    labels: list[str]
    items: list[TeacherLabel]
    stats: dict[str, Any] = field(default_factory=dict)

    def hard(self) -> list[int]:
        """Label index per text, -1 where the teacher gave none."""
        return [-1 if item.label is None else item.label for item in self.items]


class _Budget:
    """Answers and cost bought so far (whole store) plus requests in flight, against the caps."""

    def __init__(self, max_calls: int | None, max_cost: float | None, calls: int, cost: float):
        self.max_calls, self.max_cost = max_calls, max_cost
        self.calls, self.cost = calls, cost
        self.in_flight = 0
        self.stopped: str | None = None
        self._cond = threading.Condition()

    def _fits(self) -> bool:
        if self.max_calls is not None and self.calls + self.in_flight >= self.max_calls:
            self.stopped = f"max_calls ({self.max_calls}) reached"
            return False
        if self.max_cost is not None:
            # the cost of an answer is known only once it arrives: count each one in flight at the mean so far
            mean = self.cost / self.calls if self.calls else 0.0
            if self.cost >= self.max_cost or self.cost + (self.in_flight + 1) * mean > self.max_cost:
                self.stopped = f"max_cost ({self.max_cost:g}) reached"
                return False
        return True

    def reserve(self, stop: threading.Event) -> bool:
        with self._cond:
            while True:
                if self._fits():
                    self.stopped = None
                    self.in_flight += 1
                    return True
                if self.in_flight == 0 or stop.is_set():  # nothing in flight can free room: out of budget
                    return False
                self._cond.wait(0.5)  # a request in flight may fail and free its place

    def settle(self, paid: bool, cost: float | None = None) -> None:
        with self._cond:
            self.in_flight -= 1
            if paid:
                self.calls += 1
                self.cost += cost or 0.0
            self._cond.notify_all()


class Labeler:
    """Label texts with ``backend``; answers go through ``store`` and are parsed against ``labels``."""

    def __init__(
        self,
        backend: Backend,
        labels: Sequence[str],
        store: ResponseStore,
        *,
        template: PromptTemplate | None = None,
        synonyms: dict[str, list[str]] | None = None,
        max_concurrency: int = 4,
        max_calls: int | None = None,
        max_cost: float | None = None,
        prices: Prices | None = None,
        soft_labels: bool = False,
        demonstrations: Demonstrations | None = None,
        progress: bool | None = None,
        log: Callable[[str], None] | None = None,
    ):
        self.backend = backend
        self.labels = list(labels)
        self.parser = LabelParser(self.labels, synonyms)
        self.store = store
        self.template = template or PromptTemplate()
        limit = backend.max_concurrency or max_concurrency
        self.max_concurrency = max(1, min(max_concurrency, limit))
        self.max_calls, self.max_cost = max_calls, max_cost
        self.prices = prices or Prices()
        self.soft_labels = soft_labels
        self.demonstrations = demonstrations
        if progress is None:
            from distill.training.args import progress_enabled

            progress = progress_enabled()
        self.progress = progress
        self.log = log or (lambda msg: None)

    def label(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None,
              desc: str = "teacher") -> LabelRun:
        t0 = time.perf_counter()
        identity, params, template_id = self.backend.identity, self.backend.params, self.template.fingerprint
        shots = (self.demonstrations.pick(texts, text_pairs) if self.demonstrations is not None
                 else [()] * len(texts))
        messages = [self.template.render(t, self.labels, None if text_pairs is None else text_pairs[i],
                                         shots[i])
                    for i, t in enumerate(texts)]
        keys = [answer_key(identity, template_id, m, params) for m in messages]
        by_key = dict(zip(keys, messages))  # identical prompts share a key and are asked once
        stored = self.store.get_many(keys)
        todo = [k for k in dict.fromkeys(keys) if k not in stored]
        if stored:
            self.log(f"{desc}: {len(set(keys)) - len(todo)} answers found in the response store "
                     f"{self.store.path}")

        calls, cost = self.store.totals()
        budget = _Budget(self.max_calls, self.max_cost, calls, cost)
        counters = self.backend.counters()
        new, errors = self._ask(todo, by_key, budget, identity, params, template_id, desc)

        items = [self._verdict(key, stored, new, errors, budget) for key in keys]
        run = LabelRun(self.labels, items)
        run.stats = self._stats(run, texts, keys, stored, new, errors, budget, time.perf_counter() - t0)
        run.stats["backend"].update({k: v - counters.get(k, 0) for k, v in self.backend.counters().items()})
        if budget.stopped and len(new) + len(errors) < len(todo):
            self.log(f"{desc}: budget {budget.stopped}; {run.stats['not_labelled']} texts not labelled "
                     "(their answers were never bought); raise the cap and rerun to continue")
        return run

    # -- the requests -----------------------------------------------------------------------------------
    def _ask(self, todo: list[str], messages: dict[str, Any], budget: _Budget, identity: str,
             params: dict[str, Any], template_id: str,
             desc: str) -> tuple[dict[str, StoredAnswer], dict[str, str]]:
        new: dict[str, StoredAnswer] = {}
        errors: dict[str, str] = {}
        if not todo:
            return new, errors
        from tqdm.auto import tqdm

        queue = collections.deque(todo)
        qlock = threading.Lock()
        stop = threading.Event()
        fatal: list[Exception] = []
        bar = tqdm(total=len(todo), desc=desc, unit="call", disable=not self.progress)

        def work() -> None:
            while not stop.is_set():
                with qlock:
                    if not queue:
                        return
                    key = queue.popleft()
                if not budget.reserve(stop):
                    with qlock:
                        queue.appendleft(key)
                    return
                try:
                    response = self.backend.complete(messages[key])
                except FatalBackendError as exc:
                    budget.settle(paid=False)
                    fatal.append(exc)
                    stop.set()
                    return
                except BackendError as exc:
                    budget.settle(paid=False)
                    errors[key] = str(exc)
                    bar.update(1)
                    continue
                except Exception as exc:  # noqa: BLE001 -- a bug or a local model failing: stop everyone, report it
                    budget.settle(paid=False)
                    fatal.append(exc)
                    stop.set()
                    return
                price = self.prices.cost(response)
                try:
                    self.store.put(key, identity, template_id, messages[key], params, response, price)
                except Exception as exc:  # noqa: BLE001 -- disk full, store locked: buy no answer we cannot keep
                    budget.settle(paid=True, cost=price)
                    fatal.append(exc)
                    stop.set()
                    return
                budget.settle(paid=True, cost=price)
                new[key] = StoredAnswer(response, price)
                bar.update(1)

        threads = [threading.Thread(target=work, name=f"distill-teacher-{i}", daemon=True)
                   for i in range(min(self.max_concurrency, len(todo)))]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.2)  # short joins keep the main thread responsive to Ctrl-C
        except KeyboardInterrupt:
            stop.set()
            self.log("interrupted: waiting for the requests in flight so their answers are kept "
                     "(Ctrl-C again to leave at once)")
            for t in threads:
                t.join()
            raise
        finally:
            bar.close()
        if fatal:
            raise fatal[0]
        return new, errors

    # -- the results ------------------------------------------------------------------------------------
    def _verdict(self, key: str, stored: dict[str, StoredAnswer], new: dict[str, StoredAnswer],
                 errors: dict[str, str], budget: _Budget) -> TeacherLabel:
        found = stored.get(key) or new.get(key)
        if found is None:
            if key in errors:
                return TeacherLabel("failed", reason=errors[key])
            return TeacherLabel("not_labelled", reason=f"budget: {budget.stopped or 'stopped'}")
        text = found.response.text
        parsed = self.parser.parse(text)
        if not parsed.ok:
            return TeacherLabel("unparseable", answer=text, reason=parsed.reason, cached=key in stored)
        probs = self.parser.soft_labels(found.response.tokens, parsed.label) if self.soft_labels else None
        return TeacherLabel("labelled", parsed.label, probs, text, cached=key in stored)

    def _stats(self, run: LabelRun, texts: Sequence[str], keys: list[str], stored: dict[str, StoredAnswer],
               new: dict[str, StoredAnswer], errors: dict[str, str], budget: _Budget,
               seconds: float) -> dict[str, Any]:
        counts = collections.Counter(item.status for item in run.items)
        new_costs = [a.cost for a in new.values()]
        answers, total_cost = self.store.totals()
        return {
            "texts": len(texts),
            "unique_prompts": len(set(keys)),
            "labelled": counts["labelled"],
            "unparseable": counts["unparseable"],
            "failed": counts["failed"],
            "not_labelled": counts["not_labelled"],
            "soft_labelled": sum(item.probs is not None for item in run.items),
            "calls": len(new),
            "cached": len(set(keys) & set(stored)),
            "cost": sum(c for c in new_costs if c is not None),
            "answers_without_usage": sum(c is None for c in new_costs),
            "backend": {"identity": self.backend.identity},  # + this run's request counters
            "store": {"path": str(self.store.path), "answers": answers, "cost": total_cost},
            "budget": {"max_calls": self.max_calls, "max_cost": self.max_cost,
                       "stopped": budget.stopped if counts["not_labelled"] else None},
            "label_counts": {name: sum(item.label == i for item in run.items)
                             for i, name in enumerate(self.labels)},
            "parse_failures": [{"index": i, "text": texts[i][:_EXCERPT],
                                "answer": (item.answer or "")[:_EXCERPT],
                                "reason": item.reason} for i, item in enumerate(run.items)
                               if item.status == "unparseable"],
            "failures": [{"index": i, "error": item.reason} for i, item in enumerate(run.items)
                         if item.status == "failed"],
            "seconds": round(seconds, 3),
        }
