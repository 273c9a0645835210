"""Run the teacher once and write its outputs as a sharded, resumable, crash-safe store.

Why safetensors: ``safe_open`` memory-maps a file, so the reader slices the rows of a batch straight out of
the page cache without reading (or unpickling) whole files; each tensor's dtype and shape sit in a small JSON
header that is checked on open; there is no pickle, so a store downloaded from elsewhere cannot run code; and
it is already a dependency of transformers, so it costs nothing to install.

Crash safety: every file is written under a temporary name in the store folder, flushed and fsync'ed, then
``os.replace``'d onto its final name (atomic on POSIX). A ``kill -9`` at any moment therefore leaves either
the old state or the complete new file, never a torn file under a final name. A shard counts as done when its
sidecar JSON exists and the shard's sha256 matches it; ``manifest.json`` (written last, by rank 0) marks the
whole store complete.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from distill.outputs import ModelOutputs, SparseLogits
from distill.store._files import atomic_write_json, fsync_dir, read_json, sha256_file
from distill.store.codec import CODEC_BITS, CODEC_FILE, CodecFormatError, HeadCodec
from distill.store.fingerprint import FORMAT_VERSION
from distill.store.spec import MANIFEST_NAME, StoreError, StoreSpec, shard_stem


def shard_ranges(num_examples: int, shard_size: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) example ranges, one per shard."""
    return [(s, min(s + shard_size, num_examples)) for s in range(0, num_examples, shard_size)]


def build_store(
    root: str | Path,
    key: str,
    spec: StoreSpec,
    compute: Callable[[list[int]], ModelOutputs],
    num_examples: int,
    batch_size: int = 64,
    meta: dict[str, Any] | None = None,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] | None = None,
    progress: bool = True,
    log: Callable[[str], Any] = print,
    head_codec: Callable[[], HeadCodec] | None = None,
) -> Path:
    """Build (or finish, or repair) the store ``root/key`` and return its folder.

    ``compute(indices)`` runs the teacher on the examples with those global indices and returns dense
    ``logits`` (B, C) or (B, L, V) (with ``attention_mask`` (B, L) for sequences), plus ``embeddings`` (B, D),
    ``hidden_states`` (each (B, L, H)) and/or ``qkv`` (per layer (q, k, v), each (B, heads, L, head_dim)) when
    the spec captures them. It is called under ``torch.no_grad()``.

    Shard i is written by rank ``i % world_size``. With several ranks pass ``barrier`` (e.g.
    ``accelerator.wait_for_everyone``): every rank calls it once all its shards are written, rank 0 then
    writes the manifest, and a second ``barrier()`` makes every rank return only once the store is complete.
    Shards already on disk with a matching checksum are reused; a corrupt or half-written one is deleted and
    rebuilt.
    """
    if not isinstance(spec, StoreSpec):
        raise TypeError(f"spec must be a StoreSpec, got {type(spec).__name__}")
    if not isinstance(num_examples, int) or num_examples <= 0:
        raise ValueError(f"num_examples: {num_examples!r}; the store needs at least one example")
    if batch_size <= 0:
        raise ValueError(f"batch_size: {batch_size!r}; use a positive integer")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} / world_size {world_size}: need 0 <= rank < world_size")
    if world_size > 1 and barrier is None:
        raise ValueError(
            "world_size > 1 needs a barrier so rank 0 writes the manifest after every rank finished; "
            "pass barrier=accelerator.wait_for_everyone (or torch.distributed.barrier)"
        )
    meta = dict(meta or {})
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"meta must be JSON-serialisable: {exc}") from None

    path = Path(root).expanduser() / key
    path.mkdir(parents=True, exist_ok=True)
    ranges = shard_ranges(num_examples, spec.shard_size)
    mine = [i for i in range(len(ranges)) if i % world_size == rank]
    if rank == 0:
        _check_existing_manifest(path, key, spec, num_examples)
    _remove_temp_files(path, [shard_stem(i) for i in mine] + ([MANIFEST_NAME] if rank == 0 else []))
    codec = _prepare_codec(path, spec, head_codec, rank, barrier)

    todo = []
    for i in mine:
        problem = _shard_problem(path, i, ranges[i], key, spec, codec)
        if problem is None:
            continue
        if problem != "missing":
            log(
                f"store {key}: {shard_stem(i)} (rows {ranges[i][0]}-{ranges[i][1] - 1}) {problem}; "
                "deleting and rebuilding it"
            )
        _delete_shard(path, i)
        todo.append(i)
    if todo:
        # no reader may trust a store that is being repaired; rank 0 writes a fresh manifest at the end
        (path / MANIFEST_NAME).unlink(missing_ok=True)
        reused = len(mine) - len(todo)
        if reused:
            log(f"store {key}: reusing {reused} finished shard(s), building {len(todo)}")
        _build_shards(path, key, spec, compute, todo, ranges, batch_size, progress, codec)

    if barrier is not None:
        barrier()
    if rank == 0:
        try:
            _write_manifest(path, key, spec, num_examples, ranges, meta, log)
        finally:
            if barrier is not None:
                barrier()  # other ranks return only once the manifest is there (or rank 0 failed)
    elif barrier is not None:
        barrier()
    return path


