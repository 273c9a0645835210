"""Run by test_fsdp.py under torchrun (2 CPU processes over gloo, on one or two "nodes") or alone: a causal-LM
student trained against the *online* teacher with token-level losses in float64 (so the comparisons test the
sharding and the normalisation, not float32 summation order).

    fsdp_step.py TEACHER_DIR ROWS_JSON OUT MODE BATCH LOSSES STEPS [STOP_AT | resume]

MODE: fsdp / ddp / single. LOSSES: plain (kd + ce) or proj (+ a hidden-state loss with learned projectors).
STOP_AT: checkpoint every 2 steps and stop after that many (an interrupted run); ``resume``: continue from
the newest checkpoint in OUT/ckpt. Each rank saves its gathered student weights, the distiller's state, and
what it saw of the teacher's sharding."""

import json
import os
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from distill.config import LossConfig, TrainConfig
from distill.config.training import FSDPConfig
from distill.data.text_lm import CausalLMCollator, RowDataset
from distill.losses import LossContext, build_losses
from distill.stages import end_processes
from distill.students import student_from_teacher
from distill.training import Distiller, DistillTrainer
from distill.training.args import training_arguments

teacher_dir, rows_file, out, mode = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
batch, loss_set, steps = int(sys.argv[5]), sys.argv[6], int(sys.argv[7])
extra = sys.argv[8] if len(sys.argv) > 8 else ""
rows = json.loads(Path(rows_file).read_text())
rank = int(os.environ.get("RANK", "0"))

teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float64)
student = student_from_teacher(teacher, [0, 3]).to(torch.float64)
losses = [LossConfig(name="kd", params={"temperature": 2.0}), LossConfig(name="ce", weight=0.5)]
if loss_set == "proj":
    losses.append(LossConfig(name="hidden", params={"projector": "linear"}))
width = teacher.config.hidden_size
ctx = LossContext(student_hidden_size=width, teacher_hidden_size=width, student_num_layers=2,
                  teacher_num_layers=teacher.config.num_hidden_layers)
distiller = Distiller(build_losses(losses, ctx)).to(torch.float64)
resumable = extra != ""
cfg = TrainConfig(batch_size=batch, max_steps=steps, learning_rate=0.05 if resumable else 0.5,
                  warmup_ratio=0.0, seed=0, logging_steps=1, weight_decay=0.0, report_to=[],
                  save_steps=2, fsdp=FSDPConfig(enabled=mode == "fsdp"))
args = training_arguments(cfg, str(out / "ckpt"), evaluate=False, data_seed=None,
                          optim="adamw_torch" if resumable else "sgd",
                          save_strategy="steps" if resumable else "no")


class StopAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if extra.isdigit() and state.global_step >= int(extra):
            control.should_save = True
            control.should_training_stop = True


trainer = DistillTrainer(model=student, args=args, train_dataset=RowDataset(rows),
                         data_collator=CausalLMCollator(0), distiller=distiller, teacher=teacher,
                         token_level=True, callbacks=[StopAt()])
# in order: over a step the processes together see exactly the rows of the one-process batch
trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(trainer.train_dataset)

# While any teacher layer runs, how many of the teacher's decoder layers hold their full (unsharded) weights:
# FSDP2 swaps a unit's sharded DTensor parameters for plain full tensors between its all-gather and reshard.
gathered_layers: list[int] = []
layers = list(trainer.teacher.model.layers)


def count_gathered(module, inputs):
    gathered_layers.append(sum(
        any(not hasattr(p, "to_local") for p in layer.parameters()) for layer in layers))


for layer in layers:
    layer.register_forward_pre_hook(count_gathered)

checkpoint = None
if extra == "resume":
    from transformers.trainer_utils import get_last_checkpoint

    checkpoint = get_last_checkpoint(str(out / "ckpt"))
trainer.train(resume_from_checkpoint=checkpoint)


def full(t):
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


teacher_params = list(trainer.teacher.parameters())
optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
torch.save({
    "world": args.world_size,
    "fsdp": trainer.is_fsdp_enabled,
    "student": {k: full(v) for k, v in trainer.model.state_dict().items()},
    "distiller": distiller.state_dict(),
    "log": trainer.state.log_history,
    "global_step": trainer.state.global_step,
    "teacher_local": [p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in teacher_params],
    "teacher_full": [p.numel() for p in teacher_params],
    "teacher_grads": sum(p.grad is not None for p in teacher_params),
    "teacher_requires_grad": sum(p.requires_grad for p in teacher_params),
    "teacher_in_optimizer": sum(id(p) in optimised for p in teacher_params),
    "teacher_layers": len(layers),
    "gathered_layers": gathered_layers,
}, out / f"rank{rank}.pt")

# close the process group while the interpreter is whole (a gloo thread left running can abort the exit)
end_processes()
