"""`end_processes()` closes the process group a launch opened, and does nothing in a plain process."""

from __future__ import annotations

import torch.distributed as dist

import distill
from distill.stages import end_processes


def test_without_a_process_group_it_does_nothing():
    assert not dist.is_initialized()
    end_processes()
    assert not dist.is_initialized()


def test_it_closes_an_open_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        assert dist.is_initialized()
        distill.end_processes()  # the top-level name is the same function
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