# ------------------------------------------------------------------------------------------------- shards


def _prepare_codec(path: Path, spec: StoreSpec, fit: Callable[[], HeadCodec] | None, rank: int,
                   barrier: Callable[[], None] | None) -> tuple[HeadCodec, str] | None:
    """The store's head codec and the checksum of its file: loaded when on disk, else fitted by rank 0."""
    if spec.codec == "topk":
        return None
    target = path / CODEC_FILE
    codec = None
    if rank == 0 and target.exists():
        try:
            codec = HeadCodec.load(target)
        except CodecFormatError as exc:  # an older codec: fit anew; the shards see its checksum change
            warnings.warn(f"{exc}; re-coding this store", stacklevel=3)
            target.unlink()
    if rank == 0 and not target.exists():
        if fit is None:
            raise ValueError(f"store codec {spec.codec!r} needs head_codec= (a function that fits the codec)")
        codec = fit()
        if codec.bits != CODEC_BITS[spec.codec]:
            raise ValueError(f"head_codec() returned a {codec.bits}-bit codec for store codec {spec.codec!r}")
        _remove_temp_files(path, [CODEC_FILE])
        tmp = path / f".{CODEC_FILE}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            save_file(codec.tensors(), str(tmp))
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(path)
        codec = None  # code with the file's tensors, as other ranks and any resumed build will
    if barrier is not None:
        barrier()  # every rank codes with rank 0's file
    if codec is None:
        codec = HeadCodec.load(target)
    return codec, sha256_file(target)


