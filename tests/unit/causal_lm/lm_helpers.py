"""Tiny random Llama language models, a word-level tokenizer and a two-domain corpus, built in code."""

from __future__ import annotations

import random

WORDS = ("the king queen ghost night castle sword poison speaks walks sleeps dreams film actor scene plot "
         "great dull movie story good bad love hate and a of to is was").split()


def make_lm_tokenizer(path, extra: tuple[str, ...] = ()):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<eos>"] + list(WORDS) + list(extra))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                  eos_token="<eos>")
    path.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(path)
    return tok


def make_llama(path, tokenizer, layers=4, hidden=16, vocab=None, seed=0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab or len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=128, tie_word_embeddings=True,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      bos_token_id=None)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # a peaked, non-uniform teacher so distillation has something to learn
        model.model.embed_tokens.weight.mul_(8.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_corpus(n=60, seed=0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        domain = "play" if i % 2 else "film"
        words = WORDS[:12] if domain == "play" else WORDS[12:24]
        rows.append({"text": " ".join(rng.choices(words + WORDS[24:], k=rng.randint(10, 30))),
                     "domain": domain})
    return rows



# Float64 for the exactness tests: a token-level KD loss is a difference of terms of order 1 (the entropy and
# the cross-entropy) that comes out near 4e-4, so float32 rounding in the sums (~1e-7 per term) already moves
# it by ~1e-4 relative when the same numbers are summed in another order (another batch split, another CPU's
# SIMD width). In float64 that noise is ~1e-13 relative, so these tight bounds test the normalisation itself:
# a wrong token weighting moves the loss and the weights by ~1e-3.
STEP_RTOL, STEP_ATOL = 1e-9, 1e-12
# The Trainer keeps the logged ``loss`` in a float32 accumulator whatever the model's dtype: each
# micro-batch's loss is rounded once on the way in (relative error <= 2**-24 each, so <= 4 * 6e-8 for 4
# micro-batches of positive terms); 1e-6 bounds that with margin and is still 1000x tighter than a wrong token
# weighting.
LOGGED_LOSS_RTOL = 1e-6


def one_lm_step(tmp_path, teacher_dir, tokenizer, rows, batch, accum, losses, trainer_cls=None,
                **trainer_kwargs):
    """One SGD step (lr 0.5, in float64, rows in order) of a student made of the teacher's layers [0, 3].
    Returns the weight deltas and the trainer (its ``state.log_history`` holds the logged loss and parts)."""
    import torch
    from transformers import AutoModelForCausalLM

    from distill.config import LossConfig, TrainConfig
    from distill.data.text_lm import CausalLMCollator, RowDataset
    from distill.losses import LossContext, build_losses
    from distill.students import student_from_teacher
    from distill.training import Distiller, DistillTrainer
    from distill.training.args import training_arguments

    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float64)
    student = student_from_teacher(teacher, [0, 3]).to(torch.float64)
    before = {k: v.detach().cpu().clone() for k, v in student.state_dict().items()}
    distiller = Distiller(build_losses([LossConfig(**s) for s in losses], LossContext()))
    cfg = TrainConfig(batch_size=batch, gradient_accumulation_steps=accum, max_steps=1, learning_rate=0.5,
                      warmup_ratio=0.0, seed=0, logging_steps=1, weight_decay=0.0, report_to=[])
    args = training_arguments(cfg, str(tmp_path / f"b{batch}x{accum}"), evaluate=False, optim="sgd",
                              save_strategy="no", data_seed=None)
    trainer = (trainer_cls or DistillTrainer)(
        model=student, args=args, train_dataset=RowDataset(rows), processing_class=tokenizer,
        data_collator=CausalLMCollator(tokenizer.pad_token_id), distiller=distiller, teacher=teacher,
        token_level=True, **trainer_kwargs)
    # the same order for every split: a sequential sampler
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(trainer.train_dataset)
    trainer.train()
    # the Trainer may have moved the student to a GPU
    after = {k: v.detach().cpu() for k, v in student.state_dict().items()}
    return {k: after[k] - before[k] for k in before}, trainer


def logged_step(trainer) -> dict[str, float]:
    """The first training log entry: ``loss`` and every ``loss/<part>``."""
    return {k: v for k, v in next(h for h in trainer.state.log_history if "loss" in h).items()
            if k == "loss" or k.startswith("loss/")}


def assert_logged_parts_make_the_loss(trainer):
    """The logged parts are weighted like the optimised loss, so the recipe's weights recombine them into
    it."""
    import pytest

    log = logged_step(trainer)
    d = trainer.distiller
    total = sum(w * log[f"loss/{k}"] for k, w in zip(d.keys, d.weights))
    assert total == pytest.approx(log["loss"], rel=LOGGED_LOSS_RTOL)


def assert_same_step(big, t_big, small, t_small):
    """Two one-step float64 runs (weight deltas, trainer) moved the weights alike and logged the same loss and
    the same loss parts (see STEP_RTOL)."""
    import pytest
    import torch

    moved = 0
    for k in big:
        torch.testing.assert_close(small[k], big[k], atol=STEP_ATOL, rtol=STEP_RTOL)
        moved += int(big[k].abs().sum() > 0)
    assert moved > 5  # the step really changed the weights
    log_big, log_small = logged_step(t_big), logged_step(t_small)
    assert set(log_big) == set(log_small) and len(log_big) > 1
    for k, v in log_big.items():  # the parts are accumulated in float64, the Trainer's loss in float32
        assert log_small[k] == pytest.approx(v, rel=LOGGED_LOSS_RTOL if k == "loss" else STEP_RTOL), k
    assert_logged_parts_make_the_loss(t_big)
    assert_logged_parts_make_the_loss(t_small)
