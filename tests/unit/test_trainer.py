"""DistillTrainer: loss scaling under gradient accumulation, logging of loss parts, projector training."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import make_sentiment_rows
from distill.config import LossConfig, TrainConfig
from distill.data import DistillCollator, to_dataset
from distill.losses import LossContext, build_losses
from distill.students import student_from_teacher
from distill.training import Distiller, DistillTrainer
from distill.training.args import training_arguments


def _setup(tiny_classifier, losses):
    tok = AutoTokenizer.from_pretrained(tiny_classifier)
    teacher = AutoModelForSequenceClassification.from_pretrained(
        tiny_classifier, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    df = pd.DataFrame(make_sentiment_rows(16, seed=3))
    df["label"] = (df["label"] == "positive").astype(int)
    ds = to_dataset(df, tok, max_length=16)
    ctx = LossContext(student_hidden_size=32, teacher_hidden_size=32, student_num_layers=2,
                      teacher_num_layers=4)
    distiller = Distiller(build_losses([LossConfig(**spec) for spec in losses], ctx))
    return tok, teacher, ds, distiller


def _one_step(tmp_path, tiny_classifier, batch, accum, losses, steps=1, anchor=0.0):
    """``steps`` SGD steps in float64, so that two splits of the same rows agree to rounding (~1e-15), not to
    float32's summation noise (~1e-7 relative per sum), and tight bounds test the loss scaling itself."""
    tok, teacher, ds, distiller = _setup(tiny_classifier, losses)
    teacher = teacher.to(torch.float64)
    student = student_from_teacher(teacher, [0, 3]).to(torch.float64)
    before = {k: v.detach().cpu().clone() for k, v in student.state_dict().items()}
    cfg = TrainConfig(batch_size=batch, gradient_accumulation_steps=accum, max_steps=steps, learning_rate=0.1,
                      warmup_ratio=0.0, seed=0, logging_steps=1, weight_decay=0.0, anchor=anchor)
    args = training_arguments(cfg, str(tmp_path / f"b{batch}a{anchor}"), evaluate=False, optim="sgd",
                              save_strategy="no")
    trainer = DistillTrainer(model=student, args=args, train_dataset=ds, data_collator=DistillCollator(tok),
                             distiller=distiller, teacher=teacher, anchor=cfg.anchor)
    trainer.train()
    # the Trainer may have moved the student to a GPU
    after = {k: v.detach().cpu() for k, v in student.state_dict().items()}
    return {k: after[k] - before[k] for k in before}, trainer


def test_gradient_accumulation_matches_one_big_batch(tmp_path, tiny_classifier):
    losses = [{"name": "kd", "weight": 0.5, "params": {"temperature": 2.0}}, {"name": "ce", "weight": 0.5}]
    big, t_big = _one_step(tmp_path, tiny_classifier, batch=8, accum=1, losses=losses)
    small, t_small = _one_step(tmp_path, tiny_classifier, batch=2, accum=4, losses=losses)
    moved = 0
    for k in big:
        torch.testing.assert_close(small[k], big[k], atol=1e-12, rtol=1e-9)
        moved += int(big[k].abs().sum() > 0)
    assert moved > 10  # the step really changed the weights
    # the logged parts are those of the optimised loss: equal micro-batches of rows weigh 1/4 each, as the
    # Trainer divides each micro-batch's loss by the accumulation steps
    log_big, log_small = _logged(t_big), _logged(t_small)
    assert {"loss/kd", "loss/ce"} <= set(log_big) == set(log_small)
    for k, v in log_big.items():
        # loss: float32 in the Trainer
        assert log_small[k] == pytest.approx(v, rel=1e-6 if k == "loss" else 1e-9), k
    for t, log in ((t_big, log_big), (t_small, log_small)):
        total = sum(w * log[f"loss/{k}"] for k, w in zip(t.distiller.keys, t.distiller.weights))
        assert total == pytest.approx(log["loss"], rel=1e-6)


def _logged(trainer) -> dict[str, float]:
    return {k: v for k, v in next(h for h in trainer.state.log_history if "loss" in h).items()
            if k == "loss" or k.startswith("loss/")}


def test_logged_parts_over_several_steps_average_the_steps(tmp_path, tiny_classifier):
    """With logging every 2 steps, each logged part is the mean of the two steps' parts (as ``loss`` is)."""
    losses = [{"name": "kd", "weight": 0.5, "params": {"temperature": 2.0}}, {"name": "ce", "weight": 0.5}]
    tok, teacher, ds, distiller = _setup(tiny_classifier, losses)
    teacher = teacher.to(torch.float64)
    student = student_from_teacher(teacher, [0, 3]).to(torch.float64)
    cfg = TrainConfig(batch_size=4, gradient_accumulation_steps=2, max_steps=2, learning_rate=0.1,
                      warmup_ratio=0.0, seed=0, logging_steps=2, weight_decay=0.0)
    args = training_arguments(cfg, str(tmp_path / "two"), evaluate=False, optim="sgd", save_strategy="no")
    trainer = DistillTrainer(model=student, args=args, train_dataset=ds, data_collator=DistillCollator(tok),
                             distiller=distiller, teacher=teacher)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 1 and logs[0]["step"] == 2
    total = sum(w * logs[0][f"loss/{k}"] for k, w in zip(distiller.keys, distiller.weights))
    assert total == pytest.approx(logs[0]["loss"], rel=1e-6)