def _shard_problem(path: Path, index: int, rows: tuple[int, int], key: str, spec: StoreSpec,
                   codec: tuple[HeadCodec, str] | None = None) -> str | None:
    """None when shard ``index`` is complete and intact, else why it must be (re)built."""
    stem = shard_stem(index)
    data, side = path / f"{stem}.safetensors", path / f"{stem}.json"
    if not data.exists() and not side.exists():
        return "missing"
    if not side.exists():
        return "has no sidecar (the build was interrupted while writing it)"
    if not data.exists():
        return "has a sidecar but no data file"
    try:
        sidecar = read_json(side)
        expected_sha, expected_bytes = sidecar["sha256"], int(sidecar["bytes"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"has an unreadable sidecar ({exc})"
    if sidecar.get("key") != key or sidecar.get("spec") != spec.to_dict():
        raise StoreError(
            f"{side} was written for another key or spec ({sidecar.get('key')}, {sidecar.get('spec')}); "
            "the store key must cover the spec (use distill.store.store_key) or use another folder"
        )
    if (sidecar.get("start"), sidecar.get("stop")) != rows:
        raise StoreError(
            f"{side} holds rows {sidecar.get('start')}-{sidecar.get('stop')} but rows {rows[0]}-{rows[1]} "
            "were asked for: the data changed under the same key; include fingerprint_rows(...) in store_key"
        )
    if codec is not None and sidecar.get("layout", {}).get("logits", {}).get("codec_sha256") != codec[1]:
        return f"was coded with another {CODEC_FILE}"
    size = data.stat().st_size
    if size != expected_bytes:
        return f"is truncated or overwritten ({size} bytes, sidecar says {expected_bytes})"
    if sha256_file(data) != expected_sha:
        return "fails its checksum (corrupt)"
    return None


def _delete_shard(path: Path, index: int) -> None:
    stem = shard_stem(index)
    # sidecar first: a crash in between leaves "data without sidecar", which is detected and rebuilt
    (path / f"{stem}.json").unlink(missing_ok=True)
    (path / f"{stem}.safetensors").unlink(missing_ok=True)


def _remove_temp_files(path: Path, names: list[str]) -> None:
    """Delete leftovers of a killed build, only for the files this rank owns (others may be writing)."""
    for name in names:
        for tmp in path.glob(f".{name}.*tmp-*"):
            tmp.unlink(missing_ok=True)


def _build_shards(
    path: Path,
    key: str,
    spec: StoreSpec,
    compute: Callable[[list[int]], ModelOutputs],
    todo: list[int],
    ranges: list[tuple[int, int]],
    batch_size: int,
    progress: bool,
    codec: tuple[HeadCodec, str] | None = None,
) -> None:
    from tqdm.auto import tqdm

    total = sum(ranges[i][1] - ranges[i][0] for i in todo)
    bar = tqdm(
        total=total,
        desc=f"teacher -> store {key[:8]}",
        unit="ex",
        disable=not progress or not sys.stderr.isatty(),
    )
    try:
        for i in todo:
            start, stop = ranges[i]
            acc = _ShardAccumulator(spec, codec)
            for b0 in range(start, stop, batch_size):
                indices = list(range(b0, min(b0 + batch_size, stop)))
                with torch.no_grad():
                    outputs = compute(indices)
                acc.add(outputs, len(indices))
                bar.update(len(indices))
            _write_shard(path, key, spec, i, (start, stop), acc)
    finally:
        bar.close()


def _write_shard(
    path: Path, key: str, spec: StoreSpec, index: int, rows: tuple[int, int], acc: _ShardAccumulator
) -> None:
    stem = shard_stem(index)
    tensors, layout, num_tokens = acc.finish()
    final = path / f"{stem}.safetensors"
    tmp = path / f".{stem}.safetensors.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    # One metadata entry: safetensors writes its metadata map in hash order, which differs between processes;
    # a single key keeps shard bytes (and checksums) identical across builds and ranks.
    metadata = {
        "distill": json.dumps(
            {"format_version": FORMAT_VERSION, "key": key, "shard": index, "start": rows[0], "stop": rows[1]},
            sort_keys=True,
        )
    }
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        sha = sha256_file(tmp)
        size = tmp.stat().st_size
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path)
    sidecar = {
        "format_version": FORMAT_VERSION,
        "key": key,
        "index": index,
        "file": final.name,
        "start": rows[0],
        "stop": rows[1],
        "num_examples": rows[1] - rows[0],
        "num_tokens": num_tokens,
        "bytes": size,
        "sha256": sha,
        "spec": spec.to_dict(),
        "layout": layout,
    }
    atomic_write_json(path / f"{stem}.json", sidecar)


class _ShardAccumulator:
    """Collects one shard's teacher outputs batch by batch, already truncated/cast for storage."""

    def __init__(self, spec: StoreSpec, codec: tuple[HeadCodec, str] | None = None):
        self.spec = spec
        self.codec = codec
        self.parts: dict[str, list[torch.Tensor]] = {}
        self.lengths: list[torch.Tensor] = []
        self.layout: dict[str, Any] | None = None

    def _put(self, name: str, tensor: torch.Tensor) -> None:
        self.parts.setdefault(name, []).append(tensor.contiguous().cpu())

    def _cast(self, name: str, x: torch.Tensor) -> torch.Tensor:
        y = x.to(self.spec.torch_dtype)
        bad = ~torch.isfinite(y)
        if bool(bad.any()) and bool(torch.isfinite(x[bad]).any()):
            raise StoreError(
                f"teacher {name} overflow {self.spec.dtype} (max |value| {x.abs().max().item():.4g}); "
                "set store.dtype to bfloat16 or float32"
            )
        return y

    def add(self, out: ModelOutputs, n: int) -> None:
        spec = self.spec
        layout: dict[str, Any] = {}
        mask: torch.Tensor | None = None  # (B, L) bool, for per-token fields

        def token_mask(like: torch.Tensor, what: str) -> torch.Tensor:
            nonlocal mask
            if mask is None:
                if out.attention_mask is None:
                    mask = torch.ones(like.shape[:2], dtype=torch.bool, device=like.device)
                else:
                    mask = out.attention_mask.to(like.device) != 0
            if tuple(mask.shape) != tuple(like.shape[:2]):
                raise ValueError(
                    f"{what} has shape {tuple(like.shape)} but attention_mask {tuple(mask.shape)}"
                )
            return mask

        if "logits" in spec.capture and self.codec is not None:
            codec, sha = self.codec
            h = out.extra.get("head_input")
            if h is None or h.dim() != 3 or h.shape[0] != n or h.shape[-1] != codec.hidden_size:
                got = None if h is None else tuple(h.shape)
                raise ValueError(
                    f"store codec {spec.codec!r}: compute must return extra['head_input'] of shape "
                    f"({n}, L, {codec.hidden_size}) (the input of the teacher's output layer); got {got}"
                )
            codes, scales = codec.encode(h.detach()[token_mask(h, "head_input")])
            self._put("head_codes", codes)
            self._put("head_scale", scales)
            layout["logits"] = {"num_classes": codec.vocab_size, "per_token": True, "sparse": False,
                                "k": codec.vocab_size, "codec": spec.codec, "codec_sha256": sha,
                                "hidden_size": codec.hidden_size}
        elif "logits" in spec.capture:
            z = out.logits
            if z is None or isinstance(z, SparseLogits):
                raise ValueError(
                    "compute must return dense teacher logits (a tensor) when the store keeps logits"
                )
            z = z.detach()
            if z.shape[0] != n or z.dim() not in (2, 3):
                raise ValueError(
                    f"compute returned logits of shape {tuple(z.shape)} for {n} examples; "
                    "expected (B, C) or (B, L, V)"
                )
            per_token = z.dim() == 3
            if per_token:
                z = z[token_mask(z, "logits")]  # (T, V): valid tokens, example-major
            c = z.shape[-1]
            sparse = spec.is_sparse(c)
            layout["logits"] = {
                "num_classes": c,
                "per_token": per_token,
                "sparse": sparse,
                "k": spec.topk if sparse else c,
            }
            if sparse:
                zf = z.float()  # ranking and log-normaliser in float32, over the full vector
                values, indices = zf.topk(spec.topk, dim=-1)  # (.., k) sorted descending
                stored = self._cast("logits", values)
                # The normaliser is taken over the full logits with the kept k replaced by their stored
                # (rounded) values: then exp(values - logsumexp) are exact probabilities of one logit vector
                # and never sum past 1. With the raw float32 normaliser, float16 rounding of large logits
                # (spacing 1/64 near 20) makes the kept mass exceed 1 by ~1%. Identical for float32 storage.
                lse = torch.logsumexp(zf.scatter(-1, indices, stored.float()), dim=-1)  # (..,)
                self._put("topk_values", stored)
                self._put("topk_indices", indices.to(torch.int32))  # int16 overflows LM vocabularies
                self._put("logsumexp", lse)
            else:
                self._put("logits", self._cast("logits", z))

        if "embeddings" in spec.capture:
            e = out.embeddings
            if e is None or e.dim() != 2 or e.shape[0] != n:
                got = None if e is None else tuple(e.shape)
                raise ValueError(
                    f"compute must return embeddings of shape ({n}, D) when the store keeps them; got {got}"
                )
            layout["embeddings"] = {"dim": e.shape[1]}
            self._put("embeddings", self._cast("embeddings", e.detach()))

        if "hidden_states" in spec.capture:
            hs = out.hidden_states
            if hs is None or len(hs) <= spec.layers[-1]:
                got = "none" if hs is None else f"{len(hs)}"
                raise ValueError(
                    f"the store keeps hidden_states layers {list(spec.layers)} but compute returned {got}; "
                    "run the teacher with output_hidden_states=True (item 0 = embeddings, i = layer i)"
                )
            hidden_size = None
            for layer in spec.layers:
                h = hs[layer]
                if h is None or h.dim() != 3 or h.shape[0] != n:
                    raise ValueError(f"hidden_states[{layer}] must be (B, L, H) for {n} examples")
                hidden_size = h.shape[-1]
                h = h.detach()[token_mask(h, f"hidden_states[{layer}]")]  # (T, H)
                self._put(f"hidden_{layer}", self._cast(f"hidden_states[{layer}]", h))
            layout["hidden_states"] = {"layers": list(spec.layers), "hidden_size": hidden_size}

        if "qkv" in spec.capture:
            qkv = out.qkv
            have = [] if qkv is None else [i + 1 for i, item in enumerate(qkv) if item is not None]
            missing = [layer for layer in spec.qkv_layers if layer not in have]
            if missing:
                raise ValueError(
                    f"the store keeps qkv layers {list(spec.qkv_layers)} but compute returned layers {have}; "
                    "run the teacher with forward_outputs(..., qkv_layers=spec.qkv_layers)"
                )
            assert qkv is not None
            shape = None
            for layer in spec.qkv_layers:
                for name, x in zip("qkv", qkv[layer - 1]):
                    if x.dim() != 4 or x.shape[0] != n:
                        raise ValueError(f"qkv layer {layer} {name} must be (B, heads, L, head_dim) for {n} examples")
                    if shape is None:
                        shape = (x.shape[1], x.shape[3])
                    elif (x.shape[1], x.shape[3]) != shape:
                        raise ValueError(f"qkv layer {layer} {name} has {x.shape[1]} heads of {x.shape[3]}, "
                                         f"other layers {shape[0]} of {shape[1]}")
                    tokens = x.detach().transpose(1, 2)  # (B, L, heads, head_dim)
                    tokens = tokens[token_mask(tokens, f"qkv layer {layer} {name}")]  # (T, heads, head_dim)
                    self._put(f"{name}_{layer}", self._cast(f"qkv layer {layer} {name}", tokens))
            assert shape is not None
            layout["qkv"] = {"layers": list(spec.qkv_layers), "heads": shape[0], "head_dim": shape[1]}

        layout["per_token"] = mask is not None
        if mask is not None:
            self.lengths.append(mask.sum(dim=1).to(torch.int64).cpu())  # (B,)
        if self.layout is None:
            self.layout = layout
        elif self.layout != layout:
            raise ValueError(f"teacher outputs changed shape between batches: {self.layout} then {layout}")

    def finish(self) -> tuple[dict[str, torch.Tensor], dict[str, Any], int | None]:
        assert self.layout is not None, "a shard has at least one batch"
        tensors = {name: torch.cat(chunks) for name, chunks in self.parts.items()}
        num_tokens = None
        if self.layout["per_token"]:
            lengths = torch.cat(self.lengths)
            offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int64)
            torch.cumsum(lengths, dim=0, out=offsets[1:])
            tensors["offsets"] = offsets  # (N+1,)
            num_tokens = int(offsets[-1])
        return tensors, self.layout, num_tokens


