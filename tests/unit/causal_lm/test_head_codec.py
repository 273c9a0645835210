"""The head codec: coding the input of an LM's output layer, the stores built with it, its fidelity report."""

from __future__ import annotations

import math

import pytest
import torch

from distill.outputs import ModelOutputs
from distill.store import StoreSpec, TeacherStore, build_store
from distill.store.codec import (
    CODEC_FILE,
    CodecFormatError,
    HeadCodec,
    _lloyd_max,
    allocate_widths,
    forward_with_head_input,
    output_fisher,
    output_layer,
)
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
    w, b = _head()
    with pytest.raises(ValueError, match="features"):
        HeadCodec.fit(torch.randn(50, 16), w, b)
    with pytest.raises(ValueError, match="bits"):
        HeadCodec.fit(torch.randn(50, 32), w, b, bits=9)
    with pytest.raises(ValueError, match="metric"):
        HeadCodec.fit(torch.randn(50, 32), w, b, metric="cosine")


def test_widths_follow_variance_and_spend_the_budget_exactly():
    var = torch.tensor([100.0, 10.0, 1.0, 1.0, 0.1, 1e-4])
    widths = allocate_widths(var, 6 * 3)
    assert int(widths.sum()) == 18 and int(widths.max()) <= 8
    assert widths.tolist() == sorted(widths.tolist(), reverse=True)  # more variance, never fewer bits
    assert widths[2] == widths[3]  # equal variances, equal widths
    # a factor 4 in variance is worth about one bit (the Gaussian error falls ~4x per bit)
    assert allocate_widths(torch.tensor([16.0, 4.0, 1.0]), 6).tolist() == [3, 2, 1]
    assert allocate_widths(torch.ones(4), 32).tolist() == [8, 8, 8, 8]
    with pytest.raises(ValueError, match="budget"):
        allocate_widths(torch.ones(4), 33)


def test_output_fisher_is_the_mean_per_token_fisher():
    h, (w, b) = _hidden(n=40), _head()
    want = torch.zeros(32, 32, dtype=torch.float64)
    for row in h.double():
        p = torch.softmax(w.double() @ row + b.double(), -1)
        want += w.double().T @ (torch.diag(p) - torch.outer(p, p)) @ w.double()
    assert torch.allclose(output_fisher(h, w, b, chunk=7), want / 40, atol=1e-6)


def test_fisher_metric_spends_no_bits_where_the_head_does_not_look():
    # channels 0-7 vary a lot but the output layer ignores them: a Euclidean PCA codes them, the Fisher one
    # not
    g = torch.Generator().manual_seed(2)
    h = torch.randn(2000, 32, generator=g)
    h[:, :8] *= 20.0
    w, b = _head()
    w[:, :8] = 0.0
    fit, test = h[:1500], h[1500:]
    z = test @ w.T + b
    kls = {}
    for metric in ("fisher", "euclidean"):
        codec = HeadCodec.fit(fit, w, b, bits=3, metric=metric)
        kls[metric] = _kl(z, codec.logits(*codec.encode(test)))
    assert kls["fisher"] < kls["euclidean"] / 3


def test_bit_stream_round_trips_odd_widths_and_sizes():
    # 31 coordinates at 3 bits on average: 93 bits in 12 bytes, widths from 0 to 8 bits
    h = _hidden(h=31)
    w, b = _head(h=31)
    codec = HeadCodec.fit(h[:400], w, b, bits=3)
    assert len(set(codec.widths.tolist())) > 2  # widths differ between coordinates
    codes, rms = codec.encode(h[400:])
    assert codes.shape == (200, 12) and codec.bytes_per_token == 14
    # the same quantisation done by hand, coordinate by coordinate: nearest level of the coordinate's width
    z = ((h[400:] - codec.mean) @ codec.transform) / codec.std / rms.float().unsqueeze(-1)
    want = torch.zeros_like(z)
    for j, width in enumerate(codec.widths.tolist()):
        if width:
            lv = codec.levels[width, :2 ** width]
            want[:, j] = lv[(z[:, j:j + 1] - lv).abs().argmin(-1)]
    want = (want * rms.float().unsqueeze(-1) * codec.std) @ codec.inverse + codec.mean
    assert torch.allclose(codec.decode(codes, rms), want, atol=1e-5)
    assert codec.decode(codes.view(20, 10, 12), rms.view(20, 10)).shape == (20, 10, 31)


