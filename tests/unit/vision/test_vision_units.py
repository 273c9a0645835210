"""Image pieces: seeded augmentation, the augmented-view (TinyViT) store with bit-identical replay, image
sources, the model wrapper's feature maps and the Genie-style data-free synthesis."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from distill.config import DataConfig, RecipeError
from distill.data.images import Augment, load_image_splits, load_numpy_images, view_seed
from distill.store.augment import AugmentedStore, build_augmented_store
from distill.students.vision import SmallCNN, build_image_model, load_image_model, save_image_model


def _images(n=12, size=8, seed=0):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def test_view_seed_is_a_fixed_function_of_base_epoch_index():
    a = view_seed(7, 3, np.arange(5))
    assert np.array_equal(a, view_seed(7, 3, np.arange(5)))
    assert (not np.array_equal(a, view_seed(7, 4, np.arange(5)))
            and not np.array_equal(a, view_seed(8, 3, np.arange(5))))
    assert a.min() >= 0 and a.max() < 2**31
    assert int(view_seed(0, 0, 1)) == int(view_seed(0, 0, np.array([0, 1]))[1])  # scalar == vector


def test_augment_depends_only_on_image_and_seed():
    x = _images()
    aug = Augment(pad=2, rotate=15.0, cutout=3)
    seeds = view_seed(1, 0, np.arange(len(x)))
    batch = aug(x, seeds)
    alone = torch.stack([aug.one(x[i], int(seeds[i])) for i in reversed(range(len(x)))][::-1])
    assert torch.equal(batch, alone)  # bit-identical, whatever the batch it came in
    assert not torch.equal(batch, x) and not torch.equal(aug(x, seeds + 1), batch)
    assert torch.equal(Augment(pad=0)(x, seeds), x)


def test_store_keeps_seeds_and_topk_and_replays_identical_views(tmp_path):
    x = _images(20)
    torch.manual_seed(0)
    teacher = SmallCNN(5, 1, (4, 4, 8)).eval()
    aug = Augment(pad=1, rotate=10.0)
    seen: list[torch.Tensor] = []

    def run_teacher(view):
        seen.append(view.clone())
        return teacher(view)

    path = build_augmented_store(tmp_path, "k1", x, run_teacher, aug, epochs=2, topk=2, base_seed=3,
                                 batch_size=8, log=lambda m: None)
    store = AugmentedStore.open(path)
    views_epoch1 = torch.cat(seen[3:6])  # 20 images in batches of 8 -> 3 teacher calls per epoch
    idx = np.array([17, 2, 9])
    replay = store.views(x[idx], 1, idx)
    assert torch.equal(replay, views_epoch1[idx])  # the student sees exactly the teacher's view
    seeds, out = store.fetch(1, idx)
    assert np.array_equal(seeds, view_seed(3, 1, idx))
    with torch.no_grad():
        p = torch.softmax(teacher(replay), -1)
    top = p.topk(2, -1)
    assert torch.equal(out.logits.indices, top.indices)
    torch.testing.assert_close(out.logits.values.exp(), top.values, atol=1e-3, rtol=1e-3)  # float16 storage
    assert store.bytes_per_image_per_epoch() == 4 + 2 * 3
    assert store.info()["epochs"] == 2 and store.info()["k"] == 2
    assert store.fetch(3, idx)[0].tolist() == store.fetch(1, idx)[0].tolist()  # epochs beyond the store wrap


def test_store_resumes_and_repairs_epoch_files(tmp_path):
    x = _images(6)
    teacher = SmallCNN(3, 1, (4, 4, 4)).eval()
    calls = []

    def fn(v):
        calls.append(1)
        return teacher(v)

    path = build_augmented_store(tmp_path, "k", x, fn, Augment(), epochs=2, topk=0, base_seed=0,
                                 log=lambda m: None)
    n = len(calls)
    build_augmented_store(tmp_path, "k", x, fn, Augment(), epochs=2, topk=0, base_seed=0, log=lambda m: None)
    assert len(calls) == n  # complete: nothing recomputed
    (path / "epoch-00001.npz").write_bytes(b"broken")
    build_augmented_store(tmp_path, "k", x, fn, Augment(), epochs=2, topk=0, base_seed=0, log=lambda m: None)
    assert len(calls) == n + n // 2  # only the damaged epoch
    assert json.loads((path / "manifest.json").read_text())["k"] == 3  # topk 0 keeps every class


def test_packaged_digits_and_numpy_sources(tmp_path):
    sp = load_image_splits(DataConfig(source="packaged", name="digits"))
    assert sp.shape == (1, 8, 8) and sp.num_labels == 10
    assert float(sp.train.images.max()) <= 1.0
    assert len(sp.train) + len(sp.validation) + len(sp.test) == 1797
    np.savez(tmp_path / "d.npz", images=np.random.rand(10, 6, 6, 3), labels=np.array(list("ab") * 5))
    data, labels = load_numpy_images(str(tmp_path / "d.npz"))
    assert data.images.shape == (10, 3, 6, 6) and labels == ["a", "b"]
    with pytest.raises(RecipeError, match="mnist"):
        load_image_splits(DataConfig(source="packaged", name="cifar"))


def test_image_folder_source(tmp_path):
    from PIL import Image

    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray((np.random.rand(5, 5) * 255).astype("uint8")).save(tmp_path / c / f"{i}.png")
    from distill.data.images import load_image_folder

    data, labels = load_image_folder(str(tmp_path))
    assert (labels == ["cat", "dog"] and data.images.shape == (6, 1, 5, 5)
            and data.labels.tolist() == [0] * 3 + [1] * 3)


def test_wrapper_feature_maps_hooks_and_save_load(tmp_path):
    model = build_image_model("packaged:cnn-tiny", 10, 1)
    out = model(pixel_values=torch.rand(2, 1, 8, 8), output_features=True)
    assert list(out.feature_maps) == ["stage1", "stage2", "stage3"] and out.logits.shape == (2, 10)
    net = build_image_model("tests.unit.vision.test_vision_units:tiny_net", 4, 1)
    net.feature_layers = ["0"]
    got = net(pixel_values=torch.rand(2, 1, 6, 6), output_features=True)
    assert got.feature_maps["0"].shape == (2, 3, 6, 6) and got.logits.shape == (2, 4)
    save_image_model(model, tmp_path / "m")
    again = load_image_model(tmp_path / "m")
    x = torch.rand(3, 1, 8, 8)
    model.eval(), again.eval()
    assert torch.equal(model(pixel_values=x).logits, again(pixel_values=x).logits)
    with pytest.raises(RecipeError, match="timm|packaged"):
        build_image_model("packaged:resnet9000", 10, 1)


def tiny_net(num_classes: int, in_channels: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Conv2d(in_channels, 3, 3, padding=1), torch.nn.Flatten(),
                               torch.nn.LazyLinear(num_classes))


def test_datafree_synthesis_lowers_the_batchnorm_statistics_loss():
    from distill.teachers.datafree import SynthesisSettings, synthesize

    torch.manual_seed(0)
    teacher = build_image_model("packaged:cnn-tiny", 10, 1)
    teacher.train()
    with torch.no_grad():  # give the BN layers running statistics of some "real" data
        for _ in range(5):
            teacher(pixel_values=torch.rand(16, 1, 8, 8) ** 2)
    first = synthesize(teacher, (1, 8, 8), 10, SynthesisSettings(num_images=16, batch_size=16, steps=1))
    later = synthesize(teacher, (1, 8, 8), 10, SynthesisSettings(num_images=16, batch_size=16, steps=40))
    assert later["images"].shape == (16, 1, 8, 8) and 0 <= float(later["images"].min())
    assert later["bns_loss"][0] < first["bns_loss"][0]
    assert all(p.requires_grad for p in teacher.parameters())  # the teacher is left as it was


def test_datafree_hooks_every_batchnorm_layer_and_the_class_term_steers_labels():
    from distill.teachers.datafree import BNStatistics, SynthesisSettings, synthesize, total_variation

    torch.manual_seed(0)
    teacher = build_image_model("packaged:cnn-tiny", 4, 1)
    stats = BNStatistics(teacher)
    assert len(stats.handles) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.modules()) == 6
    stats.remove()
    # a teacher that tells 4 classes apart: which quadrant of the 8x8 image is bright
    y = torch.arange(64) % 4
    x = torch.rand(64, 1, 8, 8) * 0.2
    for i, c in enumerate(y.tolist()):
        x[i, :, 4 * (c // 2):4 * (c // 2) + 4, 4 * (c % 2):4 * (c % 2) + 4] += 0.8
    opt = torch.optim.Adam(teacher.parameters(), lr=0.02)
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(teacher(pixel_values=x).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    teacher.eval()
    assert (teacher(pixel_values=x).logits.argmax(-1) == y).float().mean() > 0.9
    base = {"num_images": 32, "batch_size": 32, "steps": 30, "learning_rate": 0.05, "tv_weight": 0.0,
            "jitter": 0}
    plain = synthesize(teacher, (1, 8, 8), 4, SynthesisSettings(ce_weight=0.0, **base))
    steered = synthesize(teacher, (1, 8, 8), 4, SynthesisSettings(ce_weight=10.0, **base))
    assert torch.equal(plain["labels"], steered["labels"])  # the drawn labels depend on the seed only
    assert steered["label_hit_rate"] > plain["label_hit_rate"]
    smooth = synthesize(teacher, (1, 8, 8), 4,
                        SynthesisSettings(ce_weight=0.0, **{**base, "tv_weight": 50.0}))
    assert total_variation(smooth["images"]) < total_variation(plain["images"])
    jittered = synthesize(teacher, (1, 8, 8), 4, SynthesisSettings(**{**base, "jitter": 1, "steps": 3}))
    assert jittered["images"].shape == (32, 1, 8, 8)


def test_datafree_first_bn_weight_scales_only_the_first_layer_and_latents_get_their_own_rate():
    from distill.teachers.datafree import BNStatistics, SynthesisSettings, synthesize

    torch.manual_seed(0)
    teacher = build_image_model("packaged:cnn-tiny", 4, 1).eval()
    x = torch.rand(8, 1, 8, 8)
    plain = BNStatistics(teacher)
    teacher(pixel_values=x)
    base, plain.losses = list(plain.losses), []
    plain.remove()
    heavy = BNStatistics(teacher, first_weight=10.0)
    teacher(pixel_values=x)
    heavy.remove()
    assert torch.allclose(heavy.losses[0], 10 * base[0])
    assert all(torch.allclose(a, b) for a, b in zip(heavy.losses[1:], base[1:]))
    out = synthesize(teacher, (1, 8, 8), 4, SynthesisSettings(num_images=8, batch_size=8, steps=2,
                                                              latent_learning_rate=None, generator_width=8))
    assert out["images"].shape == (8, 1, 8, 8)


def test_anchor_is_refused_for_image_students():
    from distill.config import recipe_from_dict
    from distill.tasks.image_classification import plan_image_classification

    r = recipe_from_dict({"task": "image-classification", "teacher": {"model": "packaged:cnn-teacher"},
                          "student": {"model": "packaged:cnn-tiny"},
                          "data": {"source": "packaged", "name": "digits"}, "train": {"anchor": 0.1}})
    with pytest.raises(RecipeError, match=r"train\.anchor: 0\.1 .*image"):
        plan_image_classification(r)