# ------------------------------------------------------------------------------------------------ manifest


def _check_existing_manifest(path: Path, key: str, spec: StoreSpec, num_examples: int) -> None:
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.exists():
        return
    try:
        old = read_json(manifest_path)
    except (OSError, ValueError):
        manifest_path.unlink(missing_ok=True)  # unreadable: rebuilt from the sidecars at the end
        return
    if old.get("format_version") != FORMAT_VERSION:
        manifest_path.unlink(missing_ok=True)
        return
    if old.get("key") != key or old.get("spec") != spec.to_dict() or old.get("num_examples") != num_examples:
        raise StoreError(
            f"the store at {path} was built for {old.get('num_examples')} examples with spec "
            f"{old.get('spec')}, but {num_examples} examples with spec {spec.to_dict()} were asked for under "
            "the same key; "
            "the key must cover the data and the spec (use distill.store.store_key)"
        )


def _write_manifest(
    path: Path,
    key: str,
    spec: StoreSpec,
    num_examples: int,
    ranges: list[tuple[int, int]],
    meta: dict[str, Any],
    log: Callable[[str], Any],
) -> None:
    sidecars, missing = [], []
    for i in range(len(ranges)):
        stem = shard_stem(i)
        try:
            sidecars.append(read_json(path / f"{stem}.json"))
        except (OSError, ValueError):
            missing.append(stem)
            continue
        if not (path / f"{stem}.safetensors").exists():
            missing.append(stem)
    if missing:
        raise StoreError(
            f"store {key}: no finished {', '.join(missing)} (a rank failed or was killed); manifest not "
            "written; run the build again, finished shards are reused"
        )
    layout = sidecars[0]["layout"]
    for side in sidecars[1:]:
        if side["layout"] != layout:
            raise StoreError(
                f"store {key}: {side['file']} has layout {side['layout']} but shard 0 has {layout}"
            )
    shards = [
        {k: side[k] for k in ("index", "file", "start", "stop", "num_tokens", "bytes", "sha256")}
        for side in sidecars
    ]
    per_token = layout["per_token"]
    manifest = {
        "format_version": FORMAT_VERSION,
        "key": key,
        "spec": spec.to_dict(),
        "num_examples": num_examples,
        "num_classes": layout["logits"]["num_classes"] if "logits" in layout else None,
        "num_tokens": sum(s["num_tokens"] for s in sidecars) if per_token else None,
        "layout": layout,
        "num_shards": len(shards),
        "shards": shards,
        "bytes_total": sum(s["bytes"] for s in sidecars),
        "meta": meta,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    manifest_path = path / MANIFEST_NAME
    if manifest_path.exists():
        try:
            old = read_json(manifest_path)
        except (OSError, ValueError):
            old = {}
        old.pop("created", None)
        if old == {k: v for k, v in manifest.items() if k != "created"}:
            return  # nothing changed: keep the original creation time
    atomic_write_json(manifest_path, manifest)
    log(
        f"store {key}: wrote manifest ({len(shards)} shard(s), {manifest['bytes_total'] / 2**20:.1f} MiB) "
        f"at {path}"
    )
