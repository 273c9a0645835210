"""A static-embedding student initialised from the teacher (the model2vec idea, then trained).

Every vocabulary entry of the teacher's tokenizer is run through the teacher on its own (``[CLS] tok [SEP]``
or the model's equivalent) and its pooled output becomes that token's vector; optionally the vectors are
reduced by PCA. Training afterwards moves the vectors of the tokens that occur in the user's text towards
whatever mean reproduces the teacher's sentence embeddings, which the one-token forward pass alone cannot
capture (context).
"""

from __future__ import annotations

import numpy as np
import torch

from distill.sentence_encoder import SentenceEncoder, StaticEncoder, pool


def _single_token_template(tokenizer) -> tuple[list[int], int]:
    """The ids the tokenizer produces for a one-token text, e.g. ``[CLS] tok [SEP]``, and where ``tok`` sits:
    the wrapping is the same for every vocabulary id."""
    word = tokenizer.unk_token or "a"
    bare = tokenizer(word, add_special_tokens=False)["input_ids"]
    wrapped = tokenizer(word)["input_ids"]
    if len(bare) != 1 or bare[0] not in wrapped:
        raise ValueError(f"cannot find how {type(tokenizer).__name__} wraps a single token (tried {word!r})")
    return list(wrapped), wrapped.index(bare[0])


@torch.no_grad()
def token_vectors(teacher: SentenceEncoder, tokenizer, batch_size: int = 512, log=None) -> torch.Tensor:
    """(V, H) pooled teacher outputs, one row per vocabulary id, before any normalisation."""
    vocab_size = len(tokenizer)
    device = next(teacher.parameters()).device
    template, slot = _single_token_template(tokenizer)
    rows = []
    for start in range(0, vocab_size, batch_size):
        ids = torch.arange(start, min(start + batch_size, vocab_size))
        batch = torch.tensor(template).repeat(len(ids), 1)  # (b, 3)
        batch[:, slot] = ids
        mask = torch.ones_like(batch)
        out = teacher.backbone(input_ids=batch.to(device), attention_mask=mask.to(device))
        rows.append(pool(out.last_hidden_state, mask.to(device), teacher.pooling).float().cpu())
        if log and start // batch_size % 20 == 0:
            log(f"static student: teacher vectors for tokens {start}..{start + len(ids)} of {vocab_size}")
    return torch.cat(rows)


def pca_reduce(vectors: torch.Tensor, dim: int) -> torch.Tensor:
    """Project centred vectors onto their top ``dim`` principal axes (deterministic SVD)."""
    if dim >= vectors.shape[1]:
        return vectors
    x = vectors.double().numpy()
    x = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)  # rows of vt: principal axes, largest first
    # fix each axis' sign so the result does not depend on the LAPACK build
    signs = np.sign(vt[:, np.argmax(np.abs(vt), axis=1)].diagonal())
    vt = vt * signs[:, None]
    return torch.from_numpy((x @ vt[:dim].T).astype(np.float32))


def sif_weights(tokenizer, texts: list[str], coefficient: float) -> torch.Tensor:
    """(V,) SIF weights ``a / (a + p(token))`` (Arora et al. 2017), ``p`` each vocabulary id's share of the
    tokens of ``texts`` (tokenised without special tokens, as the static student reads them), add-one
    smoothed so that an unseen token gets a weight just under 1."""
    vocab_size = len(tokenizer)
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    for start in range(0, len(texts), 1024):
        ids = tokenizer(texts[start:start + 1024], add_special_tokens=False)["input_ids"]
        flat = torch.tensor([i for row in ids for i in row], dtype=torch.long)
        counts += torch.bincount(flat, minlength=vocab_size)[:vocab_size].double()
    p = (counts + 1.0) / (counts.sum() + vocab_size)
    return (coefficient / (coefficient + p)).float()


def static_from_teacher(teacher: SentenceEncoder, tokenizer, dim: int | None = None, log=None,
                        basis: torch.Tensor | None = None,
                        weights: torch.Tensor | None = None) -> StaticEncoder:
    """``basis`` (D, H): express the token vectors in that basis (the teacher's sentence-embedding PCA axes
    fitted by ``embedding`` with ``projector: pca``), so the student starts in the space it is trained in;
    otherwise ``dim`` reduces them by their own PCA. ``weights`` (V,): each reduced vector is then scaled by
    its token's weight (:func:`sif_weights`)."""
    vectors = token_vectors(teacher, tokenizer, log=log)  # (V, H)
    if basis is not None and basis.shape[0] == (dim or vectors.shape[1]):
        vectors = vectors @ basis.T.to(vectors.dtype)  # (V, D)
    elif dim is not None:
        vectors = pca_reduce(vectors, dim)
    if weights is not None:
        vectors = vectors * weights.to(vectors.dtype)[:, None]
    return StaticEncoder(vectors, normalize=teacher.normalize)
