"""FSDP2 for distillation: the student sharded by accelerate's FSDP plugin (through the Trainer), the online
teacher sharded with the same policy but frozen, and the distiller's own parameters (learned projectors) kept
out of the sharded optimizer state, where accelerate and torch's state-dict helpers cannot place them.

Three things the Trainer + accelerate path does not do for a distillation run, each handled here:

- **The CPU backend.** accelerate only turns its FSDP plugin on for accelerator devices; on CPU processes
  (gloo) it silently falls back to DDP. ``enable_on_cpu`` switches the run to FSDP there too, so FSDP runs and
  is tested on machines without a GPU.
- **The teacher.** A teacher that is not sharded is replicated whole on every process, which is the memory
  wall FSDP exists to remove (TRL's trainers leave it so, trl #2580). ``shard_frozen_teacher`` wraps each of
  its transformer layers and then the root with ``fully_shard``, after freezing it: it holds no gradients
  and no optimizer state, and with ``reshard_after_forward`` each layer's full weights exist only while that
  layer runs.
- **Projectors.** accelerate rebuilds the optimizer's parameter list from the model's parameters when it
  shards the model, and torch's optimizer state-dict helpers name every parameter by its place in the model:
  a parameter that lives in the distiller breaks both. The distiller's parameter group joins the optimizer
  after sharding (before the learning-rate schedule is built) and is checkpointed beside the sharded state.

Also here, the same two jobs for the other sharding route: ``deepspeed_teacher`` partitions an online teacher
under DeepSpeed ZeRO-3, and ``plain_copy`` / ``gather_trained`` hand every process the unsharded student back
after a sharded stage.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

DISTILLER_OPTIMIZER_STATE = "distiller_optimizer.pt"


def requested(args: Any) -> bool:
    """Whether these TrainingArguments (or an ``accelerate launch`` FSDP config) ask for FSDP."""
    return (getattr(args, "fsdp_plugin_args", None) is not None
            or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true")


def enable_on_cpu(trainer: Any) -> None:
    """Turn FSDP on for a multi-process CPU run that asked for it (accelerate keeps DDP there)."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if trainer.is_fsdp_enabled or not requested(trainer.args):
        return
    if state.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin_args = trainer.args.fsdp_plugin_args
    # with no plugin arguments (``accelerate launch`` with an FSDP config) the plugin reads the launcher's
    # FSDP_* environment variables itself
    plugin = FullyShardedDataParallelPlugin(**(plugin_args or {}))
    if plugin.fsdp_version != 2:
        raise ValueError("FSDP on CPU processes needs FSDP2 (fsdp_config.version: 2)")
    # both shared states, as accelerate does for GPU FSDP (every AcceleratorState() refreshes from
    # PartialState's)
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    state.fsdp_plugin = plugin
    trainer.is_fsdp_enabled = True
    _return_large_frees_to_the_kernel()


def _return_large_frees_to_the_kernel(threshold: int = 1 << 20) -> bool:
    """glibc keeps freed blocks below its mmap threshold (which grows up to 32 MB) in the heap. FSDP gathers
    and frees every unit's full weights and gradients each step, and on CPU those buffers then fragment the
    heap: resident memory grew by ~100 MB a step and ended above DDP's (bench/RESULTS.md, "DDP vs FSDP
    memory"). Blocks above ``threshold`` are mapped and unmapped instead. False where this is not glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, int(threshold)))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def _layer_classes(model: nn.Module, names: list[str] | None) -> tuple[type, ...]:
    """The module classes that each become one FSDP unit: those named in ``names`` and those in the model's
    ``_no_split_modules`` (the transformer block of a Hugging Face model), as far as the model has them."""
    wanted = set(names or []) | set(getattr(model, "_no_split_modules", None) or [])
    return tuple({type(m) for m in model.modules() if type(m).__name__ in wanted})


def shard_frozen_teacher(teacher: nn.Module, accelerator: Any) -> nn.Module:
    """Shard the (online) teacher over the processes with the student's FSDP policy, frozen.

    Every transformer layer (classes in the plugin's ``transformer_cls_names_to_wrap`` or the teacher's own
    ``_no_split_modules``) is one unit, the rest (embeddings, final norm, head) the root unit;
    every unit reshards after its forward, so no process ever holds the whole teacher. The teacher's
    parameters are frozen before sharding: no gradients, no optimizer state. Mixed precision follows the
    plugin (a bf16 run computes the teacher in bf16 too)."""
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    if isinstance(teacher, FSDPModule):
        return teacher
    plugin = accelerator.state.fsdp_plugin
    teacher.eval().requires_grad_(False)
    names = plugin.transformer_cls_names_to_wrap
    if isinstance(names, str):
        names = [n for n in names.split(",") if n]
    layer_types = _layer_classes(teacher, names)
    mesh = getattr(accelerator, "torch_device_mesh", None)
    kwargs: dict[str, Any] = {
        "reshard_after_forward": True,
        "mp_policy": plugin.mixed_precision_policy or MixedPrecisionPolicy(),
        "offload_policy": plugin.cpu_offload,
    }
    if mesh is not None:
        kwargs["mesh"] = mesh[tuple(accelerator.parallelism_config.fsdp_dim_names)]
    # fully_shard places each shard on the mesh's device itself (or keeps it in CPU memory under offload)
    for module in list(teacher.modules())[1:]:
        if layer_types and isinstance(module, layer_types):
            fully_shard(module, **kwargs)
    fully_shard(teacher, **kwargs)
    return teacher


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


@contextlib.contextmanager
def without_group(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> Iterator[dict | None]:
    """Take the parameter group holding ``params`` (and its per-parameter state) out of ``optimizer`` for
    the duration, so FSDP's optimizer state-dict helpers see only the model's parameters; yields the group
    (None when the optimizer has no such group) and puts it back, at the same position, afterwards."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper shares the inner groups
    ids = {id(p) for p in params}
    index = next((i for i, g in enumerate(inner.param_groups) if ids and ids & {id(p) for p in g["params"]}),
                 None)
    if index is None:
        yield None
        return
    group = inner.param_groups.pop(index)
    state = {p: inner.state.pop(p) for p in group["params"] if p in inner.state}
    try:
        yield {"group": group, "state": state}
    finally:
        inner.param_groups.insert(index, group)
        inner.state.update(state)


