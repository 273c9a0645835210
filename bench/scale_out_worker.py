"""One process of bench/scale_out.py (run under torchrun): SmolLM2-135M-Instruct as the *online* teacher of
its 6-of-30-layer copy, token-level kd + ce on packaged text, a few optimisation steps under DDP or FSDP.
Writes this process's memory figures (MB) to OUT/rank<R>.json:

- ``after_load_mb``: resident memory once teacher and student are loaded (each process loads both whole);
- ``training_peak_mb``: the peak resident memory from the start of ``trainer.train()`` to its end (the
  kernel's high-water mark is reset first, through /proc/self/clear_refs), which is what sharding changes;
- ``process_peak_mb``: the peak over the process's whole life (loading included).

    torchrun --nproc_per_node 2 bench/scale_out_worker.py OUT ddp|fsdp STEPS
"""

import json
import os
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from distill.config import LossConfig, TrainConfig
from distill.config.training import FSDPConfig
from distill.data.text_lm import CausalLMCollator, RowDataset
from distill.losses import LossContext, build_losses
from distill.packaged import cached_smollm2, load_packaged_corpus
from distill.stages import end_processes
from distill.students import student_from_teacher
from distill.training import Distiller, DistillTrainer
from distill.training.args import training_arguments


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


out, mode, steps = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rank = int(os.environ.get("RANK", "0"))
torch.manual_seed(0)
path = cached_smollm2()
tok = AutoTokenizer.from_pretrained(path)
teacher = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
student = student_from_teacher(teacher, [0, 6, 12, 18, 24, 29])
corpus = load_packaged_corpus("three_domains")
ids = tok("\n".join(corpus["text"].tolist()[:400]))["input_ids"]
chunk = 128
rows = [{"input_ids": ids[i:i + chunk], "prompt_length": 0, "domain": 0, "example_index": n}
        for n, i in enumerate(range(0, len(ids) - chunk, chunk))][: 2 * 2 * steps]
distiller = Distiller(build_losses([LossConfig(name="kd", weight=0.5), LossConfig(name="ce", weight=0.5)],
                                   LossContext()))
cfg = TrainConfig(batch_size=2, max_steps=steps, learning_rate=3e-4, warmup_ratio=0.0, seed=0,
                  logging_steps=1, report_to=[], fsdp=FSDPConfig(enabled=mode == "fsdp"))
args = training_arguments(cfg, str(out / f"ckpt_{mode}"), evaluate=False, save_strategy="no")
after_load = status_mb("VmRSS")
trainer = DistillTrainer(model=student, args=args, train_dataset=RowDataset(rows),
                         data_collator=CausalLMCollator(tok.pad_token_id or tok.eos_token_id),
                         distiller=distiller, teacher=teacher, token_level=True)
after_init = status_mb("VmRSS")  # under FSDP the teacher is sharded by now
steps_rss: list[float] = []


class StepMemory(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        steps_rss.append(status_mb("VmRSS"))


trainer.add_callback(StepMemory())
Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark: from here on, training only
trainer.train()
record = {"rank": rank, "mode": mode, "fsdp": trainer.is_fsdp_enabled, "world": args.world_size,
          "steps": trainer.state.global_step, "after_load_mb": after_load, "after_init_mb": after_init,
          "rss_after_each_step_mb": steps_rss,
          "training_peak_mb": status_mb("VmHWM"), "process_peak_mb": None,
          "loss": [h["loss"] for h in trainer.state.log_history if "loss" in h]}
import resource  # noqa: E402

record["process_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
(out / f"{mode}_rank{rank}.json").write_text(json.dumps(record))
end_processes()  # close the gloo group before the interpreter exits (a running gloo thread can abort it)
