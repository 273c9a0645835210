"""Size and CPU latency of a model, measured the same way for teacher and students."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch

from distill.models import model_inputs


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def dir_size_mb(path: str | os.PathLike[str], pattern: str = "*.safetensors") -> float:
    files = list(Path(path).glob(pattern)) or list(Path(path).glob("*.bin"))
    return sum(f.stat().st_size for f in files) / 2**20


def weights_size_mb(model) -> float:
    """Size of the weights as saved (fp32 unless the model is in another dtype)."""
    return sum(p.numel() * p.element_size() for p in model.state_dict().values()) / 2**20


@torch.no_grad()
def cpu_latency_ms(model, batch: dict[str, torch.Tensor], batch_size: int, repeats: int = 20,
                   threads: int | None = None, prefix: str = "") -> float:
    """Median wall time (ms) of one forward pass at ``batch_size`` on CPU, after two warm-up passes.

    Inputs are the first ``batch_size`` rows of ``batch`` (tiled if needed), so every model sees the same
    texts padded by its own tokenizer.
    """
    model = model.eval()
    device = next(model.parameters()).device
    inputs = model_inputs(batch, prefix)
    n = next(iter(inputs.values())).shape[0]
    reps = -(-batch_size // n)
    inputs = {k: v.repeat(reps, 1)[:batch_size].to(device) for k, v in inputs.items()}
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        for _ in range(2):
            model(**inputs)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(**inputs)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        torch.set_num_threads(old_threads)
    return float(statistics.median(times))
