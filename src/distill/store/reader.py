"""Read teacher outputs back from a store: memory-mapped, row-sliced, safe in DataLoader workers."""

from __future__ import annotations

import bisect
import math
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from distill.files import read_json, sha256_file
from distill.outputs import ModelOutputs, SparseLogits
from distill.store.codec import CODEC_FILE, HeadCodec
from distill.store.fidelity import describe_fidelity, load_fidelity
from distill.store.fingerprint import FORMAT_VERSION
from distill.store.spec import MANIFEST_NAME, RECONSTRUCTIONS, StoreError, StoreSpec

_REBUILD = "rebuild it with `distill cache` (finished shards are reused)"
_MAX_OPEN_SHARDS = 128  # bounds open files/mappings for stores with thousands of shards


def _runs(rows: list[int]) -> list[tuple[int, int]]:
    """Sorted unique rows -> maximal contiguous [start, stop) runs, so each run is one slice read."""
    runs: list[tuple[int, int]] = []
    for r in rows:
        if runs and runs[-1][1] == r:
            runs[-1] = (runs[-1][0], r + 1)
        else:
            runs.append((r, r + 1))
    return runs


def _index_list(indices: Sequence[int] | torch.Tensor, n: int) -> list[int]:
    if isinstance(indices, torch.Tensor):
        if indices.is_floating_point() or indices.is_complex() or indices.dim() > 1:
            raise TypeError(
                f"indices must be a 1-D integer tensor, got {indices.dtype} of shape {tuple(indices.shape)}"
            )
        out = indices.reshape(-1).tolist()
    else:
        out = [int(i) for i in indices]
    if not out:
        raise ValueError("fetch needs at least one index")
    for i in out:
        if not 0 <= i < n:
            raise IndexError(f"example index {i} is out of range for a store of {n} examples")
    return out


