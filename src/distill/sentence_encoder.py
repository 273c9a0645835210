"""Sentence encoders as plain ``nn.Module``s: a transformer with the pooling of a sentence-transformers model,
and a static (one vector per token) encoder.

Both return a :class:`~distill.outputs.ModelOutputs` from ``forward``, so the trainer, the store writer and
DDP treat them like any other model, and neither needs ``sentence-transformers`` to train. They are read from
and written to sentence-transformers directories (``modules.json``): the teacher is loaded from one, and the
exported student is one (``SentenceTransformer(path).encode(...)`` works on it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill._dataclass_io import RecipeError
from distill.models import mean_pool
from distill.outputs import ModelOutputs

ENCODER_FILE = "distill_encoder.json"
POOLINGS = ("mean", "cls", "max", "mean_sqrt_len", "lasttoken")
# modules.json types we understand (sentence-transformers moved them between versions: match on the tail)
_TRANSFORMER, _POOLING, _NORMALIZE, _STATIC = "Transformer", "Pooling", "Normalize", "StaticEmbedding"
_DENSE = "Dense"
DENSE_FILE = "dense.safetensors"
_IDENTITY = ("torch.nn.modules.linear.Identity", "torch.nn.Identity")


def pool(hidden: torch.Tensor, mask: torch.Tensor | None, mode: str) -> torch.Tensor:
    """(B, L, H) token states -> (B, H) sentence vectors, padding excluded."""
    if mask is None:
        mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
    if mode == "lasttoken":  # right padding: the last real token of each row
        last = mask.sum(dim=1).clamp_min(1) - 1  # (B,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if mode == "mean":
        return mean_pool(hidden, mask)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0).sqrt()  # mean_sqrt_len


class SentenceEncoder(nn.Module):
    """A Hugging Face encoder + pooling (+ a linear layer) (+ L2 normalisation): the sentence-transformers
    recipe of most embedding models (e.g. all-mpnet-base-v2 = MPNet, mean pooling, Normalize). ``dense``
    (``student.dense``) maps the pooled vector to another width, e.g. the teacher's, and is exported as a
    sentence-transformers ``Dense`` module with no activation."""

    def __init__(self, backbone: nn.Module, pooling: str = "mean", normalize: bool = False,
                 dense: nn.Linear | None = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not supported; choose from {', '.join(POOLINGS)}")
        self.backbone = backbone
        self.pooling = pooling
        self.normalize = normalize
        self.dense = dense

    @property
    def config(self):  # the trainer and the layer tools read the backbone's config
        return self.backbone.config

    @property
    def hidden_dim(self) -> int:
        """Width of the pooled vector (the backbone's hidden size)."""
        return int(self.backbone.config.hidden_size)

    @property
    def embedding_dim(self) -> int:
        return int(self.dense.out_features) if self.dense is not None else self.hidden_dim

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, output_hidden_states: bool = False,
                output_attentions: bool = False, **_: Any) -> ModelOutputs:
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.backbone(**kwargs, output_hidden_states=output_hidden_states,
                            output_attentions=output_attentions)
        emb = pool(out.last_hidden_state, attention_mask, self.pooling)  # (B, H)
        if self.dense is not None:
            emb = self.dense(emb)  # (B, D)
        if self.normalize:
            emb = F.normalize(emb, dim=-1)
        return ModelOutputs(
            embeddings=emb,
            hidden_states=tuple(out.hidden_states) if output_hidden_states else None,
            attentions=tuple(out.attentions) if output_attentions and out.attentions is not None else None,
            attention_mask=attention_mask,
        )

    def save(self, path: str | Path) -> None:
        path = Path(path)
        self.backbone.save_pretrained(path)
        info: dict[str, Any] = {"kind": "transformer", "pooling": self.pooling, "normalize": self.normalize}
        if self.dense is not None:
            from safetensors.torch import save_file

            save_file({k: v.detach().contiguous() for k, v in self.dense.state_dict().items()},
                      str(path / DENSE_FILE))
            info["dense"] = {"in_features": self.dense.in_features, "out_features": self.dense.out_features,
                             "bias": self.dense.bias is not None, "path": DENSE_FILE}
        (path / ENCODER_FILE).write_text(json.dumps(info))


