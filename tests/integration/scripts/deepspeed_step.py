"""Run by test_fsdp.py under torchrun when DeepSpeed is installed: two steps of a causal-LM student with the
online teacher, under DeepSpeed ZeRO-3 (``ds``) or DDP (``ddp``); each rank writes its logged losses and how
much of the teacher it holds.

    deepspeed_step.py TEACHER_DIR ROWS_JSON OUT ds|ddp
"""

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

teacher_dir, rows_file, out, mode = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
rank = int(os.environ.get("RANK", "0"))
rows = json.loads(Path(rows_file).read_text())
teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
student = student_from_teacher(teacher, [0, 3])
distiller = Distiller(build_losses([LossConfig(name="kd"), LossConfig(name="ce", weight=0.5)], LossContext()))
cfg = TrainConfig(batch_size=4, max_steps=2, learning_rate=0.01, warmup_ratio=0.0, seed=0, logging_steps=1,
                  report_to=[])
extra = {}
if mode == "ds":
    extra["deepspeed"] = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto",
                          "gradient_accumulation_steps": "auto", "train_batch_size": "auto",
                          "gradient_clipping": "auto"}
args = training_arguments(cfg, str(out / "ckpt"), evaluate=False, save_strategy="no", data_seed=None, **extra)
trainer = DistillTrainer(model=student, args=args, train_dataset=RowDataset(rows),
                         data_collator=CausalLMCollator(0), distiller=distiller, teacher=teacher,
                         token_level=True)
trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(trainer.train_dataset)
trainer.train()
params = list(getattr(trainer.teacher, "module", trainer.teacher).parameters())
(out / f"{mode}_rank{rank}.json").write_text(json.dumps({
    "deepspeed": trainer.is_deepspeed_enabled,
    "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
    "teacher_held": sum(getattr(p, "ds_tensor", p).numel() for p in params),
    "teacher_full": sum(getattr(p, "ds_numel", p.numel()) for p in params),
}))

# close the process group while the interpreter is whole (a gloo thread left running can abort the exit)
end_processes()
