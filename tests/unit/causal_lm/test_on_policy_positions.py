"""On-policy batches are left-padded: the student's generation and the student's and teacher's scoring
forwards must place every row at the positions it has alone. Checked on a tiny Llama (rotary positions, where
a uniform shift hardly shows) and a tiny GPT-2 (learned absolute positions, where a shift changes the logits),
through the on-policy trainer's own code: ``student_batch``, ``compute_loss`` and ``_teacher_outputs``."""

from __future__ import annotations

import pytest
import torch

PROMPTS = [[3, 7, 9, 4, 12, 5, 8], [20, 6], [15, 11, 3, 9]]  # three lengths: two rows get left padding


def _gpt2(tokenizer, layers, seed):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=layers, n_head=2, n_positions=64,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=tokenizer.pad_token_id,
                     eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    model = GPT2LMHeadModel(cfg)
    with torch.no_grad():  # large position embeddings: a wrong position shows clearly in the logits
        model.transformer.wpe.weight.mul_(20.0)
    return model


def _models(kind, tiny_llama, lm_tokenizer):
    if kind == "llama":
        from transformers import AutoModelForCausalLM

        from distill.students import student_from_teacher

        teacher = AutoModelForCausalLM.from_pretrained(tiny_llama)
        return teacher, student_from_teacher(teacher, [0, 3])
    return _gpt2(lm_tokenizer, 3, seed=1), _gpt2(lm_tokenizer, 2, seed=2)


def _trainer(tmp_path, teacher, student, tokenizer):
    from distill.config import LossConfig, TrainConfig
    from distill.data.text_lm import CausalLMCollator, RowDataset
    from distill.losses import LossContext, build_losses
    from distill.training import Distiller
    from distill.training.args import training_arguments
    from distill.training.on_policy import OnPolicyTrainer

    distiller = Distiller(build_losses([LossConfig(name="kd")], LossContext()))
    args = training_arguments(TrainConfig(batch_size=3, max_steps=1, report_to=[]), str(tmp_path / "ckpt"),
                              evaluate=False, save_strategy="no")
    rows = [{"input_ids": p + [10, 13], "prompt_length": len(p), "domain": 0, "example_index": i}
            for i, p in enumerate(PROMPTS)]
    # temperature 0: greedy continuations, comparable with generating each prompt alone
    return OnPolicyTrainer(model=student, args=args, train_dataset=RowDataset(rows),
                           data_collator=CausalLMCollator(tokenizer.pad_token_id), processing_class=tokenizer,
                           distiller=distiller, teacher=teacher, token_level=True, lmbda=1.0,
                           max_new_tokens=6, temperature=0.0), rows


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_left_padded_on_policy_rows_score_as_if_alone(tmp_path, tiny_llama, lm_tokenizer, kind):
    teacher, student = _models(kind, tiny_llama, lm_tokenizer)
    trainer, rows = _trainer(tmp_path, teacher, student, lm_tokenizer)
    model = trainer.model
    batch = trainer.student_batch(model, trainer._prepare_inputs(trainer.data_collator(rows)))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    width = max(len(p) for p in PROMPTS)
    assert mask[:, :width].sum(1).tolist() == [len(p) for p in PROMPTS]  # the prompts really are left-padded

    s_logits = trainer.compute_loss(model, batch, return_outputs=True)[1]["logits"]
    t_logits = trainer._teacher_outputs(batch).logits
    model.eval()
    with torch.no_grad():
        for i in range(len(PROMPTS)):
            keep = mask[i].bool()
            alone = ids[i][keep].unsqueeze(0)
            # generation: the batched continuation is what the student writes for the prompt alone
            solo = trainer.student_batch(model, trainer._prepare_inputs(trainer.data_collator([rows[i]])))
            solo_mask = solo["attention_mask"][0].bool()
            assert solo["input_ids"][0][solo_mask].tolist() == alone[0].tolist(), \
                f"row {i}: other continuation"
            # scoring: student and teacher logits of the real tokens equal those of the row alone
            torch.testing.assert_close(s_logits[i][keep], model(input_ids=alone).logits[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(t_logits[i][keep], teacher(input_ids=alone).logits[0], atol=1e-5,
                                       rtol=0)
            if kind == "gpt2" and i > 0:
                # the check is sensitive: without position ids the padded row is scored at shifted positions
                shifted = model(input_ids=ids[i:i + 1], attention_mask=mask[i:i + 1]).logits[0][keep]
                assert (shifted - model(input_ids=alone).logits[0]).abs().max() > 1e-2


def test_sequence_kd_generation_is_the_same_batched_or_alone(lm_tokenizer):
    """The teacher's continuations for sequence-level KD are generated from left-padded prompts as well."""
    from distill.teachers.generate import generate_ids

    model = _gpt2(lm_tokenizer, 2, seed=3).eval()
    pad, eos = lm_tokenizer.pad_token_id, lm_tokenizer.eos_token_id
    batched = generate_ids(model, PROMPTS, pad, eos, max_new_tokens=6, batch_size=len(PROMPTS))
    alone = [generate_ids(model, [p], pad, eos, max_new_tokens=6)[0] for p in PROMPTS]
    assert batched == alone