def test_every_loss_part_is_logged(tmp_path, tiny_classifier):
    losses = [{"name": "kd", "weight": 0.5}, {"name": "ce", "weight": 0.5},
              {"name": "hidden", "weight": 1.0, "params": {"layer_map": [[1, 1], [2, 4]]}}]
    _, trainer = _one_step(tmp_path, tiny_classifier, batch=8, accum=1, losses=losses)
    logged = [h for h in trainer.state.log_history if "loss" in h][0]
    assert {"loss/kd", "loss/ce", "loss/hidden"} <= set(logged)


def test_projectors_are_optimised(tmp_path, tiny_classifier):
    tok, teacher, ds, _ = _setup(tiny_classifier, [])
    ctx = LossContext(student_hidden_size=32, teacher_hidden_size=32, student_num_layers=2,
                      teacher_num_layers=4)
    distiller = Distiller(build_losses([LossConfig(name="hidden", params={"projector": "linear"})], ctx))
    proj_before = [p.clone() for p in distiller.parameters()]
    assert proj_before
    student = student_from_teacher(teacher, [0, 3])
    cfg = TrainConfig(batch_size=8, max_steps=2, learning_rate=0.05, warmup_ratio=0.0)
    args = training_arguments(cfg, str(tmp_path / "p"), evaluate=False, save_strategy="no")
    DistillTrainer(model=student, args=args, train_dataset=ds, data_collator=DistillCollator(tok),
                   distiller=distiller, teacher=teacher).train()
    # the trainer moved the distiller to its device (a GPU where there is one)
    assert any(not torch.equal(a, b.detach().cpu()) for a, b in zip(proj_before, distiller.parameters()))
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())  # the teacher is frozen


# -- train.anchor (L2-SP: pull toward the starting weights) -------------------------------------------------
_KD_CE = [{"name": "kd", "weight": 0.5, "params": {"temperature": 2.0}}, {"name": "ce", "weight": 0.5}]


def test_anchor_term_is_the_weighted_squared_distance_from_the_start(tmp_path, tiny_classifier):
    """After two SGD steps the pull is ``anchor * sum((w - w_start)**2)``: at the first step it is exactly 0
    (the weights are the start), at the second it equals that sum over the first step's update, and it is
    logged as ``loss/anchor`` inside ``loss``."""
    anchor = 0.5
    moved, trainer = _one_step(tmp_path, tiny_classifier, batch=8, accum=1, losses=_KD_CE, steps=1,
                               anchor=anchor)
    first = [h for h in trainer.state.log_history if "loss" in h][0]
    assert first["loss/anchor"] == 0.0
    moved_sq = sum(float(d.pow(2).sum()) for d in moved.values())
    assert moved_sq > 0
    assert float(trainer._distance_from_start().detach()) == pytest.approx(moved_sq, rel=1e-9)
    _, two = _one_step(tmp_path / "two", tiny_classifier, batch=8, accum=1, losses=_KD_CE, steps=2,
                       anchor=anchor)
    second = [h for h in two.state.log_history if "loss" in h][1]
    assert second["loss/anchor"] == pytest.approx(anchor * moved_sq, rel=1e-9)
    parts = sum(w * second[f"loss/{k}"] for k, w in zip(two.distiller.keys, two.distiller.weights))
    assert parts + second["loss/anchor"] == pytest.approx(second["loss"], rel=1e-6)


def test_anchor_keeps_the_student_nearer_its_start(tmp_path, tiny_classifier):
    free, _ = _one_step(tmp_path / "free", tiny_classifier, batch=4, accum=1, losses=_KD_CE, steps=4)
    held, _ = _one_step(tmp_path / "held", tiny_classifier, batch=4, accum=1, losses=_KD_CE, steps=4,
                        anchor=2.0)
    dist = {name: sum(float(d.pow(2).sum()) for d in run.values()) for name, run in
            (("free", free), ("held", held))}
    assert 0 < dist["held"] < 0.9 * dist["free"]


def test_anchor_under_gradient_accumulation_matches_one_big_batch(tmp_path, tiny_classifier):
    """The pull is added once per optimisation step whatever the micro-batching: 4 micro-batches of 2 rows
    give the weights of one batch of 8 over two steps (the second step is the first where the pull is
    non-zero)."""
    big, _ = _one_step(tmp_path, tiny_classifier, batch=8, accum=1, losses=_KD_CE, steps=2, anchor=0.5)
    small, _ = _one_step(tmp_path, tiny_classifier, batch=2, accum=4, losses=_KD_CE, steps=2, anchor=0.5)
    plain, _ = _one_step(tmp_path / "plain", tiny_classifier, batch=8, accum=1, losses=_KD_CE, steps=2)
    for k in big:
        torch.testing.assert_close(small[k], big[k], atol=1e-12, rtol=1e-9)
    assert any(not torch.allclose(big[k], plain[k], atol=1e-12) for k in big)  # the pull changed the step


def test_anchor_is_checked_and_left_out_of_fingerprints_while_off():
    from distill.config import RecipeError
    from distill.config.training import FSDPConfig

    assert "anchor" not in TrainConfig().fingerprinted()
    assert TrainConfig(anchor=0.1).fingerprinted()["anchor"] == 0.1
    with pytest.raises(RecipeError, match=r"train\.anchor.*-1"):
        TrainConfig(anchor=-1)
    with pytest.raises(RecipeError, match=r"train\.anchor.*sharded"):
        TrainConfig(anchor=0.1, fsdp=FSDPConfig(enabled=True))
