"""Save a sentence-embedding student as a sentence-transformers directory.

The directory is written by sentence-transformers itself (so its own loader reads it back): a Transformer +
Pooling (+ Normalize) stack for transformer students, a StaticEmbedding (+ Normalize) for static ones.
``SentenceTransformer(path).encode(texts)`` then gives the same vectors as the student did in training.

A static student's directory is also a model2vec model: ``model2vec.StaticModel.from_pretrained(path)``
reads sentence-transformers' StaticEmbedding layout, and the two settings it takes from the model's config
(``normalize`` and ``max_length``, the tokenizer's truncation) are added to
``config_sentence_transformers.json``, so both libraries give the same vectors. model2vec's numpy encode is
the faster of the two on CPU (measured in bench/embeddings.py). Two differences remain, both model2vec's own
rules: it drops the unknown-token id before averaging (sentence-transformers averages it in), and it first
cuts each text to ``max_length`` times its vocabulary's median token length in characters.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from distill._dataclass_io import RecipeError
from distill.files import atomic_dir
from distill.sentence_encoder import SentenceEncoder, StaticEncoder

_ST_POOLING = {"mean": "mean", "cls": "cls", "max": "max", "mean_sqrt_len": "mean_sqrt_len_tokens",
               "lasttoken": "lasttoken"}
INSTALL_HINT = ("the sentence-embedding task saves students with sentence-transformers: "
                "pip install 'distill[embeddings]'")


def require_sentence_transformers() -> None:
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        raise RecipeError(INSTALL_HINT) from None


def save_sentence_transformer(encoder: SentenceEncoder | StaticEncoder, tokenizer, out_dir: str | Path,
                              max_length: int = 128) -> Path:
    """Write ``encoder`` (+ its tokenizer) to ``out_dir`` as a sentence-transformers model."""
    require_sentence_transformers()
    import warnings

    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import (
        Dense,
        Normalize,
        Pooling,
        StaticEmbedding,
        Transformer,
    )

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sentence-transformers' deprecation chatter about its own layout
        if isinstance(encoder, StaticEncoder):
            first = StaticEmbedding(tokenizer,
                                    embedding_weights=encoder.embedding.weight.detach().cpu().clone())
            modules = [first]
        else:
            encoder.backbone.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            first = Transformer(tmp, max_seq_length=max_length)
            modules = [first, Pooling(encoder.hidden_dim, pooling_mode=_ST_POOLING[encoder.pooling])]
            if encoder.dense is not None:  # student.dense: a linear layer, no activation
                layer = encoder.dense
                dense = Dense(layer.in_features, layer.out_features, bias=layer.bias is not None,
                              activation_function=torch.nn.Identity())
                dense.linear.load_state_dict(layer.state_dict())
                modules.append(dense)
        if encoder.normalize:
            modules.append(Normalize())
        model = SentenceTransformer(modules=modules, device="cpu")

        def write(staging: Path) -> None:
            model.save(str(staging))
            if isinstance(encoder, StaticEncoder):
                add_model2vec_settings(staging, normalize=encoder.normalize,
                                       max_length=_truncation_length(first.tokenizer))

        # a half-written student directory never exists under its final name
        atomic_dir(out_dir, write)
    return out_dir


def _truncation_length(tokenizer) -> int | None:
    """The length a ``tokenizers.Tokenizer`` cuts inputs to, None when it does not cut."""
    truncation = tokenizer.truncation
    return None if truncation is None else int(truncation["max_length"])


def add_model2vec_settings(directory: str | Path, normalize: bool, max_length: int | None) -> None:
    """Write the two encode settings model2vec reads from a model's config into a static student's
    ``config_sentence_transformers.json`` (sentence-transformers ignores keys it does not know)."""
    path = Path(directory) / "config_sentence_transformers.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update({"normalize": bool(normalize), "max_length": max_length})
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
