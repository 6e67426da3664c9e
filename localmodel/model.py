"""The in-process language model: one instance, shared by every request, on GPU when there is one.

Scorer and answerer adapters (PEFT) are loaded into this same model under names; `adapter(None)` gives the
base weights, so one copy of the weights serves generation and every scorer. A batch of answers may mix
rows written with an answerer and rows written with the base weights (`per_row`). Only the model's worker
thread may call into it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
from transformers.utils import logging as transformers_logging

from localmodel.catalog import resolve
from localmodel.interface import Aborted, Draft, Message, Pooling, Precision
from localmodel.prefix import Prefix, PrefixCache, shared_tokens

if TYPE_CHECKING:
    from localmodel.reduced import Twin

T = TypeVar("T")
log = logging.getLogger(__name__)
BASE_WEIGHTS = "__base__"
"""PEFT's name, in a mixed batch, for the rows that no adapter touches."""


def pick_device() -> tuple[torch.device, torch.dtype]:
    """CUDA in bf16 when present, else CPU in fp32 (bf16 matmuls are slow on most CPUs)."""
    if torch.cuda.is_available():
        return torch.device("cuda"), torch.bfloat16
    if "ROUTER_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["ROUTER_THREADS"]))
    return torch.device("cpu"), torch.float32


class _EarlyExit(Exception):
    def __init__(self, hidden: torch.Tensor) -> None:
        self.hidden = hidden


