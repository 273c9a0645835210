"""Run by test_lm_token_count.py, under torchrun (2 CPU processes) or alone: one token-level optimisation
step of a causal-LM student in float64 (so the comparison with one process tests the normalisation, not
float32 summation order); each rank saves the token counts it saw, its weights after the step and the log."""

import json
import os
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from distill.config import LossConfig, TrainConfig
from distill.data.text_lm import CausalLMCollator, RowDataset
from distill.losses import LossContext, build_losses
from distill.stages import end_processes
from distill.students import student_from_teacher
from distill.training import Distiller, DistillTrainer
from distill.training.args import training_arguments

teacher_dir, rows_file, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
batch, accum = int(sys.argv[4]), int(sys.argv[5])
rows = json.loads(Path(rows_file).read_text())


class CountingTrainer(DistillTrainer):
    """Records, for every optimisation step, this process's micro-batch token counts and the total it got."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def _get_num_items_in_batch(self, batch_samples, device):
        total = super()._get_num_items_in_batch(batch_samples, device)
        self.calls.append({"local": [int(b["loss_mask"].sum()) for b in batch_samples], "total": int(total),
                           "rows": [b["example_index"].tolist() for b in batch_samples]})
        return total


teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float64)
student = student_from_teacher(teacher, [0, 3]).to(torch.float64)
losses = [LossConfig(name="kd", params={"temperature": 2.0}), LossConfig(name="ce", weight=0.5)]
distiller = Distiller(build_losses(losses, LossContext()))
cfg = TrainConfig(batch_size=batch, gradient_accumulation_steps=accum, max_steps=1, learning_rate=0.5,
                  warmup_ratio=0.0, seed=0, logging_steps=1, weight_decay=0.0, report_to=[])
args = training_arguments(cfg, str(out / "ckpt"), evaluate=False, optim="sgd", save_strategy="no",
                          data_seed=None)
trainer = CountingTrainer(model=student, args=args, train_dataset=RowDataset(rows),
                          data_collator=CausalLMCollator(0), distiller=distiller, teacher=teacher,
                          token_level=True)
# in order: over the step the processes together see exactly the rows of the one-process batch
trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(trainer.train_dataset)
trainer.train()
rank = int(os.environ.get("RANK", "0"))
torch.save({"world": args.world_size, "calls": trainer.calls, "student": student.state_dict(),
            "log": trainer.state.log_history, "keys": distiller.keys, "weights": distiller.weights},
           out / f"rank{rank}.pt")

# close the process group while the interpreter is whole (a gloo thread left running can abort the exit)
end_processes()