class StaticEncoder(nn.Module):
    """One trainable vector per vocabulary entry; a sentence is the mean of its tokens' vectors (padding
    excluded), optionally L2-normalised. Inputs are tokenised *without* special tokens, as
    sentence-transformers' ``StaticEmbedding`` does at inference, so training and serving see the same ids."""

    def __init__(self, weights: torch.Tensor, normalize: bool = False):
        super().__init__()
        self.embedding = nn.Embedding.from_pretrained(weights.float(), freeze=False)  # (V, D)
        self.normalize = normalize

    @property
    def embedding_dim(self) -> int:
        return int(self.embedding.embedding_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **_: Any) -> ModelOutputs:
        vectors = self.embedding(input_ids)  # (B, L, D)
        emb = pool(vectors, attention_mask, "mean")  # (B, D)
        if self.normalize:
            emb = F.normalize(emb, dim=-1)
        return ModelOutputs(embeddings=emb, attention_mask=attention_mask)

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({"embedding.weight": self.embedding.weight.detach().contiguous()},
                  str(path / "static.safetensors"))
        (path / ENCODER_FILE).write_text(json.dumps({"kind": "static", "normalize": self.normalize,
                                                     "vocab_size": self.embedding.num_embeddings,
                                                     "dim": self.embedding_dim}))


# ----------------------------------------------------------------------------------------------------------
# Reading sentence-transformers directories (without importing sentence-transformers)
# ----------------------------------------------------------------------------------------------------------


def _module_type(entry: dict[str, Any]) -> str:
    return str(entry.get("type", "")).rsplit(".", 1)[-1]


def describe(path: str | Path) -> dict[str, Any]:
    """What a model directory holds, read from its small JSON files only: ``kind`` (transformer/static),
    ``pooling``, ``normalize``, ``backbone`` (directory of the HF weights). A plain HF encoder directory (no
    ``modules.json``) is a transformer with mean pooling and no normalisation."""
    path = Path(path)
    own = path / ENCODER_FILE
    if own.exists():
        info = json.loads(own.read_text())
        return {"pooling": "mean", **info, "backbone": str(path)}
    modules_file = path / "modules.json"
    if not modules_file.exists():
        return {"kind": "transformer", "pooling": "mean", "normalize": False, "backbone": str(path)}
    modules = json.loads(modules_file.read_text())
    types = [_module_type(m) for m in modules]
    unsupported = [t for t in types if t not in (_TRANSFORMER, _POOLING, _DENSE, _NORMALIZE, _STATIC)]
    if unsupported or types.count(_DENSE) > 1:
        raise RecipeError(
            f"{path}: sentence-transformers modules {unsupported or types} are not supported yet (distill "
            "handles Transformer + Pooling (+ one Dense without activation) + Normalize and StaticEmbedding "
            "models)"
        )
    info: dict[str, Any] = {"normalize": _NORMALIZE in types}
    for entry, kind in zip(modules, types):
        sub = path / entry.get("path", "")
        if kind == _TRANSFORMER:
            info["kind"], info["backbone"] = "transformer", str(sub)
        elif kind == _STATIC:
            info["kind"], info["backbone"] = "static", str(sub)
        elif kind == _POOLING:
            info["pooling"] = _pooling_mode(json.loads((sub / "config.json").read_text()), sub)
        elif kind == _DENSE:
            info["dense"] = _dense_info(sub)
    info.setdefault("pooling", "mean")
    if "kind" not in info:
        raise RecipeError(f"{path}: modules.json has no Transformer or StaticEmbedding module")
    return info


