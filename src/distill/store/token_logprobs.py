"""What cross-tokenizer losses need from a teacher: the log-probability of each observed token of the text
under the teacher's *own* tokenization, with the token's UTF-8 byte span.

One float per token (what ``alm`` reads), so the teacher of a cross-tokenizer run costs almost nothing on
disk, and the same record could come from an API teacher that returns log-probabilities; with ``topk`` also
each position's k most likely next tokens and their log-probabilities (what ``hybrid_kl`` reads).

Layout of ``root/key/``: ``shard-00000.npz`` ... (each a run of rows: flat ``ids`` int32, ``logprobs``
float32 with NaN at each row's first token, which nothing predicts, ``spans`` int32 (n, 2), ``offsets``
int64 (rows + 1), and with top-k ``topk_ids`` int32 / ``topk_logprobs`` float32 (n, k)), each written
atomically, then ``manifest.json`` last. A killed build keeps its finished shards and computes only the
missing ones when run again; a store is used only once its manifest exists.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.files import atomic_save, atomic_write_json, read_json

KIND = "token_logprobs"
FORMAT = 1


class TokenLogprobStore:
    """A finished store: per row, the teacher's token ids, observed-token log-probabilities and byte spans."""

    def __init__(self, path: Path, ids: list[np.ndarray], logprobs: list[np.ndarray],
                 spans: list[np.ndarray], manifest: dict[str, Any], topk_ids: list[np.ndarray] | None = None,
                 topk_logprobs: list[np.ndarray] | None = None):
        self.path, self.ids, self.logprobs, self.spans, self.manifest = path, ids, logprobs, spans, manifest
        self.topk_ids, self.topk_logprobs = topk_ids, topk_logprobs
        """With ``topk``: per row, (n, k) the teacher's most likely next tokens at each position and their
        log-probabilities (what ``hybrid_kl`` reads)."""
        self.key = path.name

    @classmethod
    def open(cls, path: Path) -> TokenLogprobStore:
        manifest = read_json(path / "manifest.json")
        if manifest.get("kind") != KIND or manifest.get("format") != FORMAT:
            raise ValueError(f"{path}: not a token log-probability store of format {FORMAT}")
        ids, lps, spans, top_ids, top_lps = [], [], [], [], []
        for s in range(manifest["shards"]):
            with np.load(path / f"shard-{s:05d}.npz") as z:
                off = z["offsets"]
                has_top = "topk_ids" in z.files
                for a, b in zip(off[:-1], off[1:]):
                    ids.append(z["ids"][a:b])
                    lps.append(z["logprobs"][a:b])
                    spans.append(z["spans"][a:b])
                    if has_top:
                        top_ids.append(z["topk_ids"][a:b])
                        top_lps.append(z["topk_logprobs"][a:b])
        if len(ids) != manifest["rows"]:
            raise ValueError(f"{path}: {len(ids)} rows on disk, the manifest says {manifest['rows']}")
        return cls(path, ids, lps, spans, manifest, top_ids or None, top_lps or None)

    def info(self) -> dict[str, Any]:
        n = int(sum(len(x) for x in self.ids))
        return {"kind": KIND, "rows": len(self.ids), "tokens": n, "topk": self.manifest.get("topk", 0),
                "mean_logprob": float(np.nanmean(np.concatenate(self.logprobs))) if n else None,
                **{k: self.manifest[k] for k in ("teacher", "seconds") if k in self.manifest}}


@torch.no_grad()
def observed_token_logprobs(model: torch.nn.Module, rows: Sequence[Sequence[int]], pad_id: int,
                            vocab_size: int | None = None, topk: int = 0) -> list[tuple[np.ndarray, ...]]:
    """Per row, the log-probability of its tokens 1.. under ``model`` (NaN for token 0); with ``topk``, also
    each position's ``topk`` most likely next tokens and their log-probabilities, (n, k) each (right-padded
    batch)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, :len(r)] = 1
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
    if vocab_size is not None:
        logits = logits[..., :vocab_size]
    logp = torch.log_softmax(logits, dim=-1)
    lp = logp[:, :-1].gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
    top = logp.topk(topk, dim=-1) if topk else None
    out = []
    for i, r in enumerate(rows):
        row = np.full(len(r), np.nan, dtype=np.float32)
        row[1:] = lp[i, :len(r) - 1].cpu().numpy()
        if top is None:
            out.append((row,))
        else:
            out.append((row, top.indices[i, :len(r)].cpu().numpy().astype(np.int32),
                        top.values[i, :len(r)].cpu().numpy().astype(np.float32)))
    return out


def build_token_logprob_store(folder: Path, rows: Sequence[dict[str, Any]],
                              model: Callable[[], torch.nn.Module],
                              *, pad_id: int, vocab_size: int | None, batch_size: int, shard_size: int = 512,
                              topk: int = 0, meta: dict[str, Any] | None = None,
                              log: Callable[[str], None] = print) -> tuple[TokenLogprobStore, float | None]:
    """Open ``folder``, running the teacher (``model()``, called only when a shard is missing) over each row's
    ``teacher_ids`` into the shards not on disk yet. Returns the store and the build time (None: it
    existed)."""
    if (folder / "manifest.json").exists():
        return TokenLogprobStore.open(folder), None
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    n_shards = max(1, -(-len(rows) // shard_size))
    for s in range(n_shards):
        path = folder / f"shard-{s:05d}.npz"
        if path.exists():
            continue
        part = rows[s * shard_size:(s + 1) * shard_size]
        log(f"teacher log-probabilities: shard {s + 1}/{n_shards} ({len(part)} rows)")
        order = sorted(range(len(part)), key=lambda i: len(part[i]["teacher_ids"]))  # less padding
        got: dict[int, tuple[np.ndarray, ...]] = {}
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            for i, v in zip(idx, observed_token_logprobs(model(), [part[i]["teacher_ids"] for i in idx],
                                                         pad_id, vocab_size, topk)):
                got[i] = v
        done = [got[i] for i in range(len(part))]
        lengths = [len(r["teacher_ids"]) for r in part]
        arrays = {
            "ids": np.concatenate([np.asarray(r["teacher_ids"], dtype=np.int32) for r in part]),
            "logprobs": np.concatenate([d[0] for d in done]).astype(np.float32),
            "spans": np.concatenate([np.asarray(r["teacher_spans"], dtype=np.int32).reshape(-1, 2)
                                     for r in part]),
            "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        }
        if topk:
            arrays["topk_ids"] = np.concatenate([d[1] for d in done])
            arrays["topk_logprobs"] = np.concatenate([d[2] for d in done])
        atomic_save(path, lambda tmp, a=arrays: _save_npz(tmp, a))
    seconds = time.perf_counter() - t0
    atomic_write_json(folder / "manifest.json", {"kind": KIND, "format": FORMAT, "rows": len(rows),
                                                 "shards": n_shards, "topk": topk, "seconds": seconds,
                                                 **(meta or {})})
    return TokenLogprobStore.open(folder), seconds


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a temporary name
        np.savez(f, **arrays)
