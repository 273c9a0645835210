"""On-policy batches under gradient accumulation: the token-level loss of an optimisation step is the mean
over every generated position of all its micro-batches, so (batch 2 x 2 micro-batches, the second holding one
row) gives the same update, the same logged loss and the same logged loss parts as one batch of the same 3
rows. A per-micro-batch mean would weigh the lone row's tokens twice as much. Run in float64 (see
lm_helpers.STEP_RTOL for why)."""

from __future__ import annotations

from .lm_helpers import assert_same_step, one_lm_step

ROWS = [{"input_ids": [3, 7, 9, 4, 12, 5, 8, 10], "prompt_length": 5, "domain": 0, "example_index": 0},
        {"input_ids": [20, 6, 11, 13], "prompt_length": 2, "domain": 0, "example_index": 1},
        {"input_ids": [15, 11, 3, 9, 14, 2], "prompt_length": 4, "domain": 0, "example_index": 2}]


def _one_step(tmp_path, tiny_llama, lm_tokenizer, batch, accum):
    from distill.training.on_policy import OnPolicyTrainer

    return one_lm_step(tmp_path, tiny_llama, lm_tokenizer, ROWS, batch, accum, [{"name": "kd"}],
                       trainer_cls=OnPolicyTrainer, lmbda=1.0, max_new_tokens=5, temperature=0.0)


def test_accumulated_on_policy_step_equals_one_batch(tmp_path, tiny_llama, lm_tokenizer):
    big, t_big = _one_step(tmp_path, tiny_llama, lm_tokenizer, batch=3, accum=1)
    small, t_small = _one_step(tmp_path, tiny_llama, lm_tokenizer, batch=2, accum=2)
    assert t_big.on_policy_batches == 1 and t_small.on_policy_batches == 2
    assert_same_step(big, t_big, small, t_small)
