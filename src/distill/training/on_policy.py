"""On-policy distillation (GKD, Agarwal et al. 2024): with probability ``lmbda`` a training batch is
replaced by sequences the *student* writes from the batch's prompts, and the online teacher scores every
generated token; the loss (any ``kd`` divergence, JSD in the paper) is taken on the generated tokens only.

Only online: the teacher's outputs on student samples cannot be stored ahead of time.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from distill.data.text_lm import IGNORE, next_token_labels
from distill.teachers.generate import left_pad
from distill.training.trainer import DistillTrainer


class OnPolicyTrainer(DistillTrainer):
    """``DistillTrainer`` with GKD's student-generated batches. Rows without a prompt (plain text chunks)
    use their first ``prompt_tokens`` tokens as the prompt."""

    def __init__(self, *args: Any, lmbda: float = 0.5, max_new_tokens: int = 32, temperature: float = 1.0,
                 prompt_tokens: int = 16, seed: int = 0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.store is not None or self.teacher is None:
            raise ValueError("on-policy distillation needs the online teacher (store.enabled: false)")
        self.lmbda, self.max_new_tokens, self.temperature = (float(lmbda), int(max_new_tokens),
                                                             float(temperature))
        self.prompt_tokens = int(prompt_tokens)
        self._rng = random.Random(seed)
        self.on_policy_batches = 0

    @torch.no_grad()
    def student_batch(self, model: torch.nn.Module,
                      inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Prompts of ``inputs`` + the student's sampled continuations, as a batch with a loss mask over the
        generated tokens."""
        tok = self.processing_class
        pad = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        eos = tok.eos_token_id
        prompts = []
        for ids, m, p in zip(inputs["input_ids"].tolist(), inputs["attention_mask"].tolist(),
                             inputs["prompt_length"].tolist()):
            n = int(sum(m))
            cut = p if p > 0 else min(self.prompt_tokens, max(n - 1, 1))
            prompts.append(ids[:cut])
        ids, mask = left_pad(prompts, pad)
        unwrapped = self.accelerator.unwrap_model(model)
        was_training = unwrapped.training
        unwrapped.eval()
        kwargs = dict(max_new_tokens=self.max_new_tokens, pad_token_id=pad, eos_token_id=eos)
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_k=0)
        else:
            kwargs.update(do_sample=False)
        device = inputs["input_ids"].device
        # generate() counts position ids from the attention mask itself, so the left padding shifts nothing;
        # the scoring forwards get the same positions from DistillTrainer._model_inputs
        seq = unwrapped.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        unwrapped.train(was_training)
        new = seq[:, ids.shape[1]:]
        gen_mask = torch.ones_like(new)
        if eos is not None:  # tokens after the first EOS are padding
            after = (new == eos).long().cumsum(1) - (new == eos).long()
            gen_mask = (after == 0).long()
        attn = torch.cat([mask.to(device), gen_mask], dim=1)
        prompt_len = torch.full((seq.shape[0],), ids.shape[1], dtype=torch.long, device=device)
        labels = next_token_labels(seq, attn, prompt_len)
        out = dict(inputs)
        out.update(input_ids=seq, attention_mask=attn, labels=labels, loss_mask=(labels != IGNORE).long(),
                   prompt_length=prompt_len)
        return out

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The micro-batches of one optimisation step, each replaced by student generations with
        probability ``lmbda`` *before* the step's tokens are counted: the divisor of a token-level loss is
        then the real number of trained positions over all micro-batches (and processes), generated ones
        included, exactly as for plain batches. The weights do not change between micro-batches, so
        generating here or in ``training_step`` samples from the same student."""
        batches = []
        for _ in range(num_batches):
            try:
                batch = next(epoch_iterator)
            except StopIteration:
                break
            if self.lmbda > 0 and self._rng.random() < self.lmbda:
                batch = self.student_batch(self.model_wrapped, self._prepare_inputs(batch))
                self.on_policy_batches += 1
            batches.append(batch)
        return batches, self._get_num_items_in_batch(batches, device)