def _dense_info(sub: Path) -> dict[str, Any]:
    """A sentence-transformers ``Dense`` module's shape and weights file; only a linear one (no activation)
    is read, the kind distill exports."""
    if not (sub / "config.json").exists():
        raise RecipeError(f"{sub}: a Dense module without its config.json; re-export the model")
    cfg = json.loads((sub / "config.json").read_text())
    act = cfg.get("activation_function", "torch.nn.modules.activation.Tanh")  # the module's default
    if act not in _IDENTITY:
        raise RecipeError(f"{sub}: a Dense module with activation {act!r} is not supported yet (distill "
                          "reads linear Dense modules, activation torch.nn.Identity)")
    weights = next((f for f in (sub / "model.safetensors", sub / "pytorch_model.bin") if f.exists()), None)
    if weights is None:
        raise RecipeError(f"{sub}: no Dense weights (model.safetensors / pytorch_model.bin)")
    return {"in_features": int(cfg["in_features"]), "out_features": int(cfg["out_features"]),
            "bias": bool(cfg.get("bias", True)), "path": str(weights.resolve())}


def _load_dense(base: Path, info: dict[str, Any]) -> nn.Linear:
    where = Path(info["path"]) if Path(info["path"]).is_absolute() else base / info["path"]
    if where.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(where))
    else:
        state = torch.load(str(where), map_location="cpu", weights_only=True)
    state = {k.removeprefix("linear."): v for k, v in state.items()}
    layer = nn.Linear(info["in_features"], info["out_features"], bias=info["bias"])
    layer.load_state_dict(state)
    return layer


def _pooling_mode(cfg: dict[str, Any], where: Path) -> str:
    modes = {
        "pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
        "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len", "pooling_mode_lasttoken": "lasttoken",
    }
    if isinstance(cfg.get("pooling_mode"), str):  # newer sentence-transformers write one string
        name = {"mean": "mean", "cls": "cls", "max": "max", "mean_sqrt_len_tokens": "mean_sqrt_len",
                "lasttoken": "lasttoken"}.get(cfg["pooling_mode"])
        if name:
            return name
    on = [mode for key, mode in modes.items() if cfg.get(key)]
    others = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v and k not in modes]
    if len(on) != 1 or others:
        raise RecipeError(f"{where}: pooling "
                          f"{sorted(k for k, v in cfg.items() if k.startswith('pooling_mode') and v)}"
                          " is not supported; distill handles exactly one of mean, cls, max, mean_sqrt_len, "
                          "lasttoken")
    return on[0]


def resolve_encoder_dir(name: str, revision: str | None = None) -> str:
    """A local directory for ``name``: packaged models are unpacked, local paths pass through, hub ids are
    downloaded (all files, so modules.json and the pooling config come too)."""
    from distill.packaged import resolve_model

    local = resolve_model(name)
    if Path(local).is_dir():
        return local
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(local, revision=revision)
    except Exception as exc:  # noqa: BLE001 - network, auth, missing repo: say which name and what to do
        raise RecipeError(f"could not fetch {name!r} from the Hugging Face Hub ({type(exc).__name__}: "
                          f"{exc}); give a local sentence-transformers directory, or check the id and your "
                          "network") from None


def load_encoder(path: str | Path) -> SentenceEncoder | StaticEncoder:
    """Load a sentence encoder from a sentence-transformers directory, a distill encoder directory or a plain
    HF encoder directory."""
    info = describe(path)
    if info["kind"] == "static":
        return _load_static(Path(info["backbone"]), info)
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained(info["backbone"])
    dense = _load_dense(Path(path), info["dense"]) if info.get("dense") else None
    return SentenceEncoder(backbone, info["pooling"], bool(info["normalize"]), dense)


def _load_static(where: Path, info: dict[str, Any]) -> StaticEncoder:
    from safetensors.torch import load_file

    files = [where / "static.safetensors", where / "model.safetensors"]
    found = next((f for f in files if f.exists()), None)
    if found is None:
        raise RecipeError(f"{where}: no static embedding weights (static.safetensors / model.safetensors)")
    state = load_file(str(found))
    weight = state.get("embedding.weight")
    if weight is None:
        raise RecipeError(f"{found}: expected a tensor 'embedding.weight'")
    return StaticEncoder(weight, bool(info.get("normalize", False)))
