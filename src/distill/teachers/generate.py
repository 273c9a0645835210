"""Sequence-level KD (Kim & Rush, 2016): the teacher writes continuations once, they are kept on disk, and
the student then trains on them as ordinary text (next-token CE, optionally token-level KD as well).

The file is keyed by the teacher, the prompts and the generation settings, so a rerun (or another student)
reuses it; it is written whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from distill.files import atomic_write


def generation_key(teacher_fingerprint: str, prompts: Sequence[Sequence[int]], settings: dict) -> str:
    h = hashlib.sha256()
    h.update(teacher_fingerprint.encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    for p in prompts:
        h.update(b"|" + ",".join(map(str, p)).encode())
    return h.hexdigest()[:20]


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if len(p):
            ids[i, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
            mask[i, width - len(p):] = 1
    return ids, mask


@torch.no_grad()
def generate_ids(model: torch.nn.Module, prompts: Sequence[Sequence[int]], pad_id: int, eos_id: int | None,
                 max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 batch_size: int = 16, seed: int = 0) -> list[list[int]]:
    """Continuations (new tokens only, cut after the first EOS, which is kept) of each prompt."""
    device = next(model.parameters()).device
    out: list[list[int]] = []
    torch.manual_seed(seed)
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        ids, mask = left_pad(chunk, pad_id)
        kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos_id)
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            kwargs.update(do_sample=False)
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        new = gen[:, ids.shape[1]:].cpu()
        for row in new.tolist():
            if eos_id is not None and eos_id in row:
                row = row[: row.index(eos_id) + 1]
            out.append(row)
    return out


def cached_continuations(prompts: Sequence[Sequence[int]], cache_dir: Path, teacher_fingerprint: str,
                         max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                         seed: int = 0) -> tuple[list[list[int]] | None, Path]:
    """(continuations, file) when the teacher's continuations of ``prompts`` with these settings are already
    in ``cache_dir``, else (None, the file they would be written to). Needs no model."""
    settings = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "seed": seed}
    key = generation_key(teacher_fingerprint, prompts, settings)
    path = Path(cache_dir) / f"{key}.jsonl"
    if path.exists():
        with open(path, encoding="utf-8") as fh:
            rows = [json.loads(line)["continuation"] for line in fh]
        if len(rows) == len(prompts):
            return rows, path
    return None, path


def teacher_continuations(model: torch.nn.Module, prompts: Sequence[Sequence[int]], cache_dir: Path,
                          teacher_fingerprint: str, pad_id: int, eos_id: int | None, max_new_tokens: int,
                          temperature: float = 0.0, top_p: float = 1.0, batch_size: int = 16, seed: int = 0,
                          log=print) -> tuple[list[list[int]], Path]:
    """The teacher's continuations of ``prompts``, generated once and read from ``cache_dir`` after."""
    rows, path = cached_continuations(prompts, cache_dir, teacher_fingerprint, max_new_tokens, temperature,
                                      top_p, seed)
    if rows is not None:
        log(f"teacher continuations found in {path}")
        return rows, path
    log(f"the teacher writes continuations of {len(prompts)} prompts (once) into {path}")
    rows = generate_ids(model, prompts, pad_id, eos_id, max_new_tokens, temperature, top_p, batch_size, seed)
    atomic_write(path, lambda fh: fh.writelines(json.dumps({"prompt": list(p), "continuation": c}) + "\n"
                                                for p, c in zip(prompts, rows)))
    return rows, path
