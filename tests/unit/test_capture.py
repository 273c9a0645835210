"""Capturing Q/K/V with forward hooks, eager attentions, and the trainer asking models only for what the
losses read."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import make_sentiment_rows
from distill.capture import capture_qkv, find_attention_projections, use_eager_attention
from distill.config import LossConfig, TrainConfig
from distill.data import DistillCollator, to_dataset
from distill.losses import LOSSES, DistillLoss, LossContext, build_losses
from distill.models import forward_outputs
from distill.training import Distiller, DistillTrainer
from distill.training.args import training_arguments

MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])


def _bert(layers=2, hidden=16, heads=2, seed=0, vocab=50):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=32)
    return BertForSequenceClassification(cfg)


def _inputs(vocab=50):
    g = torch.Generator().manual_seed(3)
    return {"input_ids": torch.randint(1, vocab, (2, 5), generator=g), "attention_mask": MASK}


def _qkv_hooks(model) -> int:
    return sum(len(m._forward_hooks) for b in find_attention_projections(model)
               for m in (b.query, b.key, b.value))


def test_hooks_are_removed_after_the_block_and_on_error():
    model = _bert().eval()
    with capture_qkv(model, "all"):
        assert _qkv_hooks(model) == 6
        model(**_inputs())
    assert _qkv_hooks(model) == 0
    with pytest.raises(RuntimeError, match="boom"), capture_qkv(model, [1]):
        assert _qkv_hooks(model) == 3
        raise RuntimeError("boom")
    assert _qkv_hooks(model) == 0


def test_captured_projections_are_the_modules_outputs_split_into_heads():
    model = _bert(layers=3, hidden=16, heads=4).train()  # dropout on: projections come before it anyway
    inputs = _inputs()
    seen = {}
    query = model.bert.encoder.layer[1].attention.self.query
    handle = query.register_forward_hook(lambda m, a, out: seen.setdefault("q", out.detach().clone()))
    try:
        with capture_qkv(model, [2]) as cap:
            model(**inputs)
    finally:
        handle.remove()
    qkv = cap.result()
    assert qkv[0] is None and qkv[2] is None
    q, k, v = qkv[1]
    assert q.shape == k.shape == v.shape == (2, 4, 5, 4)  # (B, heads, L, head_dim)
    torch.testing.assert_close(q.transpose(1, 2).reshape(2, 5, 16), seen["q"], rtol=0, atol=0)


def test_eval_mode_projections_rebuild_the_models_attention():
    model = _bert(layers=2, hidden=16, heads=2).eval()
    out = forward_outputs(model, _inputs(), hidden=True, attentions=True, qkv_layers="all")
    # the layer's input is hidden_states[i - 1]: its key projection is what capture returned
    k = model.bert.encoder.layer[1].attention.self.key(out.hidden_states[1])  # (B, L, 16)
    torch.testing.assert_close(out.qkv[1][1], k.view(2, 5, 2, 8).transpose(1, 2))
    for layer in range(2):
        q, k, _ = out.qkv[layer]
        scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(MASK[:, None, None, :] == 0,
                                                                                 -1e9)
        torch.testing.assert_close(out.attentions[layer], scores.softmax(-1), atol=1e-6, rtol=1e-5)


def test_attentions_switch_sdpa_models_to_eager():
    model = _bert().eval()
    assert model.config._attn_implementation != "eager"  # transformers 5 default: sdpa, returns no attentions
    out = forward_outputs(model, _inputs(), attentions=True)
    assert model.config._attn_implementation == "eager"
    assert out.attentions is not None and len(out.attentions) == 2
    a = out.attentions[0]
    assert a.shape == (2, 2, 5, 5)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 2, 5))
    assert not a[1, :, :, 3:].any()  # padded keys get no attention
    assert use_eager_attention(model) is False  # already eager: nothing to switch


def test_distilbert_and_mpnet_projections_are_found():
    from transformers import DistilBertConfig, DistilBertModel, MPNetConfig, MPNetModel

    distil = DistilBertModel(DistilBertConfig(vocab_size=50, dim=16, n_layers=2, n_heads=4, hidden_dim=32,
                                              max_position_embeddings=32)).eval()
    mpnet = MPNetModel(MPNetConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=40)).eval()
    for model, layers, heads in ((distil, 2, 4), (mpnet, 3, 2)):
        blocks = find_attention_projections(model)
        assert len(blocks) == layers and all(b.num_heads == heads for b in blocks)
        with capture_qkv(model, [layers]) as cap:
            model(**_inputs())
        q, _, _ = cap.result()[layers - 1]
        assert q.shape == (2, heads, 5, 16 // heads)
        assert _qkv_hooks(model) == 0


def test_models_without_named_projections_are_refused():
    with pytest.raises(ValueError, match="fused QKV"):
        find_attention_projections(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    with pytest.raises(ValueError, match="out of range"), capture_qkv(_bert(), [3]):
        pass


def test_minilm_v2_trains_a_two_head_student_from_a_four_head_teacher():
    teacher = _bert(layers=3, hidden=32, heads=4, seed=0).eval()
    student = _bert(layers=2, hidden=16, heads=2, seed=1)
    ctx = LossContext(student_hidden_size=16, teacher_hidden_size=32, student_num_layers=2,
                      teacher_num_layers=3)
    loss = LOSSES.get("minilm_v2").build({"relation_heads": 4}, ctx)
    distiller = Distiller([("minilm_v2", 1.0, loss)])
    assert distiller.qkv_layers("student") == [2] and distiller.qkv_layers("teacher") == [3]
    inputs = _inputs()
    with torch.no_grad():
        t_out = forward_outputs(teacher, inputs, qkv_layers=distiller.qkv_layers("teacher"))
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    history = []
    for _ in range(15):
        total, parts = distiller(forward_outputs(student, inputs, qkv_layers=[2]), t_out, inputs)
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(float(total.detach()))
    assert set(parts) == {"minilm_v2", "minilm_v2/qq", "minilm_v2/kk", "minilm_v2/vv"}
    assert history[-1] < 0.5 * history[0], history
    # v1 refuses different head counts and says what to use
    with pytest.raises(ValueError, match="minilm_v2"):
        LOSSES.get("minilm").build({}, ctx)(forward_outputs(student, inputs, qkv_layers=[2]), t_out, inputs)


# ------------------------------------------------------------------------------------------------ trainer
class _AttentionProbe(DistillLoss):
    """Reads HF attention matrices (not registered): 0 at identity, finite otherwise."""

    name = "attention_probe"
    teacher_needs = ("attentions",)
    student_needs = ("attentions",)

    def forward(self, student, teacher, batch):
        return (student.attentions[-1].mean() - teacher.attentions[-1].mean()).pow(2)


def _train_one_step(tmp_path, tiny_classifier, distiller, monkeypatch):
    import distill.training.trainer as trainer_module

    calls = []
    real = trainer_module.forward_outputs

    def recording(model, inputs, **kwargs):
        out = real(model, inputs, **kwargs)
        calls.append((kwargs, out))
        return out

    monkeypatch.setattr(trainer_module, "forward_outputs", recording)
    tok = AutoTokenizer.from_pretrained(tiny_classifier)
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_classifier)  # 4 layers x 4 heads x 32
    student = _bert(layers=2, hidden=16, heads=2, vocab=len(tok))
    df = pd.DataFrame(make_sentiment_rows(8, seed=3))
    df["label"] = (df["label"] == "positive").astype(int)
    cfg = TrainConfig(batch_size=8, max_steps=1, learning_rate=0.01, warmup_ratio=0.0, logging_steps=1)
    args = training_arguments(cfg, str(tmp_path / "t"), evaluate=False, save_strategy="no")
    trainer = DistillTrainer(model=student, args=args, train_dataset=to_dataset(df, tok, max_length=16),
                             data_collator=DistillCollator(tok), distiller=distiller, teacher=teacher)
    trainer.train()
    student_call, teacher_call = calls[0], calls[1]
    return student_call, teacher_call, trainer


def _ctx():
    return LossContext(student_hidden_size=16, teacher_hidden_size=32, student_num_layers=2,
                       teacher_num_layers=4)


def test_trainer_asks_for_nothing_extra_without_such_losses(tmp_path, tiny_classifier, monkeypatch):
    distiller = Distiller(build_losses([LossConfig(name="kd"), LossConfig(name="ce")], _ctx()))
    (s_kwargs, s_out), (t_kwargs, t_out), _ = _train_one_step(tmp_path, tiny_classifier, distiller,
                                                              monkeypatch)
    for kwargs, out in ((s_kwargs, s_out), (t_kwargs, t_out)):
        assert kwargs.get("qkv_layers") is None and not kwargs.get("attentions") and not kwargs.get("hidden")
        assert out.qkv is None and out.attentions is None


def test_trainer_captures_qkv_layers_the_losses_read(tmp_path, tiny_classifier, monkeypatch):
    specs = [LossConfig(name="kd"), LossConfig(name="minilm_v2", params={"relation_heads": 4}),
             LossConfig(name="attention_mse", params={"head_mode": "mean", "layer_map": [[1, 2]]})]
    distiller = Distiller(build_losses(specs, _ctx()))
    (s_kwargs, s_out), (t_kwargs, t_out), trainer = _train_one_step(tmp_path, tiny_classifier, distiller,
                                                                    monkeypatch)
    assert s_kwargs["qkv_layers"] == [1, 2] and t_kwargs["qkv_layers"] == [2, 4]
    assert not s_kwargs["attentions"] and not t_kwargs["attentions"]
    assert [x is None for x in s_out.qkv] == [False, False]
    assert [x is None for x in t_out.qkv] == [True, False, True, False]
    logged = next(h for h in trainer.state.log_history if "loss" in h)
    assert {"loss/minilm_v2", "loss/minilm_v2/qq", "loss/attention_mse"} <= set(logged)


def test_trainer_gets_eager_attentions_when_a_loss_reads_them(tmp_path, tiny_classifier, monkeypatch):
    distiller = Distiller([("attention_probe", 1.0, _AttentionProbe())])
    (s_kwargs, s_out), (t_kwargs, t_out), _ = _train_one_step(tmp_path, tiny_classifier, distiller,
                                                              monkeypatch)
    assert s_kwargs["attentions"] and t_kwargs["attentions"] and s_kwargs["qkv_layers"] is None
    assert len(s_out.attentions) == 2 and len(t_out.attentions) == 4
    assert s_out.attentions[0].shape[1] == 2 and t_out.attentions[0].shape[1] == 4
