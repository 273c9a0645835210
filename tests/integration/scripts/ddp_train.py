"""Run by test_ddp_training.py under torchrun: 2 CPU processes train a student with a projector loss."""

import os
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

from conftest import make_sentiment_rows  # noqa: E402
from distill.config import LossConfig, TrainConfig  # noqa: E402
from distill.data import DistillCollator, to_dataset  # noqa: E402
from distill.losses import LossContext, build_losses  # noqa: E402
from distill.stages import end_processes  # noqa: E402
from distill.students import student_from_teacher  # noqa: E402
from distill.training import Distiller, DistillTrainer  # noqa: E402
from distill.training.args import training_arguments  # noqa: E402

model_dir, out = sys.argv[1], Path(sys.argv[2])
tok = AutoTokenizer.from_pretrained(model_dir)
teacher = AutoModelForSequenceClassification.from_pretrained(model_dir)
df = pd.DataFrame(make_sentiment_rows(32, seed=4))
df["label"] = (df["label"] == "positive").astype(int)
ds = to_dataset(df, tok, max_length=16)
ctx = LossContext(student_hidden_size=32, teacher_hidden_size=32, student_num_layers=2, teacher_num_layers=4)
distiller = Distiller(build_losses([LossConfig(name="kd"),
                                    LossConfig(name="hidden", params={"projector": "linear"})], ctx))
torch.manual_seed(0)
student = student_from_teacher(teacher, [0, 3])
cfg = TrainConfig(batch_size=4, max_steps=3, learning_rate=0.05, warmup_ratio=0.0, report_to=[])
args = training_arguments(cfg, str(out / "ckpt"), evaluate=False, save_strategy="no")
trainer = DistillTrainer(model=student, args=args, train_dataset=ds, data_collator=DistillCollator(tok),
               distiller=distiller, teacher=teacher)
trainer.train()
rank = int(os.environ.get("RANK", 0))
torch.save({"distiller": distiller.state_dict(), "student": student.state_dict(), "world": args.world_size},
           out / f"rank{rank}.pt")

# close the process group while the interpreter is whole (a gloo thread left running can abort the exit)
end_processes()