def group_state_dict(taken: dict) -> dict:
    """The distiller group's optimizer state in a form that loads into a freshly built group: per parameter
    (by position in the group) its state tensors, plus the group's hyper-parameters."""
    group, state = taken["group"], taken["state"]
    return {
        "hyper": {k: v for k, v in group.items() if k != "params"},
        "state": [{k: (v.detach().cpu() if torch.is_tensor(v) else v) for k, v in state.get(p, {}).items()}
                  for p in group["params"]],
    }


def load_group_state(taken: dict, saved: dict) -> None:
    group, state = taken["group"], taken["state"]
    if len(saved["state"]) != len(group["params"]):
        raise ValueError(f"{DISTILLER_OPTIMIZER_STATE}: {len(saved['state'])} projector parameters saved, "
                         f"{len(group['params'])} in this run; resume with the checkpoint's own recipe")
    group.update(saved["hyper"])
    for p, s in zip(group["params"], saved["state"]):
        if s:
            state[p] = {k: (v.to(p.device) if torch.is_tensor(v) and v.dim() > 0 else v)
                        for k, v in s.items()}


def plain_copy(trainer: Any) -> nn.Module | None:
    """Before a sharded run: an unsharded copy of the student on every process, to receive the trained
    weights afterwards. What follows training (evaluation, export, ``save_pretrained``, the next stage) then
    sees an ordinary model on every process, as after a DDP run: a sharded model's every forward is a
    collective, which a process evaluating alone would wait on forever. None when nothing is sharded."""
    if not trainer.is_fsdp_enabled or is_sharded(trainer.model):
        return None
    import copy

    return copy.deepcopy(trainer.model).to("cpu")


def gather_trained(trainer: Any, plain: nn.Module | None) -> nn.Module:
    """After a sharded run (a collective: every process calls it): the trained weights gathered into
    ``plain`` on every process, returned on the training device; the trainer's own model when nothing was
    sharded."""
    if not trainer.is_fsdp_enabled or plain is None:
        return trainer.model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True))
    plain.load_state_dict({k: v.detach().cpu() for k, v in full.items()})
    return plain.to(trainer.args.device)


def deepspeed_teacher(teacher: nn.Module, accelerator: Any) -> nn.Module:
    """Under DeepSpeed ZeRO-3: the online teacher wrapped in an inference-only DeepSpeed engine with the
    student's ZeRO-3 settings (no optimizer, no scheduler), so its parameters are partitioned over the
    processes and gathered layer by layer as it runs, like the student's. Under ZeRO-1/2 (which partition
    optimizer state only) a frozen teacher has nothing to partition: it is returned as it is."""
    import copy

    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    zero = config.setdefault("zero_optimization", {})
    if zero.get("stage", 0) != 3:
        return teacher
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    width = getattr(getattr(teacher, "config", None), "hidden_size", None)
    # sizes the Trainer fills in from the student's width at initialisation; here from the teacher's
    defaults = {"reduce_bucket_size": (width or 1024) ** 2,
                "stage3_prefetch_bucket_size": int(0.9 * (width or 1024) ** 2),
                "stage3_param_persistence_threshold": 10 * (width or 1024)}
    for key, value in defaults.items():
        if zero.get(key, "auto") == "auto":
            zero[key] = value
    for key in ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps",
                "gradient_clipping"):
        if config.get(key) == "auto":
            config.pop(key)
    config.setdefault("train_micro_batch_size_per_gpu", 1)
    engine, *_ = deepspeed.initialize(model=teacher, config=config)
    engine.eval()
    return engine
