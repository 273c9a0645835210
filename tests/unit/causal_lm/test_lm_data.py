"""Causal-LM data: chunking, prompt masks, vocabulary checks, DDK weights and sampler, store fidelity."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from distill.config import RecipeError
from distill.data.ddk import DomainSampler, ddk_update
from distill.data.text_lm import check_vocabularies, chunk_frame, chunk_texts, prompt_response_rows

from .lm_helpers import make_corpus, make_lm_tokenizer


def test_chunks_have_the_length_and_never_mix_domains(lm_tokenizer):
    df = pd.DataFrame(make_corpus(40))
    rows, names = chunk_frame(df, lm_tokenizer, 16, "domain")
    assert names == ["film", "play"]
    assert all(len(r["input_ids"]) <= 16 for r in rows) and sum(len(r["input_ids"]) == 16 for r in rows) > 10
    play_ids = set(lm_tokenizer(" ".join(df[df.domain == "film"].text),
                                add_special_tokens=False)["input_ids"])
    assert {r["domain"] for r in rows} == {0, 1}
    assert all(set(r["input_ids"]) - {2} <= play_ids for r in rows if r["domain"] == 0)
    ids = chunk_texts(["the king", "the queen"], lm_tokenizer, 4)
    assert ids == [[3, 4, 2, 3], [5, 2]] or ids[0][:3] == [3, 4, 2]  # documents joined by EOS


def test_prompt_response_rows_mask_the_prompt(lm_tokenizer):
    df = pd.DataFrame({"prompt": ["the king"], "response": ["sleeps and dreams"]})
    rows, _ = prompt_response_rows(df, lm_tokenizer, 32, "prompt", "response", chat_template=False)
    assert rows[0]["prompt_length"] == 2 and rows[0]["input_ids"][-1] == lm_tokenizer.eos_token_id


def test_padded_vocab_is_sliced_with_a_warning_and_other_tokenizers_fail(lm_tokenizer, tmp_path):
    with pytest.warns(UserWarning, match="padding"):
        assert check_vocabularies(lm_tokenizer, lm_tokenizer, 64, len(lm_tokenizer)) == len(lm_tokenizer)
    other = make_lm_tokenizer(tmp_path / "other", extra=("zebra",))
    other_order = make_lm_tokenizer(tmp_path / "o2")
    assert check_vocabularies(lm_tokenizer, other_order, 33, 33) == 33
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab={"<pad>": 0, "<unk>": 1, "king": 2, "the": 3}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    diff = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>")
    with pytest.raises(RecipeError, match="across tokenizers with hybrid_kl"):
        check_vocabularies(lm_tokenizer, diff, 33, 33)
    assert other is not None


def test_ddk_update_properties():
    w = [1 / 3] * 3
    new = ddk_update(w, [4.0, 3.0, 6.0], [2.0, 2.0, 2.0], alpha=0.5)
    assert sum(new) == pytest.approx(1.0)
    assert min(new) >= 0.5 / 3 - 1e-12
    assert max(range(3), key=lambda i: new[i]) == 2  # the largest student/teacher gap
    # smooth: repeated updates approach a fixed point, they do not jump to one domain
    for _ in range(50):
        new = ddk_update(new, [4.0, 3.0, 6.0], [2.0, 2.0, 2.0], alpha=0.5)
    assert min(new) >= 0.5 / 3 - 1e-12 and max(new) < 1.0
    # alpha = 1 is a plain multiplicative-weights step
    mw = ddk_update([0.5, 0.5], [1.0, 2.0], [1.0, 1.0], alpha=1.0)
    assert mw[1] / mw[0] == pytest.approx(math.e)


def test_domain_sampler_follows_the_weights():
    domains = [0] * 50 + [1] * 10
    s = DomainSampler(domains, 2, [0.8, 0.2], num_samples=4000, seed=0)
    drawn = [domains[i] for i in s]
    freq = sum(drawn) / len(drawn)
    assert abs(freq - 0.2) < 0.03  # ~4.7 sigma at n = 4000
    s.weights[:] = [0.1, 0.9]  # read at every draw
    drawn = [domains[i] for i in s]
    assert abs(sum(drawn) / len(drawn) - 0.9) < 0.03


def test_topk_store_bytes_and_kl_fidelity(tmp_path, tiny_llama):
    """Per-token top-k logits: bytes per token from the store itself, and the KD loss computed from the
    stored top-k within 1% of the loss from the full logits."""
    from transformers import AutoModelForCausalLM

    from distill.data.text_lm import CausalLMCollator
    from distill.losses import KDLoss
    from distill.outputs import ModelOutputs
    from distill.store import StoreSpec, TeacherStore, build_store
    from distill.students import student_from_teacher

    teacher = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    student = student_from_teacher(teacher, [0])
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(3, 33, (12,), generator=g).tolist(), "prompt_length": 0}
            for _ in range(6)]
    batch = CausalLMCollator(0)(rows)
    with torch.no_grad():
        zt = teacher(input_ids=batch["input_ids"]).logits
        zs = student(input_ids=batch["input_ids"]).logits
    zs = zs + 2.0 * torch.randn(zs.shape, generator=g)  # a student that is still far from the teacher
    spec = StoreSpec(capture=("logits",), topk=16, dtype="float16", shard_size=4)
    build_store(tmp_path, "k", spec,
                lambda idx: ModelOutputs(logits=zt[idx], attention_mask=batch["attention_mask"][idx]),
                num_examples=6, progress=False, log=lambda *_: None)
    store = TeacherStore.open(tmp_path / "k")
    info = store.info()
    assert info["num_tokens"] == 72 and info["bytes_per_token"] < 16 * 6 + 4 + 200  # values+indices+lse+files
    stored = store.fetch(list(range(6)))
    loss = KDLoss(temperature=1.0)
    exact = loss(ModelOutputs(logits=zs), ModelOutputs(logits=zt), batch)
    approx = loss(ModelOutputs(logits=zs), stored, batch)
    assert abs(float(approx) - float(exact)) / float(exact) < 0.01
