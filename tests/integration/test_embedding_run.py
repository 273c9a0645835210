"""task: sentence-embedding end to end on tiny random models: a sentence-transformers teacher built in code,
transformer / static / pre-trained students, the store, resume, and the exported sentence-transformers
directory (which must encode exactly like the trained student)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from tests.conftest import make_bert, make_sentiment_rows

from distill.config import RecipeError, recipe_from_dict

pytest.importorskip("sentence_transformers")


@pytest.fixture(scope="session")
def st_teacher(tiny_dir, tiny_tokenizer):
    """A 4-layer random BERT saved as a sentence-transformers model (Transformer + mean Pooling +
    Normalize)."""
    from transformers import AutoModel

    from distill.export.sentence_transformers import save_sentence_transformer
    from distill.sentence_encoder import SentenceEncoder

    src = make_bert(tiny_dir / "st_backbone", tiny_tokenizer, layers=4, seed=3)
    encoder = SentenceEncoder(AutoModel.from_pretrained(src), "mean", normalize=True)
    return save_sentence_transformer(encoder, tiny_tokenizer, tiny_dir / "st_teacher", max_length=32)


@pytest.fixture(scope="session")
def text_csv(tiny_dir):
    path = tiny_dir / "sentences.csv"
    pd.DataFrame({"text": [r["text"] for r in make_sentiment_rows(200, seed=5)]}).to_csv(path, index=False)
    return path


def embed_recipe(tmp_path, teacher, data_path, **sections):
    recipe = {
        "task": "sentence-embedding",
        "output_dir": str(tmp_path / "run"),
        "teacher": {"model": str(teacher)},
        "student": {"from_teacher": True, "layers": [0, 3]},
        "data": {"train": str(data_path), "max_length": 32},
        "losses": [{"name": "embedding", "loss": "mse"}],
        "train": {"epochs": 2, "batch_size": 16, "learning_rate": 1e-3, "logging_steps": 2,
                  "save_steps": 1000, "eval_batch_size": 32},
        "eval": {"probe_sets": ["movie_snippets"], "probe_rows": 60, "agreement_pairs": 500,
                 "throughput_sentences": 64},
        "store": {"dir": str(tmp_path / "stores")},
    }
    for key, value in sections.items():
        recipe[key] = {**recipe[key], **value} \
            if isinstance(value, dict) and isinstance(recipe.get(key), dict) else value
    return recipe_from_dict(recipe)


def _st_encode(path, texts):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu").encode(texts, convert_to_numpy=True)


def test_transformer_student_end_to_end(tmp_path, st_teacher, text_csv):
    from distill.models import load_tokenizer
    from distill.runner import run
    from distill.sentence_encoder import load_encoder

    recipe = embed_recipe(tmp_path, st_teacher, text_csv)
    report = run(recipe)
    models = report["models"]
    assert set(models) == {"teacher", "student_kd", "student_untrained"}
    for role in models:
        assert -1.0 <= models[role]["spearman"] <= 1.0 and 0 <= models[role]["recall_at_k"] <= 1
        assert 0.0 <= models[role]["probe_movie_snippets"] <= 1.0 and models[role]["sentences_per_second"] > 0
    # (random tiny models agree almost perfectly before training: improvement is checked on a student of
    # another width and seed below)
    assert report["store"]["spec"]["capture"] == ["embeddings"]  # only what the loss reads: no logits

    out = tmp_path / "run" / "student"
    texts = ["the film was great", "a dull and boring plot", "moving story"]
    ours = load_encoder(tmp_path / "run" / "student_trained")
    tok = load_tokenizer(str(out))
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = ours(**enc).embeddings.numpy()
    np.testing.assert_allclose(_st_encode(out, texts), expected, atol=1e-5)
    assert (out / "README.md").read_text().count("SentenceTransformer") >= 1
    assert yaml.safe_load((out / "recipe.yaml").read_text())["task"] == "sentence-embedding"
    assert json.loads((tmp_path / "run" / "report.json").read_text())["task"] == "sentence-embedding"
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Spearman" in html and "<svg" in html

    # a second run reuses every stage: no training, same numbers
    again = run(recipe)
    assert again["models"]["student_kd"]["spearman"] == pytest.approx(models["student_kd"]["spearman"])


def test_static_student_with_pca_exports_a_static_model(tmp_path, st_teacher, text_csv):
    from distill.runner import run

    recipe = embed_recipe(tmp_path, st_teacher, text_csv,
                          student={"from_teacher": False, "layers": None, "static": True, "static_dim": 8},
                          losses=[{"name": "embedding", "loss": "cosine"}, {"name": "affinity"}],
                          train={"learning_rate": 0.05, "epochs": 3})  # static vectors want a large step
    report = run(recipe)
    assert report["student_kind"] == "static"
    assert report["models"]["student_kd"]["dim"] == 8
    assert report["models"]["student_kd"]["spearman"] > report["models"]["student_untrained"]["spearman"]
    out = tmp_path / "run" / "student"
    modules = json.loads((out / "modules.json").read_text())
    assert any(m["type"].endswith("StaticEmbedding") for m in modules)
    vecs = _st_encode(out, ["good film", "awful plot"])
    assert vecs.shape == (2, 8)
    # the teacher normalises: so does it
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_static_student_loads_in_model2vec_with_the_same_vectors(tmp_path, st_teacher, text_csv):
    """The exported static student is also a model2vec model: model2vec reads the normalisation and the
    truncation length from its config and gives sentence-transformers' vectors (texts long enough to be cut,
    so a missing max_length would show)."""
    model2vec = pytest.importorskip("model2vec")
    from distill.runner import run

    recipe = embed_recipe(tmp_path, st_teacher, text_csv,
                          student={"from_teacher": False, "layers": None, "static": True, "static_dim": 8},
                          data={"max_length": 6}, train={"learning_rate": 0.05, "epochs": 1})
    run(recipe)
    out = tmp_path / "run" / "student"
    config = json.loads((out / "config_sentence_transformers.json").read_text())
    assert config["normalize"] is True and config["max_length"] == 6
    # words of the tiny vocabulary only (model2vec drops the unknown token, sentence-transformers keeps it),
    # and short ones: model2vec also cuts each text to max_length x its median token length in characters
    texts = ["good film", "a film is a bad and a dull movie but fun",
             "a is a dull plot but the cast is great"]
    m2v = model2vec.StaticModel.from_pretrained(str(out))
    assert m2v.normalize and m2v.max_length == 6
    assert "StaticModel.from_pretrained" in (out / "README.md").read_text()
    np.testing.assert_allclose(m2v.encode(texts), _st_encode(out, texts), atol=1e-5)


def test_static_student_with_sif_start_and_anchor(tmp_path, st_teacher, text_csv):
    """student.static_sif scales the starting vectors by their tokens' SIF weights (the saved start is the
    plain start times the weights); train.anchor keeps the trained vectors nearer that start."""
    from distill.models import load_tokenizer
    from distill.runner import run
    from distill.sentence_encoder import load_encoder
    from distill.students.static import sif_weights

    student = {"from_teacher": False, "layers": None, "static": True}
    losses = [{"name": "embedding", "loss": "cosine"}]
    plain = embed_recipe(tmp_path / "plain", st_teacher, text_csv, student=student, losses=losses,
                         train={"learning_rate": 0.05, "epochs": 2})
    run(plain)
    weighted = embed_recipe(tmp_path / "sif", st_teacher, text_csv, student={**student, "static_sif": 0.01},
                            losses=losses, train={"learning_rate": 0.05, "epochs": 2})
    run(weighted)
    held = embed_recipe(tmp_path / "held", st_teacher, text_csv, student={**student, "static_sif": 0.01},
                        losses=losses, train={"learning_rate": 0.05, "epochs": 2, "anchor": 1.0})
    run(held)
    start = load_encoder(tmp_path / "plain" / "run" / "student_init").embedding.weight.detach()
    sif_start = load_encoder(tmp_path / "sif" / "run" / "student_init").embedding.weight.detach()
    from distill.tasks import task_for

    texts = list(task_for(weighted).kd_data()["text"])  # the distillation text the run counted tokens of
    w = sif_weights(load_tokenizer(str(tmp_path / "plain" / "run" / "student_init")), texts, 0.01)
    torch.testing.assert_close(sif_start, start * w[:, None])
    moved = {}
    for name in ("sif", "held"):
        trained = load_encoder(tmp_path / name / "run" / "student_trained").embedding.weight.detach()
        moved[name] = float((trained - sif_start).pow(2).sum())
    assert 0 < moved["held"] < 0.5 * moved["sif"]


def test_pretrained_student_of_other_width_gets_a_projector(tmp_path, st_teacher, text_csv, tiny_student):
    from distill.runner import run

    recipe = embed_recipe(tmp_path, st_teacher, text_csv, student={"from_teacher": False, "layers": None,
                                                                   "model": str(tiny_student)},
                          losses=[{"name": "embedding", "loss": "cosine"},
                                  {"name": "affinity", "weight": 1.0}],
                          train={"epochs": 3})
    report = run(recipe)
    models = report["models"]
    assert models["student_kd"]["dim"] == 16 and models["teacher"]["dim"] == 32
    # training on the teacher's embeddings moves the student's geometry towards the teacher's
    assert models["student_kd"]["spearman"] > models["student_untrained"]["spearman"] + 0.05


def test_bad_recipes_fail_before_loading(tmp_path, st_teacher, text_csv):
    from distill.tasks import task_for

    with pytest.raises(RecipeError, match="losses\\[0\\].name: 'kd'"):
        recipe = embed_recipe(tmp_path, st_teacher, text_csv, losses=[{"name": "kd"}])
        task_for(recipe)
    with pytest.raises(RecipeError, match="student.layers"):
        recipe = embed_recipe(tmp_path, st_teacher, text_csv, student={"layers": [0, 9]})
        task_for(recipe)
    with pytest.raises(RecipeError, match="student.static"):
        recipe_from_dict({"teacher": {"model": "x"}, "student": {"static": True}, "data": {"train": "x.csv"}})
    with pytest.raises(RecipeError, match="static_dim"):
        recipe = embed_recipe(tmp_path, st_teacher, text_csv, student={"from_teacher": False, "layers": None,
                                                                       "static": True, "static_dim": 64})
        task_for(recipe)
    with pytest.raises(RecipeError, match="losses\\[1\\].bank: 'store'.*store.enabled: true"):
        recipe = embed_recipe(tmp_path, st_teacher, text_csv, store={"enabled": False},
                              losses=[{"name": "embedding"}, {"name": "neighbourhood"}])
        task_for(recipe)


def test_cli_run_and_cache_info(tmp_path, st_teacher, text_csv, capsys):
    from distill.cli.main import main

    recipe = embed_recipe(tmp_path, st_teacher, text_csv, train={"epochs": 1})
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe.to_yaml())
    assert main(["cache", str(path), "--info"]) == 0
    assert "no store yet" in capsys.readouterr().out
    assert main(["run", str(path), "--eval.probe_rows", "40"]) == 0
    assert (tmp_path / "run" / "student" / "modules.json").exists()
    assert main(["cache", str(path), "--info"]) == 0
    info = capsys.readouterr().out
    assert "embeddings" in info and "no store yet" not in info


def test_demo_embeddings_recipe_is_valid():
    from distill.cli.demo import demo_recipe_path
    from distill.config import load_recipe

    recipe = load_recipe(demo_recipe_path("embeddings"))
    assert recipe.task == "sentence-embedding" and recipe.student.model == "packaged:all-MiniLM-L6-v2"
    assert [spec.name for spec in recipe.losses] == ["similarity_matrix"]
    assert recipe.data.unlabeled == "packaged:english_text" and recipe.data.max_unlabeled_examples == 3000


def test_static_student_in_the_teacher_pca_basis(tmp_path, st_teacher, text_csv):
    from distill.runner import run
    from distill.sentence_encoder import load_encoder

    recipe = embed_recipe(tmp_path, st_teacher, text_csv,
                          student={"from_teacher": False, "layers": None, "static": True, "static_dim": 8},
                          losses=[{"name": "embedding", "loss": "cosine", "projector": "pca"}],
                          train={"learning_rate": 0.05, "epochs": 2})
    report = run(recipe)
    assert report["models"]["student_kd"]["dim"] == 8
    init = load_encoder(tmp_path / "run" / "student_init")
    assert init.embedding.weight.shape[1] == 8
    with pytest.raises(RecipeError, match="projector: pca"):
        from distill.tasks import task_for

        bad = embed_recipe(tmp_path, st_teacher, text_csv, store={"enabled": False},
                           losses=[{"name": "embedding", "projector": "pca"}])
        task_for(bad)


def test_similarity_structure_losses_train_an_embedding_student(tmp_path, st_teacher, text_csv, tiny_student):
    """The similarity-matrix term alone makes the student's held-out similarity matrix closer to the
    teacher's (and its Spearman agreement higher) than before distillation; all the structure terms run
    together with the cosine term and Matryoshka dims, and each is logged."""
    from distill.losses import SimilarityMatrixLoss
    from distill.outputs import ModelOutputs
    from distill.runner import run

    student = {"from_teacher": False, "layers": None, "model": str(tiny_student)}
    # the term is small on these models (cosines near 1 differ by ~1e-3): weighted like Jasper's 200
    alone = embed_recipe(tmp_path / "alone", st_teacher, text_csv, student=student,
                         losses=[{"name": "similarity_matrix", "weight": 200.0}], train={"epochs": 3})
    models = run(alone)["models"]
    assert models["student_kd"]["spearman"] > models["student_untrained"]["spearman"]
    texts = pd.read_csv(text_csv)["text"].tolist()[-64:]
    teacher = torch.tensor(_st_encode(st_teacher, texts))

    def error(path):
        vectors = torch.tensor(_st_encode(path, texts))
        student_out, teacher_out = ModelOutputs(embeddings=vectors), ModelOutputs(embeddings=teacher)
        return float(SimilarityMatrixLoss()(student_out, teacher_out, {}))

    out = tmp_path / "alone" / "run"
    assert error(out / "student") < error(out / "student_init")

    together = embed_recipe(tmp_path / "together", st_teacher, text_csv, student=student,
                            losses=[{"name": "embedding", "loss": "cosine"},
                                    {"name": "similarity_matrix", "weight": 200.0, "dims": [8, 16]},
                                    {"name": "similarity_ranking", "weight": 0.5},
                                    {"name": "neighbourhood", "weight": 0.5}], train={"epochs": 1})
    report = run(together)
    logged = {k for entry in report["training"]["student_trained"]["log_history"] for k in entry}
    assert {"loss/embedding", "loss/similarity_matrix", "loss/similarity_ranking",
            "loss/neighbourhood"} <= logged
    assert np.isfinite(report["models"]["student_kd"]["spearman"])


def test_unlabelled_text_never_includes_probe_or_held_out_texts(tmp_path, st_teacher, text_csv):
    """Distillation text that repeats a probe text (up to case and punctuation) is left out of the student's
    training, and the report says how many sentences and epochs the student saw; the probe sets also get an
    agreement score (text outside the training domain)."""
    from distill.packaged import load_packaged_data, normalised_text
    from distill.runner import run

    movie = load_packaged_data("movie_snippets")["text"].tolist()
    extra = tmp_path / "extra.csv"
    # 80 packaged snippets, shouted and without their punctuation, and 20 sentences of our own
    shouted = [t.upper().replace(",", "").replace(".", "") for t in movie[:80]]
    pd.DataFrame({"text": shouted + [f"an unrelated sentence number {i}" for i in range(20)]}).to_csv(
        extra, index=False)
    recipe = embed_recipe(tmp_path, st_teacher, text_csv, eval={"probe_rows": 400}, train={"epochs": 1})
    recipe.data.unlabeled = str(extra)
    report = run(recipe)
    data = report["data"]
    assert data["epochs"] == 1 and data["dropped_as_probe_text"] > 0
    assert data["distillation_sentences"] == data["train"] + data["unlabeled"] - data["dropped_as_probe_text"]
    from distill.tasks import task_for

    task = task_for(recipe)
    probe = {normalised_text(t) for t in task._probe_sets()["movie_snippets"][0]}
    kd = {normalised_text(t) for t in task.kd_data()["text"]}
    assert probe and not probe & kd
    for role in ("student_kd", "student_untrained"):
        m = report["models"][role]
        assert -1 <= m["spearman_movie_snippets"] <= 1 and m["spearman_probe_sets_mean"] is not None


@pytest.fixture(scope="session")
def st_teacher_b(tiny_dir, tiny_tokenizer):
    """A second sentence-transformers teacher of another width (48) and depth (2)."""
    from transformers import AutoModel

    from distill.export.sentence_transformers import save_sentence_transformer
    from distill.sentence_encoder import SentenceEncoder

    src = make_bert(tiny_dir / "st_backbone_b", tiny_tokenizer, layers=2, hidden=48, seed=11)
    encoder = SentenceEncoder(AutoModel.from_pretrained(src), "mean", normalize=True)
    return save_sentence_transformer(encoder, tiny_tokenizer, tiny_dir / "st_teacher_b", max_length=32)


def test_two_embedding_teachers_are_joined(tmp_path, st_teacher, st_teacher_b, text_csv, tiny_student):
    """Two teachers of different widths: each embeds the text once into its own store; the student learns
    their joined vectors (weighted unit vectors concatenated: cosine = weighted mean of the teachers'), and
    the report shows each teacher's agreement with the joined vectors and with the other."""
    from distill.runner import run
    from distill.store.ensemble import concat_embeddings

    recipe = embed_recipe(
        tmp_path, st_teacher, text_csv, student={"model": str(tiny_student), "from_teacher": False,
                                                 "layers": None},
        losses=[{"name": "embedding", "loss": "cosine"}, {"name": "similarity_matrix", "weight": 1.0}])
    data = recipe.to_dict()
    data.pop("teacher")
    data["teachers"] = [{"model": str(st_teacher), "name": "a"},
                        {"model": str(st_teacher_b), "name": "b", "weight": 3.0}]
    report = run(recipe_from_dict(data))
    section = report["teachers"]
    assert section["rule"] == "concat" and [m["dim"] for m in section["members"]] == [32, 48]
    assert set(section["agreement"]) == {"a | b"}
    # b weighs 3 of 4: the joined similarities follow it more closely than a's
    assert section["members"][1]["spearman_with_combined"] > section["members"][0]["spearman_with_combined"]
    assert report["models"]["teacher"]["dim"] == 80 and report["models"]["teacher"]["teachers"] == 2
    assert len(report["store"]["members"]) == 2
    assert "Spearman with joined vectors" in (tmp_path / "run" / "report.html").read_text()
    a = torch.nn.functional.normalize(torch.randn(5, 32), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(5, 48), dim=-1)
    joined = concat_embeddings([a, b], [1.0, 3.0])
    want = 0.25 * (a @ a.T) + 0.75 * (b @ b.T)
    assert torch.allclose((joined @ joined.T).float(), want, atol=1e-6)


def test_several_embedding_teachers_refuse_static_students_and_layer_losses(tmp_path, st_teacher,
                                                                          st_teacher_b, text_csv):
    from distill.tasks import task_for

    base = embed_recipe(tmp_path, st_teacher, text_csv).to_dict()
    base.pop("teacher")
    base["teachers"] = [{"model": str(st_teacher)}, {"model": str(st_teacher_b), "name": "b"}]
    static = {**base, "student": {"static": True}}
    with pytest.raises(RecipeError, match="static student is built from one teacher"):
        task_for(recipe_from_dict(static))
    hidden = {**base, "losses": [{"name": "hidden", "layer_map": "uniform"}]}
    with pytest.raises(RecipeError, match="hidden"):
        task_for(recipe_from_dict(hidden))
    with pytest.raises(RecipeError, match="concat"):
        recipe_from_dict({**base, "combine": "mean_probs"})


def test_learned_projectors_start_from_the_recipe_seed(tmp_path, st_teacher, text_csv, tiny_student):
    """The distiller's projectors do not depend on what ran before in the process (a bench running several
    recipes in one process, or a test order, used to change them)."""
    from distill.tasks import task_for

    recipe = embed_recipe(tmp_path, st_teacher, text_csv, student={"from_teacher": False, "layers": None,
                                                                   "model": str(tiny_student)},
                          losses=[{"name": "embedding", "loss": "cosine"}])
    task = task_for(recipe)
    first = task.distiller().state_dict()
    torch.rand(1000)  # move the global generator on
    again = task.distiller().state_dict()
    assert first and all(torch.equal(first[k], again[k]) for k in first)


def test_augmented_variants_join_the_transfer_text(tmp_path, st_teacher, text_csv):
    """data.augment on a sentence-embedding run: word-replaced variants of every transfer sentence join the
    distillation text, embedded by the teacher through the store, and counted in the report."""
    from distill.runner import run

    recipe = embed_recipe(tmp_path, st_teacher, text_csv, train={"epochs": 1},
                          data={"augment": {"variants": 1, "rate": 0.5}})
    report = run(recipe)
    data = report["data"]
    assert 0 < data["augmented"] <= data["train"]
    assert data["distillation_sentences"] == data["train"] + data["augmented"]
    assert report["store"]["num_examples"] == data["distillation_sentences"]
    from distill.tasks import task_for

    task = task_for(recipe)
    task.prepare_teacher()  # resolves the teacher (the augmentation's default word source); loads no weights
    kd = task.kd_data()
    assert len(kd) == data["distillation_sentences"] and kd["text"].is_unique
    assert list((tmp_path / "stores" / "augmented-text").glob("*.jsonl"))


def test_neighbour_group_batches_train_from_the_stored_teacher_vectors(tmp_path, st_teacher, text_csv,
                                                                       monkeypatch):
    """train.neighbour_group: the sampler is built from the store's teacher vectors of the training rows,
    serves each row once per epoch in a new order each epoch, and the stage is fingerprinted apart from the
    same recipe with random batches."""
    from distill.runner import run
    from distill.training import sampling

    orders: list[list[int]] = []
    real_order = sampling.NeighbourGroupSampler.order

    def spy(self):
        orders.append(real_order(self))
        return orders[-1]

    monkeypatch.setattr(sampling.NeighbourGroupSampler, "order", spy)
    grouped = embed_recipe(tmp_path, st_teacher, text_csv, losses=[{"name": "similarity_matrix"}],
                           train={"neighbour_group": 4})
    report = run(grouped)
    assert np.isfinite(report["models"]["student_kd"]["spearman"])
    assert len(orders) >= 2 and orders[0] != orders[1]  # two epochs, two orders
    assert all(sorted(o) == list(range(len(orders[0]))) for o in orders) and len(orders[0]) > 100
    plain = embed_recipe(tmp_path, st_teacher, text_csv, losses=[{"name": "similarity_matrix"}])
    done = tmp_path / "run" / "student_trained" / "distill_done.json"
    grouped_fp = json.loads(done.read_text())["fingerprint"]
    orders.clear()
    run(plain)
    assert not orders  # random batches: no neighbour sampler
    plain_fp = json.loads(done.read_text())["fingerprint"]
    assert plain_fp != grouped_fp


def test_dense_student_trains_in_the_teachers_width_and_exports_it(tmp_path, st_teacher, text_csv,
                                                                   tiny_student):
    """student.dense: the narrower student gets a linear layer to the teacher's width, started as a
    least-squares fit, trained with a plain cosine term (no projector), exported as a Dense module that
    sentence-transformers serves with the trained student's vectors; the baseline is the start without it."""
    from distill.runner import run
    from distill.sentence_encoder import load_encoder

    recipe = embed_recipe(tmp_path, st_teacher, text_csv,
                          student={"from_teacher": False, "layers": None, "model": str(tiny_student),
                                   "dense": True},
                          losses=[{"name": "embedding", "loss": "cosine"},
                                  {"name": "similarity_matrix", "weight": 1.0}], train={"epochs": 3})
    report = run(recipe)
    models = report["models"]
    assert models["student_kd"]["dim"] == 32 and models["student_untrained"]["dim"] == 16
    assert models["student_kd"]["spearman"] > models["student_untrained"]["spearman"] + 0.05
    out = tmp_path / "run" / "student"
    trained = load_encoder(tmp_path / "run" / "student_trained")
    assert trained.dense is not None and trained.dense.out_features == 32
    texts = ["the film was great", "a dull and boring plot"]
    from distill.models import load_tokenizer

    enc = load_tokenizer(str(out))(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = trained.eval()(**enc).embeddings.numpy()
    np.testing.assert_allclose(_st_encode(out, texts), expected, atol=1e-5)


def test_dense_refused_for_static_students_before_loading(tmp_path, st_teacher, text_csv):
    with pytest.raises(RecipeError, match="student.dense"):
        embed_recipe(tmp_path, st_teacher, text_csv,
                     student={"from_teacher": False, "layers": None, "static": True, "dense": True})


def test_bf16_on_cpu_trains_with_float32_loss_inputs_and_saves_float32(tmp_path, st_teacher, text_csv,
                                                                         tiny_student, monkeypatch):
    """train.bf16 on a CPU: the student's forward runs under bfloat16 autocast, but the losses receive
    float32 vectors (cosines of bf16-rounded vectors would blur the small differences the similarity terms
    train on) and the saved student is float32."""
    from safetensors.torch import load_file

    from distill.losses.embedding import SimilarityMatrixLoss
    from distill.runner import run

    seen: list[torch.dtype] = []
    forward = SimilarityMatrixLoss.forward

    def spy(self, student, teacher, batch):
        seen.append(student.embeddings.dtype)
        return forward(self, student, teacher, batch)

    monkeypatch.setattr(SimilarityMatrixLoss, "forward", spy)
    recipe = embed_recipe(tmp_path, st_teacher, text_csv,
                          student={"from_teacher": False, "layers": None, "model": str(tiny_student),
                                   "dense": True},
                          losses=[{"name": "embedding", "loss": "cosine"},
                                  {"name": "similarity_matrix", "weight": 1.0}],
                          train={"epochs": 3, "bf16": True})
    report = run(recipe)
    assert seen and set(seen) == {torch.float32}
    models = report["models"]
    assert models["student_kd"]["spearman"] > models["student_untrained"]["spearman"] + 0.05
    weights = load_file(str(tmp_path / "run" / "student" / "model.safetensors"))
    assert {w.dtype for w in weights.values()} == {torch.float32}


def test_train_dropout_reaches_the_trained_student_and_not_its_export(tmp_path, st_teacher, text_csv,
                                                                      tiny_student, monkeypatch):
    """train.dropout: 0 switches the student's dropout off while it trains (every step sees p = 0), and the
    exported student keeps the dropout of its own config."""
    import json

    from distill.runner import run
    from distill.training import DistillTrainer

    own = json.loads((tiny_student / "config.json").read_text())["hidden_dropout_prob"]
    assert own > 0  # otherwise the check below would prove nothing
    seen: list[set[float]] = []
    compute = DistillTrainer.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        seen.append({m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)})
        return compute(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(DistillTrainer, "compute_loss", spy)
    recipe = embed_recipe(tmp_path, st_teacher, text_csv,
                          student={"from_teacher": False, "layers": None, "model": str(tiny_student)},
                          losses=[{"name": "embedding", "loss": "cosine"}],
                          train={"epochs": 1, "dropout": 0.0})
    run(recipe)
    assert seen and all(ps == {0.0} for ps in seen)
    config = json.loads((tmp_path / "run" / "student" / "config.json").read_text())
    assert config["hidden_dropout_prob"] == own
