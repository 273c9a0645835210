"""A thin ``transformers.Trainer`` subclass: only the loss changes. Checkpointing, mixed precision,
distributed launch (DDP/FSDP/DeepSpeed via accelerate) and logging integrations stay the Trainer's."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback

from distill.data.tokenize import TEACHER_PREFIX
from distill.models import accepts_position_ids, forward_outputs, model_inputs, positions_from_mask
from distill.outputs import ModelOutputs, SparseLogits
from distill.training import fsdp
from distill.training.distiller import Distiller

DISTILLER_STATE = "distiller.pt"
_STEPS = " steps"  # key of the summed shares among the accumulated loss parts (no loss name has a space)


def _to_device(out: ModelOutputs, device: torch.device) -> ModelOutputs:
    def move(x):
        if x is None:
            return None
        if isinstance(x, SparseLogits):
            return x.to(device)
        if isinstance(x, tuple):
            return tuple(move(t) for t in x)
        return x.to(device)

    return ModelOutputs(
        logits=move(out.logits),
        hidden_states=move(out.hidden_states),
        attentions=move(out.attentions),
        qkv=move(out.qkv),
        embeddings=move(out.embeddings),
        attention_mask=move(out.attention_mask),
        extra={k: move(v) for k, v in out.extra.items()},
    )


class _ClearDistillerGrads(TrainerCallback):
    """The Trainer clears only the model's gradients after each optimisation step; the distiller's own
    parameters (learned projectors) live outside the model, and without this their gradients would add up
    over every step of the run (each update following the sum of all past gradients, and a resumed run, which
    starts from zero, diverging from the uninterrupted one)."""

    def __init__(self, distiller: Distiller):
        self.distiller = distiller

    def on_train_begin(self, args, state, control, **kwargs):
        self.distiller.zero_grad(set_to_none=True)

    def on_step_end(self, args, state, control, **kwargs):
        self.distiller.zero_grad(set_to_none=True)


class DistillTrainer(Trainer):
    """Trains the student on ``distiller``'s weighted losses.

    The teacher's outputs come from ``store`` (a :class:`distill.store.TeacherStore`, looked up by each row's
    ``example_index``) or, when no store is given, from ``teacher`` run under ``no_grad`` every step.

    ``token_level=True`` (causal LMs) normalises by tokens instead of micro-batches: every loss of the
    recipe is then a mean over the batch's ``loss_mask`` positions, and each micro-batch's mean is rescaled
    to ``sum / (valid tokens of the whole accumulated batch, summed over every process)``, so accumulating
    micro-batches, or splitting them over processes, gives exactly the loss and gradients of one big batch.
    ``vocab_size`` slices teacher and student logits to the first ``vocab_size`` entries (padded LM heads).
    """

    def __init__(self, *args: Any, distiller: Distiller, teacher: torch.nn.Module | None = None,
                 store: Any = None, token_level: bool = False, vocab_size: int | None = None,
                 anchor: float = 0.0, neighbour_group: int = 0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.neighbour_group = neighbour_group  # train.neighbour_group: batches of teacher neighbours
        self.token_level = token_level
        # L2-SP (train.anchor): the weights training starts from, taken before a resumed run loads its
        # checkpoint, so a resumed run is pulled toward the same point
        self.anchor = anchor
        self._start = ({n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
                       if anchor else {})
        self.vocab_size = vocab_size
        self.distiller = distiller.to(self.args.device)
        self.add_callback(_ClearDistillerGrads(self.distiller))
        self.teacher = teacher
        # several teachers (distill.store.ensemble) are combined at the temperature of these losses
        self.store = store.bind(distiller) if hasattr(store, "bind") else store
        if teacher is not None:
            teacher.eval().requires_grad_(False)  # frozen: never gets optimizer state or gradients
            if self.is_fsdp_enabled:  # sharded like the student: no process holds the whole teacher
                self.teacher = fsdp.shard_frozen_teacher(teacher, self.accelerator)
            elif self.is_deepspeed_enabled:  # ZeRO-3: partitioned too, in an inference-only engine
                self.teacher = fsdp.deepspeed_teacher(teacher, self.accelerator)
            else:
                teacher.to(self.args.device)
        if distiller.needs_teacher and teacher is None and store is None:
            raise ValueError("the recipe's losses read teacher outputs, but neither a teacher nor a store "
                             "was given")
        # Our losses are means over each micro-batch, so the Trainer must divide by the accumulation steps
        # (it skips that when it believes the model normalised by num_items_in_batch itself).
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False
        if token_level:  # compute_loss divides by the accumulated token count itself
            self.loss_is_scaled_for_ga = True
        # loss parts since the last log, each micro-batch weighted as the optimised loss weighs it (see log)
        self._parts: dict[str, torch.Tensor] = {}

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        fsdp.enable_on_cpu(self)  # accelerate keeps DDP on CPU processes even when FSDP was asked for

    # -- loss ---------------------------------------------------------------------------------------------
    def _model_inputs(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                      prefix: str = "") -> dict[str, torch.Tensor]:
        """What ``model`` is called with. Token-level (causal-LM) runs also pass position ids counted from the
        attention mask: the on-policy batches are left-padded, and without them every row would be scored at
        positions shifted by its padding (models with absolute position embeddings then give other logits)."""
        x = model_inputs(inputs, prefix)
        if (self.token_level and "attention_mask" in x
                and accepts_position_ids(self.accelerator.unwrap_model(model))):
            x["position_ids"] = positions_from_mask(x["attention_mask"])
        return x

    def _teacher_outputs(self, inputs: dict[str, torch.Tensor]) -> ModelOutputs:
        if not self.distiller.needs_teacher:
            return ModelOutputs()
        if self.store is not None:
            device = inputs["input_ids"].device  # a head-codec store decodes there
            fetched = self.store.fetch(inputs["example_index"].detach().cpu(), device=device)
            return _to_device(fetched, device)
        prefix = TEACHER_PREFIX if TEACHER_PREFIX + "input_ids" in inputs else ""
        with torch.no_grad():
            return forward_outputs(
                self.teacher, self._model_inputs(self.teacher, inputs, prefix),
                hidden=self.distiller.needs("hidden_states", "teacher"),
                attentions=self.distiller.needs("attentions", "teacher"),
                qkv_layers=self.distiller.qkv_layers("teacher"),
                embeddings=self.distiller.needs("embeddings", "teacher"),
            )

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device):
        """Token-level runs: the trained positions of every micro-batch of this optimisation step, summed
        over all processes (the divisor that makes accumulation and multi-process runs exact)."""
        if not self.token_level:
            return super()._get_num_items_in_batch(batch_samples, device)
        from distill.losses.logits import LOSS_MASK

        count = sum(int(b[LOSS_MASK].sum()) for b in batch_samples if LOSS_MASK in b)
        total = torch.tensor(count, dtype=torch.long, device=device)
        if self.accelerator.num_processes > 1:
            total = self.accelerator.gather(total.reshape(1)).sum()
        return total

    def _slice_vocab(self, out: ModelOutputs) -> ModelOutputs:
        z = out.logits
        if self.vocab_size is not None and isinstance(z, torch.Tensor) and z.shape[-1] > self.vocab_size:
            out.logits = z[..., : self.vocab_size]
        return out

    def _get_train_sampler(self, train_dataset=None):
        """``train.group_by_length``: length buckets in a fresh batch order each epoch
        (:class:`distill.training.sampling.LengthBucketSampler`) for tokenised rows; otherwise the Trainer's
        own choice. ``neighbour_group`` > 1: groups of the teacher's nearest rows, from the store's vectors
        (:class:`distill.training.sampling.NeighbourGroupSampler`)."""
        ds = train_dataset if train_dataset is not None else self.train_dataset
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        if self.neighbour_group > 1:
            return self._neighbour_sampler(ds, seed)
        if (self.args.train_sampling_strategy == "group_by_length"
                and "input_ids" in (getattr(ds, "column_names", None) or [])):
            from distill.training.sampling import LengthBucketSampler

            return LengthBucketSampler([len(ids) for ids in ds["input_ids"]], self._train_batch_size, seed)
        return super()._get_train_sampler(train_dataset)

    def _neighbour_sampler(self, ds, seed: int):
        from distill.store import stored_embeddings
        from distill.training.sampling import NeighbourGroupSampler, teacher_neighbours

        if self.store is None or "example_index" not in (getattr(ds, "column_names", None) or []):
            raise ValueError("train.neighbour_group groups rows by the teacher's stored vectors; it needs "
                             "the teacher-output store (store.enabled: true)")
        index = torch.tensor(ds["example_index"])
        vectors = stored_embeddings(self.store, index)
        near = teacher_neighbours(vectors, k=4 * self.neighbour_group, seed=seed)
        lengths = [len(ids) for ids in ds["input_ids"]] if "input_ids" in ds.column_names else None
        return NeighbourGroupSampler(near, self.neighbour_group, seed, lengths=lengths,
                                     batch_size=self._train_batch_size if lengths else None)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        student = forward_outputs(
            model, self._model_inputs(model, inputs),
            hidden=self.distiller.needs("hidden_states", "student"),
            attentions=self.distiller.needs("attentions", "student"),
            qkv_layers=self.distiller.qkv_layers("student"),
            embeddings=self.distiller.needs("embeddings", "student"),
        )
        teacher = self._teacher_outputs(inputs)
        if self.vocab_size is not None:
            student, teacher = self._slice_vocab(student), self._slice_vocab(teacher)
        loss, parts = self.distiller(student, teacher, inputs)
        if self.anchor and model.training:
            pull = self.anchor * self._distance_from_start()
            loss, parts = loss + pull, {**parts, "anchor": pull}
        # what this micro-batch's loss counts for in the step's optimised loss (times the number of processes,
        # which the mean over processes takes out again): its token share under token-level normalisation,
        # else 1 / micro-batches, the Trainer's own division
        share: torch.Tensor | float = 1.0 / max(
            int(getattr(self, "current_gradient_accumulation_steps", 1)), 1)
        if self.token_level and model.training and num_items_in_batch is not None:
            from distill.losses.logits import LOSS_MASK

            # each loss is a mean over this micro-batch's positions: turn it into its share of the mean over
            # the whole accumulated (and, under DDP, all-process) batch; DDP averages gradients over the
            # processes, hence the factor num_processes
            local = inputs[LOSS_MASK].sum().to(loss.dtype)
            total = torch.as_tensor(num_items_in_batch, dtype=loss.dtype, device=loss.device).clamp_min(1.0)
            share = local / total * self.accelerator.num_processes
            loss = loss * share
        if model.training:
            self._add_parts(parts, share)
        return (loss, {"logits": student.logits}) if return_outputs else loss

    def _distance_from_start(self) -> torch.Tensor:
        """Squared L2 distance of the trained weights from their starting values (every process holds whole
        weights: DDP averages the identical gradients of this term)."""
        total = torch.zeros((), device=self.args.device)
        for name, p in self.model.named_parameters():
            start = self._start.get(name)
            if start is not None:
                total = total + (p.float() - start.float()).pow(2).sum()
        return total

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # Evaluation needs no teacher: validation rows are not in the store, and the metric is the student's.
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            logits = model(**model_inputs(inputs)).logits
        labels = inputs.get("labels")
        loss = None
        if labels is not None and bool((labels != -100).any()):
            loss = F.cross_entropy(logits.float(), labels, ignore_index=-100).detach()
        if prediction_loss_only:
            return loss, None, None
        return loss, logits.detach(), labels

    def _add_parts(self, parts: dict[str, torch.Tensor], share: torch.Tensor | float) -> None:
        """Add one micro-batch's unweighted loss parts times the weight its loss carries in the optimised
        loss. The shares themselves are summed under ``STEPS``: per optimisation step they add up to 1 (to the
        number of processes, summed over them), so that sum counts the steps since the last log, resumed runs
        included. Kept as float64 tensors on the training device (float32 on MPS): logging costs no sync."""
        dtype = torch.float32 if self.args.device.type == "mps" else torch.float64
        for k, v in [(_STEPS, torch.ones((), device=self.args.device)), *parts.items()]:
            v = v.detach().to(device=self.args.device, dtype=dtype) * share
            self._parts[k] = self._parts[k] + v if k in self._parts else v

    def _logged_parts(self) -> dict[str, float]:
        """The loss parts of the steps since the last log: per step, the sum of each micro-batch's part times
        its share (exactly how the optimised loss is formed), averaged over the steps and over the processes,
        as the Trainer does for ``loss``. So the logged parts of 2 accumulated micro-batches equal those of
        one batch of the same rows, and ``loss == sum(weight * part)``. Collective: every process calls it."""
        if not self._parts:
            return {}
        keys = sorted(self._parts)  # the same losses, hence the same keys, on every process
        values = torch.stack([self._parts[k].reshape(()) for k in keys])
        self._parts.clear()
        if self.accelerator.num_processes > 1:
            values = self.accelerator.reduce(values, reduction="mean")
        got = dict(zip(keys, values.tolist()))
        steps = got.pop(_STEPS)
        return {f"loss/{k}": v / steps for k, v in got.items()} if steps > 0 else {}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # the Trainer computes "loss" on every process before calling log, so the reduction here is safe
        if "loss" in logs:
            logs.update(self._logged_parts())
        super().log(logs, start_time)

    # -- distillation parameters (projectors) ---------------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # The projectors live outside the DDP-wrapped student, so DDP does not average their gradients:
        # do it here, or each process would drift to its own projector.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            if world > 1:
                for p in self.distiller.parameters():
                    if p.grad is not None:
                        torch.distributed.all_reduce(p.grad)
                        p.grad.div_(world)
        return loss

    def _projector_params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.distiller.parameters() if p.requires_grad]

    def _add_projector_group(self, optimizer) -> None:
        extra = self._projector_params()
        if extra and not any(extra[0] is q for g in optimizer.param_groups for q in g["params"]):
            optimizer.add_param_group({"params": extra, "weight_decay": 0.0})

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        # under FSDP accelerate rebuilds the parameter list from the sharded model, which holds no projector:
        # their group joins after sharding (create_scheduler), before the schedule records the groups
        if not self.is_fsdp_enabled:
            self._add_projector_group(optimizer)
        return optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.is_fsdp_enabled:
            self._add_projector_group(optimizer or self.optimizer)
        return super().create_scheduler(num_training_steps, optimizer)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        # (checkpoints only) projectors, and state such as CRD's queue or TRG's annealing step, so a resumed
        # run continues them; written by the main process only
        distiller_state = self.distiller.state_dict()
        if distiller_state and self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            torch.save(distiller_state, os.path.join(output_dir, DISTILLER_STATE))
        if not self.is_fsdp_enabled:
            return super()._save_optimizer_and_scheduler(output_dir)
        # torch's sharded optimizer state names parameters by their place in the model: the projectors'
        # optimizer state is saved beside it instead
        with fsdp.without_group(self.optimizer, self._projector_params()) as taken:
            super()._save_optimizer_and_scheduler(output_dir)
            if taken is not None and self.args.should_save:
                torch.save(fsdp.group_state_dict(taken),
                           os.path.join(output_dir, fsdp.DISTILLER_OPTIMIZER_STATE))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if not self.is_fsdp_enabled or checkpoint is None:
            return super()._load_optimizer_and_scheduler(checkpoint)
        path = os.path.join(checkpoint, fsdp.DISTILLER_OPTIMIZER_STATE)
        with fsdp.without_group(self.optimizer, self._projector_params()) as taken:
            super()._load_optimizer_and_scheduler(checkpoint)
            if taken is not None and os.path.exists(path):  # restored with the group, when it goes back
                fsdp.load_group_state(taken, torch.load(path, map_location="cpu"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, DISTILLER_STATE)
        if os.path.exists(path):
            self.distiller.load_state_dict(torch.load(path, map_location="cpu"))  # copied onto its device
