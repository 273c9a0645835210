"""A generative model run in-process with transformers, behind the same interface as the HTTP client, so
labelling works with no endpoint at all (and tests can check the plumbing on a tiny random model)."""

from __future__ import annotations

import hashlib
import threading
from typing import Any

from distill.teachers.blackbox.backend import Backend, ChatResponse, Message, TokenChoice


def plain_prompt(messages: list[Message]) -> str:
    """The conversation as plain text, for tokenizers without a chat template."""
    turns = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n\n".join(turns) + "\n\nassistant:"


class LocalGenerativeTeacher(Backend):
    """Greedy decoding of at most ``max_new_tokens`` tokens; with ``logprobs``, each generated token's
    log-probability and ``top_logprobs`` alternatives come from the model's raw (unprocessed) logits."""

    max_concurrency = 1  # one forward pass at a time; threads would only contend for the same cores

    def __init__(self, model: Any, tokenizer: Any, *, max_new_tokens: int = 16, logprobs: bool = False,
                 top_logprobs: int = 5, identity: str | None = None):
        from distill.store import fingerprint_model

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.logprobs = logprobs
        self.top_logprobs = top_logprobs
        template = tokenizer.chat_template or "plain"
        if not isinstance(template, str):  # some tokenizers keep a dict of named templates
            template = repr(sorted(template.items()) if isinstance(template, dict) else template)
        # weights and chat template decide the answers: both are part of the response-store key
        self._identity = identity or "local:{}:{}".format(
            fingerprint_model(model)[:16], hashlib.sha256(template.encode("utf-8")).hexdigest()[:16])
        self._lock = threading.Lock()
        self.generations = 0

    @classmethod
    def from_pretrained(cls, path: str, **kwargs: Any) -> LocalGenerativeTeacher:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        return cls(AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path), **kwargs)

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def params(self) -> dict[str, Any]:
        return {"decoding": "greedy", "max_new_tokens": self.max_new_tokens, "logprobs": self.logprobs,
                "top_logprobs": self.top_logprobs if self.logprobs else None}

    def counters(self) -> dict[str, int]:
        return {"generations": self.generations}

    def _encode(self, messages: list[Message]):
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            # the template adds them
            return self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        return self.tokenizer(plain_prompt(messages), return_tensors="pt")

    def _piece(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=True)

    def complete(self, messages: list[Message]) -> ChatResponse:
        import torch
        from transformers import GenerationConfig

        tok = self.tokenizer
        eos = self.model.generation_config.eos_token_id
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        config = GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad,
                                  eos_token_id=eos, output_logits=self.logprobs, return_dict_in_generate=True)
        enc = self._encode(messages)
        with self._lock, torch.no_grad():
            out = self.model.generate(**enc, generation_config=config)
            self.generations += 1
        prompt_len = enc["input_ids"].shape[1]
        new_ids = out.sequences[0, prompt_len:].tolist()  # (T_new,)
        tokens = None
        if self.logprobs:
            k = min(self.top_logprobs, out.logits[0].shape[-1])
            choices = []
            for step, token_id in enumerate(new_ids):
                logp = torch.log_softmax(out.logits[step][0].float(), dim=-1)  # (V,)
                values, ids = torch.topk(logp, k)
                top = tuple((self._piece(i), v) for i, v in zip(ids.tolist(), values.tolist()))
                choices.append(TokenChoice(self._piece(token_id), float(logp[token_id]), top))
            tokens = tuple(choices)
        return ChatResponse(tok.decode(new_ids, skip_special_tokens=True), tokens, prompt_len, len(new_ids))
