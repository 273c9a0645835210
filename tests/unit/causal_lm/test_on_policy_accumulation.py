"""On-policy batches under gradient accumulation: the token-level loss of an optimisation step is the mean
over every generated position of all its micro-batches, so (batch 2 x 2 micro-batches, the second holding one
row) gives the same update as one batch of the same 3 rows. A per-micro-batch mean would weigh the lone row's
tokens twice as much."""

from __future__ import annotations

import torch

from .lm_helpers import assert_same_step

ROWS = [{"input_ids": [3, 7, 9, 4, 12, 5, 8, 10], "prompt_length": 5, "domain": 0, "example_index": 0},
        {"input_ids": [20, 6, 11, 13], "prompt_length": 2, "domain": 0, "example_index": 1},
        {"input_ids": [15, 11, 3, 9, 14, 2], "prompt_length": 4, "domain": 0, "example_index": 2}]


def _one_step(tmp_path, tiny_llama, lm_tokenizer, batch, accum):
    from transformers import AutoModelForCausalLM

    from distill.config import LossConfig, TrainConfig
    from distill.data.text_lm import CausalLMCollator, RowDataset
    from distill.losses import LossContext, build_losses
    from distill.students import student_from_teacher
    from distill.training import Distiller
    from distill.training.args import training_arguments
    from distill.training.on_policy import OnPolicyTrainer

    teacher = AutoModelForCausalLM.from_pretrained(tiny_llama)
    student = student_from_teacher(teacher, [0, 3])
    before = {k: v.clone() for k, v in student.state_dict().items()}
    distiller = Distiller(build_losses([LossConfig(name="kd")], LossContext()))
    cfg = TrainConfig(batch_size=batch, gradient_accumulation_steps=accum, max_steps=1, learning_rate=0.5,
                      warmup_ratio=0.0, seed=0, logging_steps=1, weight_decay=0.0)
    args = training_arguments(cfg, str(tmp_path / f"b{batch}"), evaluate=False, optim="sgd", save_strategy="no",
                              data_seed=None)
    trainer = OnPolicyTrainer(model=student, args=args, train_dataset=RowDataset(ROWS),
                              data_collator=CausalLMCollator(lm_tokenizer.pad_token_id), processing_class=lm_tokenizer,
                              distiller=distiller, teacher=teacher, token_level=True, lmbda=1.0, max_new_tokens=5,
                              temperature=0.0)
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(trainer.train_dataset)
    trainer.train()
    after = student.state_dict()
    return {k: after[k] - before[k] for k in before}, trainer


def test_accumulated_on_policy_step_equals_one_batch(tmp_path, tiny_llama, lm_tokenizer):
    big, t_big = _one_step(tmp_path, tiny_llama, lm_tokenizer, batch=3, accum=1)
    small, t_small = _one_step(tmp_path, tiny_llama, lm_tokenizer, batch=2, accum=2)
    assert t_big.on_policy_batches == 1 and t_small.on_policy_batches == 2
    assert_same_step(big, t_big, small, t_small)