def test_an_older_codec_file_is_refused_and_refitted(tmp_path):
    from safetensors.torch import save_file

    h, (w, b) = _hidden(), _head()
    old = {k: v for k, v in HeadCodec.fit(h, w, b).tensors().items() if k != "format"}
    save_file(old, str(tmp_path / CODEC_FILE))
    with pytest.raises(CodecFormatError, match="format-1"):
        HeadCodec.load(tmp_path / CODEC_FILE)
    with pytest.raises(ValueError, match="format 1"):
        StoreSpec.from_dict({"codec": "head4", "topk": 0})  # a store key from before format 2

    def compute(indices):
        return ModelOutputs(attention_mask=torch.ones(len(indices), 3, dtype=torch.long),
                            extra={"head_input": h[:3 * len(indices)].view(len(indices), 3, 32)})

    (tmp_path / "k").mkdir()
    (tmp_path / "k" / CODEC_FILE).write_bytes((tmp_path / CODEC_FILE).read_bytes())
    with pytest.warns(UserWarning, match="re-coding"):
        path = build_store(tmp_path, "k", StoreSpec(codec="head4"), compute, num_examples=4,
                           head_codec=lambda: HeadCodec.fit(h, w, b), progress=False, log=lambda *_: None)
    assert TeacherStore.open(path).verify() == []


def test_spec_codec_rules_and_unchanged_topk_keys():
    assert "codec" not in StoreSpec(topk=8).to_dict()  # stores built before the codec keep their keys
    spec = StoreSpec(codec="head3", topk=0)
    assert spec.to_dict()["codec"] == "head3" and spec.to_dict()["codec_format"] == 2
    assert StoreSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="topk"):
        StoreSpec(codec="head4", topk=8)
    with pytest.raises(ValueError, match="codec"):
        StoreSpec(codec="head5")


def test_recipe_codec_checks():
    from distill._dataclass_io import RecipeError as ConfigError
    from distill.config import recipe_from_dict

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
    path = build_store(tmp_path, "k", spec, compute, num_examples=8, batch_size=2, head_codec=fit,
                       progress=False, log=lambda *_: None)
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
    # a codec that differs (another mean) makes every shard coded with the old one stale
    o = HeadCodec.load(path / CODEC_FILE)
    other = HeadCodec(o.weight, o.bias, o.mean + 1e-3, o.transform, o.inverse, o.std, o.widths, o.levels, 8)
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
        return ModelOutputs(logits=torch.randn(len(indices), 4, 200),
                            attention_mask=torch.ones(len(indices), 4))

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


def test_codec_copies_decode_alike_and_fisher_uses_a_seeded_subset():
    h, (w, b) = _hidden(), _head()
    codec = HeadCodec.fit(h[:400], w, b, bits=4, fisher_tokens=100)
    again = HeadCodec.fit(h[:400], w, b, bits=4, fisher_tokens=100)
    assert torch.equal(codec.transform, again.transform)  # the subset is seeded: the same codec twice
    whole = HeadCodec.fit(h[:400], w, b, bits=4, fisher_tokens=400)
    assert not torch.equal(codec.transform, whole.transform)  # the cap really cut the Fisher pass
    codes, rms = codec.encode(h[400:])
    copy = codec.to("cpu")
    assert copy is not codec and torch.equal(copy.logits(codes, rms), codec.logits(codes, rms))
    assert codec.weight.device.type == "cpu"


def test_fetch_decodes_on_the_asked_device(coded_store):
    path = coded_store[0]
    store = TeacherStore.open(path)
    plain, on_cpu = store.fetch([3, 1]), store.fetch([3, 1], device="cpu")
    assert torch.equal(plain.logits, on_cpu.logits)
    if torch.cuda.is_available():  # the GPU machine: only the codes travel, the logits are made there
        on_gpu = store.fetch([3, 1], device="cuda")
        assert on_gpu.logits.device.type == "cuda"
        torch.testing.assert_close(on_gpu.logits.cpu(), plain.logits, atol=1e-3, rtol=1e-4)