class TeacherStore:
    """A finished store, opened from its folder. Fetch rows with :meth:`fetch`.

    File handles (memory maps) are opened lazily per shard and never pickled: a store handed to DataLoader
    workers reopens its shards in each worker process.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], reconstruct: str | None = None):
        self.path = path
        self.manifest = manifest
        self._spec = StoreSpec.from_dict(manifest["spec"])
        self.reconstruct = reconstruct or self._spec.reconstruct
        if self.reconstruct not in RECONSTRUCTIONS:
            raise ValueError(f"reconstruct: {self.reconstruct!r}; choose from {', '.join(RECONSTRUCTIONS)}")
        self.layout: dict[str, Any] = manifest["layout"]
        self._shards: list[dict[str, Any]] = manifest["shards"]
        self._starts = [s["start"] for s in self._shards]
        self._reset_handles()

    # --------------------------------------------------------------------------------------------- opening

    @classmethod
    def open(cls, path: str | Path, reconstruct: str | None = None) -> TeacherStore:
        """Open the store folder ``path`` (``<root>/<key>``). ``reconstruct`` overrides the spec's mode."""
        path = Path(path).expanduser()
        manifest_path = path / MANIFEST_NAME
        if not manifest_path.exists():
            why = "does not exist" if not path.exists() else "has no manifest.json (its build never finished)"
            raise StoreError(f"no complete teacher store at {path}: the folder {why}; {_REBUILD}")
        try:
            manifest = read_json(manifest_path)
        except (OSError, ValueError) as exc:
            raise StoreError(
                f"the manifest of the teacher store at {path} is unreadable ({exc}); {_REBUILD}"
            ) from None
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise StoreError(
                f"the teacher store at {path} has format version {version}, this distill reads version "
                f"{FORMAT_VERSION}; {_REBUILD}"
            )
        for shard in manifest["shards"]:
            f = path / shard["file"]
            if not f.exists() or f.stat().st_size != shard["bytes"]:
                raise StoreError(
                    f"the teacher store at {path} is incomplete: {shard['file']} is missing or has the "
                    f"wrong size; {_REBUILD}"
                )
        return cls(path, manifest, reconstruct)

    def _reset_handles(self) -> None:
        self._codec: HeadCodec | None = None
        self._codec_on: dict[str, HeadCodec] = {}  # copies on other devices, made when first asked for
        self._handles: OrderedDict[int, Any] = OrderedDict()
        self._offsets: dict[int, torch.Tensor] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_handles", "_offsets", "_pid", "_codec", "_codec_on"):
            state.pop(name)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_handles()

    def close(self) -> None:
        self._reset_handles()

    def _handle(self, shard: int) -> Any:
        if os.getpid() != self._pid:  # forked after opening: maps are not ours to share
            self._reset_handles()
        handle = self._handles.get(shard)
        if handle is None:
            handle = safe_open(str(self.path / self._shards[shard]["file"]), framework="pt")
            self._handles[shard] = handle
            if len(self._handles) > _MAX_OPEN_SHARDS:
                self._handles.popitem(last=False)
        else:
            self._handles.move_to_end(shard)
        return handle

    def _shard_offsets(self, shard: int) -> torch.Tensor:
        offsets = self._offsets.get(shard)
        if offsets is None:
            offsets = self._handle(shard).get_tensor("offsets")  # (N+1,), small
            self._offsets[shard] = offsets
        return offsets

    # ------------------------------------------------------------------------------------------ properties

    @property
    def codec(self) -> HeadCodec:
        """The head codec of a ``head3`` / ``head4`` / ``head8`` store (loaded once per process)."""
        if self._codec is None:
            f = self.path / CODEC_FILE
            if not f.exists():
                raise StoreError(f"the teacher store at {self.path} has no {CODEC_FILE}; {_REBUILD}")
            self._codec = HeadCodec.load(f)
        return self._codec

    @property
    def spec(self) -> StoreSpec:
        return self._spec

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def num_classes(self) -> int | None:
        return self.manifest["num_classes"]

    @property
    def num_tokens(self) -> int | None:
        return self.manifest.get("num_tokens")

    def __len__(self) -> int:
        return self.manifest["num_examples"]

    def __repr__(self) -> str:
        return f"TeacherStore({str(self.path)!r}, examples={len(self)}, capture={list(self.spec.capture)})"

    # ---------------------------------------------------------------------------------------------- fetch

    def _field_names(self) -> tuple[list[str], list[str]]:
        """(per-example tensor names, per-token tensor names) in this store."""
        per_example, per_token = [], []
        logits = self.layout.get("logits")
        if logits is not None:
            if logits.get("codec"):
                names = ["head_codes", "head_scale"]
            elif logits["sparse"]:
                names = ["topk_values", "topk_indices", "logsumexp"]
            else:
                names = ["logits"]
            (per_token if logits["per_token"] else per_example).extend(names)
        if "embeddings" in self.layout:
            per_example.append("embeddings")
        if "hidden_states" in self.layout:
            per_token.extend(f"hidden_{layer}" for layer in self.layout["hidden_states"]["layers"])
        if "qkv" in self.layout:
            per_token.extend(f"{name}_{layer}" for layer in self.layout["qkv"]["layers"] for name in "qkv")
        return per_example, per_token

    def fetch(
        self,
        indices: Sequence[int] | torch.Tensor,
        pad_to: int | None = None,
        padding_side: str = "right",
        device: torch.device | str | None = None,
    ) -> ModelOutputs:
        """Teacher outputs for the examples ``indices`` (global, any order, repeats allowed).

        Per-token fields are padded to the longest example in the batch (or to ``pad_to``), on the right
        unless ``padding_side="left"`` (match the student batch's padding), and come with ``attention_mask``
        (B, L). Floating tensors are returned as float32. A head-codec store decodes its logits on
        ``device`` when given (only the codes travel there), else on the CPU; other fields stay on the CPU.
        """
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side: {padding_side!r}; use 'right' or 'left'")
        idx = _index_list(indices, len(self))
        per_example_names, per_token_names = self._field_names()

        # group the requested rows by shard; only those rows are read from the memory map
        by_shard: dict[int, list[int]] = {}
        where: list[tuple[int, int]] = []  # (shard, local row) per batch position
        for i in idx:
            s = bisect.bisect_right(self._starts, i) - 1
            local = i - self._starts[s]
            by_shard.setdefault(s, []).append(local)
            where.append((s, local))

        ex_chunks: dict[str, list[torch.Tensor]] = {n: [] for n in per_example_names}
        tok_chunks: dict[str, list[torch.Tensor]] = {n: [] for n in per_token_names}
        ex_pos: dict[tuple[int, int], int] = {}  # (shard, row) -> row in the concatenated per-example chunks
        tok_span: dict[tuple[int, int], tuple[int, int]] = {}  # -> (first token, length) in token chunks
        n_rows = n_tokens = 0
        for s, rows in by_shard.items():
            runs = _runs(sorted(set(rows)))
            f = self._handle(s)
            for name in per_example_names:
                sl = f.get_slice(name)
                ex_chunks[name].extend(sl[a:b] for a, b in runs)
            for a, b in runs:
                for r in range(a, b):
                    ex_pos[(s, r)] = n_rows + r - a
                n_rows += b - a
            if per_token_names:
                offsets = self._shard_offsets(s)
                token_runs = [(int(offsets[a]), int(offsets[b])) for a, b in runs]
                for name in per_token_names:
                    sl = f.get_slice(name)
                    tok_chunks[name].extend(sl[t0:t1] for t0, t1 in token_runs)
                for (a, b), (t0, _) in zip(runs, token_runs, strict=True):
                    for r in range(a, b):
                        tok_span[(s, r)] = (n_tokens + int(offsets[r]) - t0, int(offsets[r + 1] - offsets[r]))
                    n_tokens += int(offsets[b]) - t0

        out: dict[str, torch.Tensor] = {}
        if per_example_names:
            order = torch.tensor([ex_pos[w] for w in where], dtype=torch.long)
            for name in per_example_names:
                out[name] = torch.cat(ex_chunks[name]).index_select(0, order)  # (B, ...)
        attention_mask = None
        if per_token_names:
            spans = torch.tensor([tok_span[w] for w in where], dtype=torch.long).reshape(-1, 2)
            starts, lengths = spans[:, 0], spans[:, 1]  # (B,)
            longest = int(lengths.max()) if lengths.numel() else 0
            width = longest if pad_to is None else int(pad_to)
            if width < longest:
                raise ValueError(
                    f"pad_to={pad_to} is shorter than the longest example in the batch ({longest})"
                )
            positions = torch.arange(width).unsqueeze(0)  # (1, L)
            if padding_side == "left":
                positions = positions - (width - lengths).unsqueeze(1)  # (B, L): token number, < 0 on padding
            valid = (positions >= 0) & (positions < lengths.unsqueeze(1))  # (B, L)
            source = (starts.unsqueeze(1) + positions)[valid]  # (valid tokens,) rows of the token chunks
            for name in per_token_names:
                tokens = torch.cat(tok_chunks[name])  # (T, ...)
                padded = tokens.new_zeros((len(idx), width, *tokens.shape[1:]))  # (B, L, ...)
                padded[valid] = tokens.index_select(0, source)
                out[name] = padded
            attention_mask = valid.long()
        return self._outputs(out, attention_mask, device)

    def _codec_for(self, device: torch.device | str | None) -> HeadCodec:
        if device is None or torch.device(device).type == "cpu":
            return self.codec
        key = str(torch.device(device))
        if key not in self._codec_on:
            self._codec_on[key] = self.codec.to(device)
        return self._codec_on[key]

    def _outputs(self, t: dict[str, torch.Tensor], attention_mask: torch.Tensor | None,
                 device: torch.device | str | None = None) -> ModelOutputs:
        logits: torch.Tensor | SparseLogits | None = None
        layout = self.layout.get("logits")
        if layout is not None:
            if layout.get("codec"):
                # every logit, rebuilt from the coded final hidden state (padded positions decode to the mean)
                logits = self._codec_for(device).logits(t["head_codes"], t["head_scale"])
            elif layout["sparse"]:
                values, indices, lse = (
                    t["topk_values"].float(),
                    t["topk_indices"].long(),
                    t["logsumexp"].float(),
                )
                if layout["per_token"] and attention_mask is not None:
                    # padded positions get a valid (uniform over k classes) distribution, so no loss sees NaN
                    pad = attention_mask == 0
                    k = values.shape[-1]
                    indices[pad] = torch.arange(k)
                    lse[pad] = math.log(k)
                logits = SparseLogits(values, indices, lse, layout["num_classes"], mode=self.reconstruct)
            else:
                logits = t["logits"].float()
        hidden = None
        if "hidden_states" in self.layout:
            layers = self.layout["hidden_states"]["layers"]
            items: list[torch.Tensor | None] = [None] * (max(layers) + 1)
            for layer in layers:
                items[layer] = t[f"hidden_{layer}"].float()
            hidden = tuple(items)  # type: ignore[arg-type]  # None marks a layer the store did not keep
        qkv = None
        if "qkv" in self.layout:
            layers = self.layout["qkv"]["layers"]
            slots: list[Any] = [None] * max(layers)
            for layer in layers:
                # stored per token (B, L, heads, head_dim) -> (B, heads, L, head_dim); padded tokens are zeros
                slots[layer - 1] = tuple(t[f"{name}_{layer}"].float().transpose(1, 2) for name in "qkv")
            qkv = tuple(slots)  # None marks a layer the store did not keep
        embeddings = t["embeddings"].float() if "embeddings" in t else None
        return ModelOutputs(
            logits=logits, hidden_states=hidden, qkv=qkv, embeddings=embeddings, attention_mask=attention_mask
        )

    # ----------------------------------------------------------------------------------------- inspection

    def verify(self) -> list[str]:
        """Recompute every shard's sha256; returns the names of missing or corrupt shard files."""
        bad = []
        for shard in self._shards:
            f = self.path / shard["file"]
            if not f.exists() or f.stat().st_size != shard["bytes"] or sha256_file(f) != shard["sha256"]:
                bad.append(shard["file"])
        want = (self.layout.get("logits") or {}).get("codec_sha256")
        if want is not None:
            f = self.path / CODEC_FILE
            if not f.exists() or sha256_file(f) != want:
                bad.append(CODEC_FILE)
        return bad

    def info(self) -> dict[str, Any]:
        m = self.manifest
        size = sum(
            f.stat().st_size for f in self.path.iterdir() if f.is_file() and not f.name.startswith(".")
        )
        n = len(self)
        tokens = m.get("num_tokens")
        # the codec (the teacher's output layer) is paid once per store, not per token: shown apart
        fixed = (self.path / CODEC_FILE).stat().st_size if (self.path / CODEC_FILE).exists() else 0
        return {
            "path": str(self.path),
            "key": self.key,
            "format_version": m["format_version"],
            "spec": dict(m["spec"]),
            "layout": m["layout"],
            "num_examples": n,
            "num_shards": m["num_shards"],
            "num_classes": m["num_classes"],
            "num_tokens": tokens,
            "bytes": size,
            "fixed_bytes": fixed,
            "bytes_per_example": (size - fixed) / n,
            "bytes_per_token": (size - fixed) / tokens if tokens else None,
            "created": m["created"],
            "meta": dict(m.get("meta") or {}),
            "fidelity": load_fidelity(self.path),
        }


