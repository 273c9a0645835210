"""Resume inside an image training stage: a run stopped after an epoch and started again from its end-of-epoch
checkpoint ends with bit-identical weights to a run that was never stopped."""

from __future__ import annotations

import pytest
import torch

from distill.config import LossConfig
from distill.data.images import Augment, ImageSet
from distill.losses import LossContext, build_losses
from distill.students.vision import build_image_model
from distill.training import Distiller
from distill.training.vision import load_checkpoint, save_checkpoint, train_image_model


class Stop(Exception):
    pass


def _data(n=48):
    g = torch.Generator().manual_seed(0)
    return ImageSet(torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g))


def _model():
    torch.manual_seed(3)
    return build_image_model("packaged:cnn-tiny", 3, 1)


def _train(model, ckpt=None, key="k", stop_after=None):
    distiller = Distiller(build_losses([LossConfig(name="ce")], LossContext(num_classes=3)))

    def stop(done):
        if done == stop_after:
            raise Stop

    return train_image_model(model, distiller, _data(), epochs=3, batch_size=16, learning_rate=0.01, seed=5,
                             augment=Augment(pad=1, rotate=5.0), checkpoint=ckpt, checkpoint_key=key,
                             on_epoch_end=stop)


def test_interrupted_run_resumes_to_bit_identical_weights(tmp_path):
    straight = _model()
    _train(straight)

    ckpt = tmp_path / "ckpt" / "stage.pt"
    first = _model()
    with pytest.raises(Stop):
        _train(first, ckpt, stop_after=1)
    assert ckpt.exists() and load_checkpoint(ckpt, "k")["epoch"] == 1
    assert not list(ckpt.parent.glob("*.tmp"))  # written atomically, nothing left over

    resumed = _model()  # a fresh process would rebuild the same initial model, then load the checkpoint
    info = _train(resumed, ckpt)
    assert info["resumed_from_epoch"] == 1 and info["steps"] == 9
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_checkpoint_of_another_stage_key_is_ignored(tmp_path):
    ckpt = tmp_path / "stage.pt"
    save_checkpoint(ckpt, {"key": "other", "epoch": 2})
    assert load_checkpoint(ckpt, "k") is None and load_checkpoint(ckpt, "other")["epoch"] == 2
    info = _train(_model(), ckpt, key="k")
    assert info["resumed_from_epoch"] == 0 and load_checkpoint(ckpt, "k")["epoch"] == 3
