"""Probe used to choose the causal-LM recipe's loss mix (2026-11-30).

A plain training loop (no store, no Trainer) of the 6-of-30-layer SmolLM2 student on the packaged
three-domain corpus, one seed, batch 4, AdamW 3e-4 constant after a 10-step warm-up, the teacher's logits
computed once (fp16, in memory); perplexity on the validation + held-out chunks at 25 / 50 / 100 / 200 steps
for each kd weight w: loss = (1 - w) CE + w T^2 KL(teacher || student) at temperature T (default 1).
One seed and no paired test: it picks a default; bench/causal_lm_curve.py measures the default over seeds.

    python bench/causal_lm_mix_probe.py --weights 0 1 0.5 --steps 200
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F  # noqa: N812

LAYERS = [0, 6, 12, 18, 24, 29]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0, 0.5])
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()
    from distill.config import recipe_from_dict
    from distill.data.text_lm import CausalLMCollator
    from distill.students.inherit import student_from_teacher
    from distill.tasks.causal_lm import CausalLMTask, load_causal_lm

    r = recipe_from_dict({
        "task": "causal-lm", "teacher": {"model": "packaged:smollm2-135m-instruct"},
        "student": {"from_teacher": True, "layers": LAYERS},
        "data": {"source": "packaged", "name": "three_domains", "test_fraction": 0.1,
                 "validation_fraction": 0.05},
        "causal_lm": {"chunk_length": 128}, "store": {"codec": "head4", "topk": 0}})
    task = CausalLMTask(r, log=print)
    task.resolve_teacher()
    task.load_rows()
    teacher = task.teacher_model().eval()
    collate = CausalLMCollator(task.pad_id)
    train, scored, vocab = task.train_rows, task.val_rows + task.test_rows, task.vocab_size
    teacher_logits = []
    with torch.no_grad():
        for i in range(0, len(train), 8):
            b = collate(train[i:i + 8])
            out = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            teacher_logits += list(out[..., :vocab].half())

    @torch.no_grad()
    def heldout_ppl(model) -> float:
        model.eval()
        nll, n = 0.0, 0
        for i in range(0, len(scored), 8):
            b = collate(scored[i:i + 8])
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[..., :vocab]
            keep = b["labels"] != -100
            nll += F.cross_entropy(logits[keep].float(), b["labels"][keep], reduction="sum").item()
            n += int(keep.sum())
        model.train()
        return math.exp(nll / n)

    print(json.dumps({"teacher_ppl": heldout_ppl(teacher)}), flush=True)
    marks, temp = {25, 50, 100, 200, 400}, args.temperature
    for w in args.weights:
        torch.manual_seed(0)
        student = student_from_teacher(load_causal_lm(task.teacher.path), LAYERS).train()
        opt = torch.optim.AdamW(student.parameters(), lr=3e-4, weight_decay=0.01)
        gen, order, t0 = torch.Generator().manual_seed(0), [], time.time()
        for step in range(1, args.steps + 1):
            if len(order) < args.batch:
                order = torch.randperm(len(train), generator=gen).tolist()
            idx = [order.pop() for _ in range(args.batch)]
            b = collate([train[i] for i in idx])
            for group in opt.param_groups:
                group["lr"] = 3e-4 * min(1.0, step / 10)
            logits = student(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[..., :vocab]
            keep = b["labels"] != -100
            loss = (1 - w) * F.cross_entropy(logits[keep].float(), b["labels"][keep])
            if w > 0:
                t = torch.stack([teacher_logits[i] for i in idx])[keep].float() / temp
                s = logits[keep].float() / temp
                kl = (F.softmax(t, -1) * (F.log_softmax(t, -1) - F.log_softmax(s, -1))).sum(-1).mean()
                loss = loss + w * temp * temp * kl
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step in marks:
                print(json.dumps({"kd_weight": w, "temperature": temp, "step": step,
                                  "ppl": heldout_ppl(student), "seconds": time.time() - t0}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
