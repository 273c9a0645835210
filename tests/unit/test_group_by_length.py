"""train.group_by_length: reaches TrainingArguments, batches pad to less, and leaves the stage fingerprints of
recipes that do not set it as they were."""

from __future__ import annotations

import pandas as pd
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distill._dataclass_io import from_dict
from distill.config import TrainConfig
from distill.data import DistillCollator, to_dataset
from distill.losses import LossContext, build_losses
from distill.training import Distiller, DistillTrainer
from distill.training.args import training_arguments


def test_flag_reaches_the_sampler_strategy(tmp_path):
    assert training_arguments(TrainConfig(), str(tmp_path / "a")).train_sampling_strategy == "random"
    cfg = from_dict(TrainConfig, {"group_by_length": True})
    assert training_arguments(cfg, str(tmp_path / "b")).train_sampling_strategy == "group_by_length"


def test_fingerprint_unchanged_while_off():
    off = TrainConfig().fingerprinted()
    assert "group_by_length" not in off  # stages finished before the field existed are reused
    assert TrainConfig(group_by_length=True).fingerprinted()["group_by_length"] is True


def _padded_tokens(tmp_path, tiny_classifier, group: bool) -> tuple[int, int]:
    tok = AutoTokenizer.from_pretrained(tiny_classifier)
    words = "good bad fine dull great awful plot cast".split()
    texts = [" ".join(words[(i + j) % len(words)] for j in range(1 + (i * 7) % 40)) for i in range(96)]
    ds = to_dataset(pd.DataFrame({"text": texts, "label": [i % 2 for i in range(96)]}), tok, max_length=64)
    cfg = TrainConfig(batch_size=8, max_steps=1, group_by_length=group, seed=0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier)
    args = training_arguments(cfg, str(tmp_path / str(group)), evaluate=False)
    trainer = DistillTrainer(model=model, args=args,
                             train_dataset=ds, data_collator=DistillCollator(tok),
                             distiller=Distiller(build_losses([], LossContext())), teacher=None)
    batches = list(trainer.get_train_dataloader())
    seen = sorted(int(i) for b in batches for i in b["example_index"])
    padded = sum(int(b["input_ids"].numel()) for b in batches)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    assert seen == list(range(96))  # every row once per epoch, grouped or not
    return padded, real


def test_grouped_batches_pad_to_less(tmp_path, tiny_classifier):
    torch.manual_seed(0)
    padded_random, real = _padded_tokens(tmp_path, tiny_classifier, group=False)
    torch.manual_seed(0)
    padded_grouped, real_grouped = _padded_tokens(tmp_path, tiny_classifier, group=True)
    assert real_grouped == real  # the same rows
    assert padded_grouped < 0.8 * padded_random, (padded_grouped, padded_random)


def test_bucket_sampler_serves_every_row_once_in_length_buckets_and_a_new_order_each_epoch():
    from distill.training.sampling import LengthBucketSampler

    lengths = [(i * 37) % 61 + 1 for i in range(203)]  # 203 rows: 6 full batches of 32 and one of 11
    s = LengthBucketSampler(lengths, batch_size=32, seed=5, bucket_batches=3)
    first = s.batches()
    assert sorted(i for b in first for i in b) == list(range(203))
    assert [len(b) for b in first] == [32] * 6 + [11]  # the short batch last: the loader's groups are these
    assert list(s) == [i for b in first for i in b]
    # inside a batch the lengths are close: far less spread than a random batch of the same rows
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in first[:-1])
    assert spread < 0.5 * 6 * 60
    assert s.batches() == first  # same epoch, same order (a resumed run replays it)
    s.set_epoch(1)
    second = s.batches()
    assert second != first and sorted(i for b in second for i in b) == list(range(203))
    # batches from different buckets interleave: not longest-to-shortest within a bucket every epoch
    assert LengthBucketSampler(lengths, 32, seed=6, bucket_batches=3).batches() != first
