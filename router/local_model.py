"""The in-process language model: one instance, shared by every request, on GPU when there is one."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as transformers_logging

from router.models import resolve

Message = dict[str, Any]


def pick_device() -> tuple[torch.device, torch.dtype]:
    """CUDA in bf16 when present, else CPU in fp32 (bf16 matmuls are slow on most CPUs)."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    if "ROUTER_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["ROUTER_THREADS"]))
    return torch.device("cpu"), torch.float32


@dataclass(frozen=True)
class Draft:
    """A greedy answer with the log-probability of each of its tokens."""

    text: str
    token_logprobs: tuple[float, ...]
    prompt_tokens: int
    finish_reason: Literal["stop", "length"]

    @property
    def completion_tokens(self) -> int:
        return len(self.token_logprobs)

    @property
    def nprob(self) -> float:
        """Length-normalised sequence probability: the geometric mean of the token probabilities."""
        if not self.token_logprobs:
            return 0.0
        return math.exp(sum(self.token_logprobs) / len(self.token_logprobs))


class LocalModel:
    def __init__(self, ref: str) -> None:
        self.ref = ref
        self.device, self.dtype = pick_device()
        transformers_logging.disable_progress_bar()  # progress bars garble the service's log
        location = resolve(ref)
        self.tokenizer = AutoTokenizer.from_pretrained(location)
        self.model = AutoModelForCausalLM.from_pretrained(location, dtype=self.dtype)
        self.model.to(device=self.device).eval()
        self._stop_ids = self._eos_ids()

    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        found = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
        if self.tokenizer.eos_token_id is not None:
            found.add(self.tokenizer.eos_token_id)
        return found

    def prompt_ids(self, messages: list[Message]) -> torch.Tensor:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # The template already holds the special tokens; adding them again would double the BOS.
        encoded = self.tokenizer(str(text), return_tensors="pt", add_special_tokens=False)
        return encoded.input_ids.to(self.device)

    @torch.inference_mode()
    def draft(self, messages: list[Message], max_new_tokens: int) -> Draft:
        """Greedy decoding: the answer the confidence is about, and the one the local target returns."""
        input_ids = self.prompt_ids(messages)
        out = self.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=next(iter(self._stop_ids), 0),
        )
        new_ids = out.sequences[0, input_ids.shape[1] :].tolist()
        logprobs = [
            torch.log_softmax(step[0].float(), dim=-1)[token].item()
            for step, token in zip(out.scores, new_ids, strict=True)
        ]
        stopped = bool(new_ids) and new_ids[-1] in self._stop_ids
        if stopped:  # the end-of-turn token is not part of the answer
            new_ids, logprobs = new_ids[:-1], logprobs[:-1]
        return Draft(
            text=str(self.tokenizer.decode(new_ids, skip_special_tokens=True)).strip(),
            token_logprobs=tuple(logprobs),
            prompt_tokens=input_ids.shape[1],
            finish_reason="stop" if stopped else "length",
        )