class LocalModel:
    def __init__(self, ref: str) -> None:
        self.ref = ref
        self.device, self.dtype = pick_device()
        transformers_logging.disable_progress_bar()  # progress bars garble the service's log
        location = resolve(ref)
        self.tokenizer = AutoTokenizer.from_pretrained(location, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(location, dtype=self.dtype)
        self.model.to(device=self.device).eval()
        self._peft: Any = None
        self.stop_ids = self._eos_ids()
        self.decoder = self.model.get_decoder()
        if not hasattr(self.decoder, "layers") or not hasattr(self.decoder, "norm"):
            raise ValueError(f"{ref}: scoring needs a decoder with `layers` and `norm` (Llama-style)")
        self.num_layers = len(self.decoder.layers)
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 0) or 2048)
        self.max_token_chars = max(len(token) for token in self.tokenizer.get_vocab())
        """No token stands for more characters than this: a bound on a prompt's tokens without counting."""
        self.closing = threading.Event()
        """Set once the server shuts down: every running job stops at its next layer."""
        self._abort: threading.Event | None = None
        self.template_head = self._template_head()
        self.prefixes = PrefixCache()
        """The template head's pass per adapter (localmodel/prefix.py), for scoring through the model."""
        self.reuse_prefix = True
        """Whether scoring reuses that pass; off, every prompt runs whole (a benchmark's baseline)."""
        for layer in self.decoder.layers:
            # A check before each layer stops a long prompt within one layer's time, and a generation
            # within one step, without cooperation from transformers' generate.
            layer.register_forward_pre_hook(self._check_abort)

    def _check_abort(self, _module: torch.nn.Module, _inputs: object) -> None:
        if self.closing.is_set() or (self._abort is not None and self._abort.is_set()):
            raise Aborted

    def run_abortable(self, abort: threading.Event, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` (on the model's worker) so that setting `abort` stops it at the next layer."""
        self._abort = abort
        try:
            return fn(*args)
        finally:
            self._abort = None

    def _template_head(self) -> list[int]:
        """The tokens the chat template puts before a lone user message's text (system turn included)."""
        marker = "\x00question\x00"
        try:
            text = self.prompt_text([{"role": "user", "content": marker}])
        except ValueError:  # no chat template
            return []
        head, found, _ = text.partition(marker)
        return list(self.tokenizer(head, add_special_tokens=False).input_ids) if found else []

    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        found = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
        if self.tokenizer.eos_token_id is not None:
            found.add(self.tokenizer.eos_token_id)
        return found

    # Adapters ---------------------------------------------------------------------------------------------

    def load_adapter(self, folder: Path, name: str) -> None:
        from peft import PeftModelForCausalLM

        self.prefixes.clear()  # kept passes read the weights as they were
        if self._peft is None:
            # Always the causal-LM wrapper, whatever task the first adapter was saved for: it is the one that
            # activates aLoRA adapters at their invocation tokens.
            self._peft = PeftModelForCausalLM.from_pretrained(self.model, str(folder), adapter_name=name)
        else:
            if name in self._peft.peft_config:  # a reload replaces the adapter of that name
                self._peft.delete_adapter(name)
            self._peft.load_adapter(str(folder), adapter_name=name)
        self._peft.eval()

    def unload_adapter(self, name: str) -> None:
        """Free an adapter that nothing uses any more (no-op for one not loaded)."""
        if self._peft is None or name not in self._peft.peft_config:
            return
        self.prefixes.clear()
        others = [other for other in self._peft.peft_config if other != name]
        if others and self._peft.active_adapter == name:
            self._peft.set_adapter(others[0])  # else PEFT warns as it picks the next active one itself
        self._peft.delete_adapter(name)

    def adapter_config(self, name: str) -> Any:
        return self._peft.peft_config[name]

    @contextmanager
    def adapter(self, name: str | None) -> Iterator[Any]:
        """The model with one adapter active, or with none (the base weights) for `None`."""
        if self._peft is None:
            assert name is None, f"adapter '{name}' is not loaded"
            yield self.model
        elif name is None:
            with self._peft.disable_adapter():
                yield self._peft
        else:
            self._peft.set_adapter(name)
            yield self._peft

    @contextmanager
    def per_row(self, adapters: Sequence[str | None]) -> Iterator[tuple[Any, dict[str, Any]]]:
        """The model and the extra forward arguments for a batch whose row i runs with `adapters[i]` (None:
        the base weights). PEFT applies each adapter to its own rows only (`adapter_names`); the active
        adapter is set to one of them, so that no other adapter's forward logic (an aLoRA's) runs."""
        named = [name for name in adapters if name is not None]
        if not named:
            with self.adapter(None) as model:
                yield model, {}
            return
        with self.adapter(named[0]) as model:
            yield model, {"adapter_names": [name or BASE_WEIGHTS for name in adapters]}

    # Text -------------------------------------------------------------------------------------------------

    def prompt_text(self, messages: list[Message], *, generation_prompt: bool = True) -> str:
        text = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=generation_prompt, tokenize=False
        )
        return str(text)

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        # The chat template already holds the special tokens; adding them again would double the BOS.
        return self.pad_batch(self.tokenizer(texts, add_special_tokens=False).input_ids)

    def pad_batch(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        """Left-padded batch with position ids that ignore the padding."""
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        return {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}

    def token_count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def prompt_tokens(self, messages: list[Message]) -> int:
        """The tokens the model reads for this conversation, generation prompt included."""
        return self.token_count(self.prompt_text(messages))

    def prompt_ids(self, messages: list[Message]) -> list[int]:
        """The tokens the model reads for this conversation, generation prompt included."""
        # The chat template already holds the special tokens; adding them again would double the BOS.
        return list(self.tokenizer(self.prompt_text(messages), add_special_tokens=False).input_ids)

    # Generation -------------------------------------------------------------------------------------------

    def draft(self, messages: list[Message], max_new_tokens: int) -> Draft:
        return self.draft_batch([messages], max_new_tokens)[0]

    @torch.inference_mode()
    def draft_batch(
        self,
        conversations: list[list[Message]],
        max_new_tokens: int,
        *,
        samples: int = 0,
        temperature: float = 1.0,
        adapter: str | None = None,
    ) -> list[Draft]:
        """Greedy answers, or with `samples` > 0 that many sampled answers per conversation (in order);
        with the base weights, or with the loaded adapter named `adapter` (an answerer)."""
        batch = self.encode([self.prompt_text(m) for m in conversations])
        ids, mask = batch["input_ids"], batch["attention_mask"]
        options: dict[str, Any] = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        with self.adapter(adapter) as model:
            if samples:
                # Sampled answers share their prompt: run it once and copy its cache, not once per sample.
                prefix = model(
                    input_ids=ids[:, :-1],
                    attention_mask=mask[:, :-1],
                    position_ids=batch["position_ids"][:, :-1],
                    use_cache=True,
                )
                prefix.past_key_values.batch_repeat_interleave(samples)
                ids, mask = ids.repeat_interleave(samples, 0), mask.repeat_interleave(samples, 0)
                options = {
                    "do_sample": True,
                    "temperature": temperature,
                    "past_key_values": prefix.past_key_values,
                }
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                output_scores=True,
                return_dict_in_generate=True,
                pad_token_id=self.tokenizer.pad_token_id,
                **options,
            )
        prompt_len = batch["input_ids"].shape[1]
        new_ids = out.sequences[:, prompt_len:]
        # Scores stay per step: stacking them would cost steps x batch x vocabulary floats.
        logprobs = torch.stack(
            [
                torch.log_softmax(step.float(), dim=-1).gather(1, new_ids[:, t : t + 1]).squeeze(1)
                for t, step in enumerate(out.scores)
            ],
            dim=1,
        ).tolist()
        prompt_tokens = batch["attention_mask"].sum(1).tolist()
        per_prompt = max(samples, 1)
        return [
            self.draft_of(row, lps, int(prompt_tokens[i // per_prompt]))
            for i, (row, lps) in enumerate(zip(new_ids.tolist(), logprobs, strict=True))
        ]

    def draft_of(self, ids: list[int], logprobs: list[float], prompt_tokens: int) -> Draft:
        """The answer in generated `ids` (with their log-probabilities): up to the first stop token."""
        end = next((i for i, token in enumerate(ids) if token in self.stop_ids), None)
        # The end-of-turn token, and the padding of rows that finished early, are not part of the answer.
        kept = ids if end is None else ids[:end]
        text = str(self.tokenizer.decode(kept, skip_special_tokens=True)).strip()
        finish: Literal["stop", "length"] = "length" if end is None else "stop"
        return Draft(text, tuple(logprobs[: len(kept)]), prompt_tokens, finish)

    # Hidden states ----------------------------------------------------------------------------------------

    def prompt_states(
        self, texts: list[str], layer: int, pooling: Pooling, adapter: str | None
    ) -> torch.Tensor:
        """See `prompt_state`; scoring never needs gradients."""
        return self.prompt_states_at(texts, [layer], pooling, adapter)[layer]

    @torch.inference_mode()
    def prompt_states_at(
        self,
        texts: list[str],
        layers: list[int],
        pooling: Pooling,
        adapter: str | None,
        twin: Twin | None = None,
    ) -> dict[int, torch.Tensor]:
        """`prompt_states` at each of `layers`, from one forward pass that stops at the deepest; through
        `twin` (built by `scoring_twin` for this adapter) where given, else through the model itself."""
        for layer in layers:
            if not 1 <= layer <= self.num_layers:
                raise ValueError(f"layer must be in 1..{self.num_layers}, not {layer}")
        # A twin has its adapter merged in: no adapter to switch, the twin's layers in its precision.
        with twin.autocast() if twin else self.adapter(adapter):
            decoder = twin.decoder if twin else self.decoder
            # The chat template already holds the special tokens; adding them again would double the BOS.
            rows = self.tokenizer(texts, add_special_tokens=False).input_ids
            shared = shared_tokens(self.template_head, rows) if self.reuse_prefix else 0
            if shared:
                kept = twin.prefixes if twin else self.prefixes
                prefix = kept.get(adapter, max(layers), lambda: self._run_head(decoder, max(layers)))
                return self._states_after(prefix, shared, decoder, rows, layers, pooling)
            batch = self.pad_batch(rows)
            hidden = hidden_at(decoder, batch, layers)
            mask = batch["attention_mask"]
            return {k: pool(self.decoder.norm(h.float()), mask, pooling).float() for k, h in hidden.items()}

    def _run_head(self, decoder: Any, deepest: int) -> Prefix:
        """The template head's pass through `decoder`'s layers 1..deepest (see localmodel/prefix.py)."""
        cache = DynamicCache(config=decoder.config)
        layers = list(range(1, deepest + 1))
        hidden = hidden_at(decoder, self.pad_batch([self.template_head]), layers, cache)
        return Prefix(
            keys=[cache.layers[k].keys for k in range(deepest)],
            values=[cache.layers[k].values for k in range(deepest)],
            normed={k: self.decoder.norm(h.float())[0].float() for k, h in hidden.items()},
        )

    def _states_after(
        self,
        prefix: Prefix,
        shared: int,
        decoder: Any,
        rows: list[list[int]],
        layers: list[int],
        pooling: Pooling,
    ) -> dict[int, torch.Tensor]:
        """`prompt_states_at` for rows whose first `shared` tokens are the template head's: only the rest run,
        attending to the head's kept keys and values."""
        batch = self.pad_batch([row[shared:] for row in rows])
        mask = batch["attention_mask"]
        # The padding sits between the head and each row's own tokens; the mask hides it from every query.
        batch["attention_mask"] = torch.cat([mask.new_ones(len(rows), shared), mask], dim=1)
        batch["position_ids"] = batch["position_ids"] + shared
        hidden = hidden_at(decoder, batch, layers, prefix.cache(shared, len(rows), decoder.config))
        return {
            k: pool(self.decoder.norm(h.float()), mask, pooling, prefix.normed[k][:shared]).float()
            for k, h in hidden.items()
        }

    def scoring_twin(self, adapter: str | None, deepest: int, precision: Precision) -> Twin | None:
        """A reduced-precision copy of layers 1..deepest for a scorer reading them with `adapter`, or None
        where the scorer should read the model itself: `precision` fp32, CUDA, `auto` on a CPU without AMX,
        or an adapter that does not merge (logged)."""
        from localmodel.reduced import Twin, Unsupported, check_adapter, twin_dtype

        dtype = twin_dtype(precision, self.device)
        if dtype is None:
            return None
        try:
            if adapter is not None:
                check_adapter(self.adapter_config(adapter))
            with torch.inference_mode():
                twin = Twin(self.decoder, deepest, adapter, dtype, self._check_abort)
        except Unsupported as exc:
            log.warning("scoring in %s, not %s: %s", self.dtype, dtype, exc)
            return None
        log.info(
            "scoring through a %s copy of layers 1-%d; %.0f MiB of %s pages handed back",
            dtype,
            deepest,
            twin.released / 2**20,
            self.dtype,
        )
        return twin


def prompt_state(decoder: Any, batch: dict[str, torch.Tensor], layer: int, pooling: Pooling) -> torch.Tensor:
    """The final norm applied to the output of decoder layer `layer` (1-based), pooled over each prompt.

    The forward pass stops after that layer and never reaches the output head, so a head reading a middle
    layer costs only the layers below it. With `layer` = the last one and "last" pooling this is exactly
    the model's last hidden state. Training and serving both read states through here, so they cannot drift
    apart.
    """
    return pool(decoder.norm(hidden_after(decoder, batch, layer)), batch["attention_mask"], pooling)


def pool(
    states: torch.Tensor, mask: torch.Tensor, pooling: Pooling, head: torch.Tensor | None = None
) -> torch.Tensor:
    """Rows are left-padded, so the last position is every row's last token; the mean skips the padding.
    `head`: the states of tokens run before these, kept once for every row (localmodel/prefix.py), which
    the mean counts too."""
    last = states[:, -1, :]
    if pooling == "last":
        return last
    weights = mask.unsqueeze(-1).to(states.dtype)
    total, count = (states * weights).sum(1), weights.sum(1)
    if head is not None:
        total, count = total + head.sum(0), count + len(head)
    return torch.cat([last, total / count], dim=-1)


def hidden_after(decoder: Any, batch: dict[str, torch.Tensor], layer: int) -> torch.Tensor:
    """The output of decoder layer `layer` (1-based) at every position; the layers above it never run."""
    return hidden_at(decoder, batch, [layer])[layer]


def hidden_at(
    decoder: Any, batch: dict[str, torch.Tensor], layers: list[int], cache: DynamicCache | None = None
) -> dict[int, torch.Tensor]:
    """The outputs of decoder layers `layers` (1-based) at every position, from one pass that stops at the
    deepest of them: heads reading different layers share the layers below. With `cache`, the batch's
    tokens follow the ones it holds, and their keys and values are added to it."""
    kept: dict[int, torch.Tensor] = {}
    deepest = max(layers)

    def keep(layer: int) -> Callable[[torch.nn.Module, object, object], None]:
        def hook(_module: torch.nn.Module, _inputs: object, output: object) -> None:
            kept[layer] = output[0] if isinstance(output, tuple) else output  # type: ignore[assignment]
            if layer == deepest:
                raise _EarlyExit(kept[layer])

        return hook

    handles = [decoder.layers[k - 1].register_forward_hook(keep(k)) for k in sorted(set(layers))]
    try:
        decoder(**batch, cache=cache, use_cache=cache is not None)
        raise AssertionError("the early-exit hook did not fire")
    except _EarlyExit:
        return kept
    finally:
        for handle in handles:
            handle.remove()
