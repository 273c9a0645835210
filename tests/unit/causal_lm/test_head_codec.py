"""The head codec: coding the input of an LM's output layer, the stores built with it, its fidelity report."""

from __future__ import annotations

import math

import pytest
import torch

from distill.outputs import ModelOutputs
from distill.store import StoreSpec, TeacherStore, build_store
from distill.store.codec import CODEC_FILE, HeadCodec, _lloyd_max, forward_with_head_input, output_layer
from distill.store.fidelity import measure_fidelity


def _hidden(n=600, h=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, generator=g)
    x[:, 3] *= 8.0  # an outlier channel, as final hidden states have
    return x + 0.5


def _head(v=200, h=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(v, h, generator=g) * 0.3, torch.randn(v, generator=g) * 0.1


def _kl(z, zh):
    lp, lq = torch.log_softmax(z, -1), torch.log_softmax(zh, -1)
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


def test_lloyd_max_levels_of_a_gaussian():
    # the 4-level Lloyd-Max quantiser of N(0, 1) has levels +-0.4528 and +-1.510 (Max 1960)
    x = torch.randn(400_000, generator=torch.Generator().manual_seed(0))
    levels = _lloyd_max(x, 4, iters=200)
    assert torch.allclose(levels, torch.tensor([-1.510, -0.4528, 0.4528, 1.510]), atol=0.02)


@pytest.mark.parametrize("bits", [4, 8])
def test_codes_pack_and_decode_close(bits):
    h, (w, b) = _hidden(), _head()
    codec = HeadCodec.fit(h[:400], w, b, bits=bits)
    codes, rms = codec.encode(h[400:])
    assert codes.dtype == torch.uint8 and codes.shape == (200, 32 * bits // 8) and rms.dtype == torch.float16
    assert codec.bytes_per_token == 32 * bits // 8 + 2
    back = codec.decode(codes, rms)
    rel = float((back - h[400:]).norm() / (h[400:] - h[400:].mean(0)).norm())
    assert rel < (0.12 if bits == 4 else 0.02)
    z = h[400:] @ w.T + b
    kl4 = _kl(z, codec.logits(codes, rms))
    assert kl4 < (0.035 if bits == 4 else 1e-3)  # teacher entropy here: 2.85 nats


def test_rotation_and_lloyd_beat_a_plain_uniform_grid():
    h, (w, b) = _hidden(), _head()
    codec = HeadCodec.fit(h[:400], w, b, bits=4)
    z = h[400:] @ w.T + b
    ours = _kl(z, codec.logits(*codec.encode(h[400:])))
    s = h[400:].abs().amax(-1, keepdim=True) / 7  # per-row absmax, 4 bits, no rotation
    plain = _kl(z, ((h[400:] / s).round().clamp(-7, 7) * s) @ w.T + b)
    assert ours < plain / 3


def test_save_load_roundtrip(tmp_path):
    from safetensors.torch import save_file

    h, (w, b) = _hidden(), _head()
    codec = HeadCodec.fit(h, w, b)
    save_file(codec.tensors(), str(tmp_path / CODEC_FILE))
    again = HeadCodec.load(tmp_path / CODEC_FILE)
    codes, rms = codec.encode(h[:10])
    assert torch.equal(again.encode(h[:10])[0], codes)
    # same tensors; a matmul over differently aligned buffers may sum in another order (~1e-6 apart)
    assert torch.allclose(again.logits(codes, rms), codec.logits(codes, rms), rtol=1e-5, atol=1e-5)


def test_bad_codec_inputs_are_named():
    w, b = _head(h=31)
    with pytest.raises(ValueError, match="odd"):
        HeadCodec.fit(torch.randn(50, 31), w, b, bits=4)
    w, b = _head()
    with pytest.raises(ValueError, match="features"):
        HeadCodec.fit(torch.randn(50, 16), w, b)
    with pytest.raises(ValueError, match="bits"):
        HeadCodec.fit(torch.randn(50, 32), w, b, bits=3)


def test_spec_codec_rules_and_unchanged_topk_keys():
    assert "codec" not in StoreSpec(topk=8).to_dict()  # stores built before the codec keep their keys
    assert StoreSpec(codec="head4").to_dict()["codec"] == "head4"
    with pytest.raises(ValueError, match="topk"):
        StoreSpec(codec="head4", topk=8)
    with pytest.raises(ValueError, match="codec"):
        StoreSpec(codec="head3")


def test_recipe_codec_checks():
    from distill.config import recipe_from_dict
    from distill._dataclass_io import RecipeError as ConfigError

    base = {"task": "text-classification", "teacher": {"model": "t"}, "student": {"model": "s"},
            "data": {"train": "x.csv"}, "losses": [{"name": "kd"}]}
    with pytest.raises(ConfigError, match="store.codec"):
        recipe_from_dict({**base, "store": {"codec": "head4"}})
    with pytest.raises(ConfigError, match="store.topk"):
        recipe_from_dict({**base, "store": {"codec": "head4", "topk": 16}})


# ------------------------------------------------------------------------------ stores on a tiny Llama
@pytest.fixture()
def coded_store(tmp_path, tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    lengths = [12, 7, 16, 9, 14, 5, 11, 16]
    ids = [torch.randint(0, vocab, (n,), generator=g) for n in lengths]

    def batch(indices):
        width = max(lengths[i] for i in indices)
        x = torch.zeros(len(indices), width, dtype=torch.long)
        m = torch.zeros_like(x)
        for j, i in enumerate(indices):
            x[j, :lengths[i]], m[j, :lengths[i]] = ids[i], 1
        return x, m

    calls = {"fit": 0}

    def fit():
        calls["fit"] += 1
        x, m = batch(list(range(8)))
        _, h = forward_with_head_input(model, input_ids=x, attention_mask=m)
        return HeadCodec.fit(h[m.bool()], *output_layer(model, vocab), bits=8)

    @torch.no_grad()
    def compute(indices):
        x, m = batch(indices)
        _, h = forward_with_head_input(model, input_ids=x, attention_mask=m)
        return ModelOutputs(attention_mask=m, extra={"head_input": h})

    @torch.no_grad()
    def full(indices):
        x, m = batch(indices)
        return model(input_ids=x, attention_mask=m).logits, m

    spec = StoreSpec(codec="head8", shard_size=3)
    path = build_store(tmp_path, "k", spec, compute, num_examples=8, batch_size=2, head_codec=fit, progress=False,
                       log=lambda *_: None)
    return path, spec, compute, fit, full, calls


def test_coded_store_gives_every_logit_back(coded_store):
    path, _, _, _, full, calls = coded_store
    store = TeacherStore.open(path)
    assert calls["fit"] == 1 and (path / CODEC_FILE).exists()
    out = store.fetch([2, 0])
    z, m = full([2, 0])
    assert out.logits.shape == z.shape and torch.equal(out.attention_mask, m)
    valid = m.bool()
    assert _kl(z[valid], out.logits[valid]) < 1e-3  # 8 bits
    assert torch.isfinite(out.logits).all()  # padding decodes to finite logits
    info = store.info()
    assert info["fixed_bytes"] == (path / CODEC_FILE).stat().st_size
    assert info["bytes_per_token"] < info["bytes"] / info["num_tokens"]  # the codec is not charged per token
    fid = measure_fidelity(store, list(range(8)), full)
    assert fid["tokens"] == sum([12, 7, 16, 9, 14, 5, 11, 16]) and fid["kl_error"] < 1e-3
    assert fid["top1_agreement"] > 0.95 and "missing_mass" not in fid


def test_a_new_codec_file_rebuilds_the_shards(coded_store):
    path, spec, compute, fit, _, calls = coded_store
    before = TeacherStore.open(path).fetch([1]).logits
    assert TeacherStore.open(path).verify() == []
    # the same build again reuses the codec and every shard
    build_store(path.parent, "k", spec, compute, num_examples=8, batch_size=2, head_codec=fit, progress=False,
                log=lambda *_: None)
    assert calls["fit"] == 1
    # a damaged codec is reported by verify; a missing one is fitted again and every shard is rebuilt
    data = bytearray((path / CODEC_FILE).read_bytes())
    data[-3] ^= 0xFF
    (path / CODEC_FILE).write_bytes(bytes(data))
    assert CODEC_FILE in TeacherStore.open(path).verify()
    (path / CODEC_FILE).unlink()
    build_store(path.parent, "k", spec, compute, num_examples=8, batch_size=2, head_codec=fit, progress=False,
                log=lambda *_: None)
    assert calls["fit"] == 2  # fitted again: the same rows give the same codec, so the shards still fit it
    assert TeacherStore.open(path).verify() == []
    assert torch.equal(TeacherStore.open(path).fetch([1]).logits, before)
    # a codec that differs (another rotation seed) makes every shard coded with the old one stale
    other = HeadCodec.load(path / CODEC_FILE)
    other = HeadCodec(other.weight, other.bias, other.mean, other.scale, other.rotation.flip(0), other.levels, 8)
    (path / CODEC_FILE).unlink()
    logs = []
    build_store(path.parent, "k", spec, compute, num_examples=8, batch_size=2, head_codec=lambda: other,
                progress=False, log=logs.append)
    assert sum("another codec" in line for line in logs) == 3  # 8 rows in shards of 3
    store = TeacherStore.open(path)
    assert store.verify() == [] and torch.allclose(store.fetch([1]).logits, before, atol=0.05)


def test_coded_store_needs_head_inputs(tmp_path):
    h, (w, b) = _hidden(), _head()

    def compute(indices):
        return ModelOutputs(logits=torch.randn(len(indices), 4, 200), attention_mask=torch.ones(len(indices), 4))

    with pytest.raises(ValueError, match="head_input"):
        build_store(tmp_path, "k", StoreSpec(codec="head4"), compute, num_examples=2,
                    head_codec=lambda: HeadCodec.fit(h, w, b), progress=False, log=lambda *_: None)
    with pytest.raises(ValueError, match="head_codec"):
        build_store(tmp_path, "k2", StoreSpec(codec="head4"), compute, num_examples=2, progress=False)


def test_soft_capped_teachers_are_refused(tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="softcapping"):
        output_layer(model, model.config.vocab_size)


def test_fidelity_of_a_topk_store_reports_missing_mass(tmp_path):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 6, 50, generator=g) * 2

    def compute(indices):
        return ModelOutputs(logits=z[indices], attention_mask=torch.ones(len(indices), 6, dtype=torch.long))

    path = build_store(tmp_path, "k", StoreSpec(topk=5), compute, num_examples=4, progress=False,
                       log=lambda *_: None)
    fid = measure_fidelity(TeacherStore.open(path), [0, 1, 2, 3],
                           lambda idx: (z[idx], torch.ones(len(idx), 6, dtype=torch.long)))
    p = torch.softmax(z, -1)
    top = p.topk(5, -1).values.sum(-1)
    assert math.isclose(fid["missing_mass"], float((1 - top).mean()), rel_tol=1e-3)
    assert fid["kl_nats_per_token"] > 0.05 and fid["top1_agreement"] == 1.0
