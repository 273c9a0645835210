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
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from distill.files import atomic_save, atomic_write_json, read_json, sha256_file
from distill.outputs import ModelOutputs
from distill.store.accumulate import ShardAccumulator
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
    lengths: Callable[[int], int] | None = None,
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

    ``lengths(i)``: the teacher's input length of example ``i``. When given, each shard runs the teacher on
    its rows in order of length (batches of similar length pad little: 1.9x faster on a movie snippets +
    English text mix for mpnet on CPU) and the rows are put back in index order before the shard is written,
    so the store reads the same either way; a shard's batches depend only on its own rows, so an interrupted
    build resumes to the same bytes.
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
        _build_shards(path, key, spec, compute, todo, ranges, batch_size, progress, codec, lengths)

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
        tensors = codec.tensors()
        atomic_save(target, lambda tmp: save_file(tensors, str(tmp)))
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
    lengths: Callable[[int], int] | None = None,
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
            acc = ShardAccumulator(spec, codec)
            rows = list(range(start, stop))
            if lengths is not None:  # longest first (a memory peak shows at once); ties in index order
                rows.sort(key=lambda r: (-lengths(r), r))
            for b0 in range(0, len(rows), batch_size):
                indices = rows[b0:b0 + batch_size]
                with torch.no_grad():
                    outputs = compute(indices)
                acc.add(outputs, len(indices))
                bar.update(len(indices))
            _write_shard(path, key, spec, i, (start, stop), acc,
                         None if lengths is None else [r - start for r in rows])
    finally:
        bar.close()


def _write_shard(
    path: Path, key: str, spec: StoreSpec, index: int, rows: tuple[int, int], acc: ShardAccumulator,
    order: list[int] | None = None,
) -> None:
    stem = shard_stem(index)
    tensors, layout, num_tokens = acc.finish(order)
    final = path / f"{stem}.safetensors"
    # One metadata entry: safetensors writes its metadata map in hash order, which differs between processes;
    # a single key keeps shard bytes (and checksums) identical across builds and ranks.
    metadata = {
        "distill": json.dumps(
            {"format_version": FORMAT_VERSION, "key": key, "shard": index, "start": rows[0], "stop": rows[1]},
            sort_keys=True,
        )
    }
    sha, size = "", 0

    def save(tmp: Path) -> None:
        nonlocal sha, size
        save_file(tensors, str(tmp), metadata=metadata)
        sha, size = sha256_file(tmp), tmp.stat().st_size  # of the bytes about to become the shard

    atomic_save(final, save)
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