def stored_embeddings(store: Any, index: torch.Tensor, chunk: int = 8_192) -> torch.Tensor:
    """The stored teacher embeddings of rows ``index`` as one float32 (N, D) tensor, fetched ``chunk`` rows at
    a time (any store with ``fetch``: one teacher's, or several joined)."""
    return torch.cat([store.fetch(part).embeddings.float() for part in index.split(chunk)])


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_info(info: dict[str, Any]) -> str:
    """A two-column human table of :meth:`TeacherStore.info`."""
    spec, layout = info["spec"], info["layout"]
    captured = []
    if "logits" in layout:
        lg = layout["logits"]
        kept = f"top-{lg['k']} of {lg['num_classes']}" if lg["sparse"] else f"all {lg['num_classes']}"
        if lg.get("codec"):
            kept += (f", rebuilt from the output layer's {lg['hidden_size']} inputs at {lg['codec'][4:]} "
                     "bits each on average")
        captured.append(f"logits ({kept}, per {'token' if lg['per_token'] else 'example'})")
    if "embeddings" in layout:
        captured.append(f"embeddings (dim {layout['embeddings']['dim']})")
    if "hidden_states" in layout:
        hs = layout["hidden_states"]
        captured.append(f"hidden_states layers {hs['layers']} (size {hs['hidden_size']})")
    if "qkv" in layout:
        qkv = layout["qkv"]
        captured.append(f"qkv layers {qkv['layers']} ({qkv['heads']} heads of {qkv['head_dim']})")
    size = f"{_human_bytes(info['bytes'])} ({_human_bytes(info['bytes_per_example'])} / example"
    if info.get("bytes_per_token"):
        size += f", {_human_bytes(info['bytes_per_token'])} / token"
    if info.get("fixed_bytes"):
        size += f"; plus {_human_bytes(info['fixed_bytes'])} once for the codec"
    rows = [
        ("key", info["key"]),
        ("path", info["path"]),
        ("examples", f"{info['num_examples']:,}"),
        ("tokens", f"{info['num_tokens']:,}" if info.get("num_tokens") else "-"),
        ("shards", f"{info['num_shards']} x {spec['shard_size']} examples"),
        ("captured", "; ".join(captured)),
        ("dtype", spec["dtype"]),
        ("reconstruct", spec["reconstruct"]),
        ("size", size + ")"),
        *([("fidelity", describe_fidelity(info["fidelity"]))] if info.get("fidelity") else []),
        ("created", info["created"]),
        ("format", str(info["format_version"])),
    ]
    rows += [(f"meta.{k}", str(v)) for k, v in sorted(info.get("meta", {}).items())]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
