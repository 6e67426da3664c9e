"""The head scorer's forward pass in bf16 on CPUs that multiply bf16 in hardware, beside the fp32 model.

The same `LocalModel` writes the local target's answers, and those must not change, so its weights stay as
loaded. The scorer gets a twin of decoder layers 1..deepest instead: each linear layer a bf16 copy of the
base weight with the scorer's LoRA merged in, everything else (embeddings, norms, rotary tables) the
model's own modules, shared by reference. The twin runs under CPU autocast, so the residual stream and the
norms stay fp32 and only the matrix products (and attention) run in bf16.

Why bf16 and not int8 (docs/benchmarks.md, "Scorer precision", has the figures): int8 with one activation
scale per tensor (torch's quantize_dynamic; ONNX Runtime's dynamic quantisation uses the same scheme) moves
this model's raw scores by up to 0.16, because a few tokens carry activations hundreds of times the rest;
torchao's int8 with a scale per token moves them by up to 0.03, and without compilation is no faster than
fp32 on CPU. bf16 moves them by 0.001 on average and 0.01 at most, and on CPUs with AMX its matrix products
are 3-8x fp32's.
Without AMX (AVX512-BF16 alone, or older), oneDNN's bf16 products are slower than fp32, so `auto` keeps fp32
there; on CUDA the model is bf16 already and is never copied.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from localmodel.interface import Precision
from localmodel.pages import Pages
from localmodel.prefix import PrefixCache


class Unsupported(ValueError):
    """An adapter the twin cannot merge (DoRA, aLoRA, LoRA with bias, LoRA on embeddings): score in fp32."""


def amx_bf16() -> bool:
    """Whether this CPU has AMX tiles, the only CPUs where oneDNN's bf16 products beat fp32 (measured)."""
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private in torch 2.13: absent means no
    return bool(check and check())


def twin_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The dtype of the scorer's twin, or None to score with the model itself. Never a twin on CUDA."""
    if device.type != "cpu" or precision == "fp32":
        return None
    if precision == "bf16" or amx_bf16():
        return torch.bfloat16
    return None


def check_adapter(config: Any) -> None:
    """Only plain LoRA on linear layers merges into a weight; anything else would be silently dropped."""
    kind = getattr(config, "peft_type", None)
    if str(getattr(kind, "value", kind)) != "LORA":
        raise Unsupported(f"a {kind} adapter")
    if getattr(config, "modules_to_save", None) or getattr(config, "target_parameters", None):
        raise Unsupported("modules_to_save or target_parameters")


class Twin:
    """Decoder layers 1..deepest in `dtype`, the LoRA adapter `adapter` merged (None: the base weights)."""

    def __init__(
        self,
        decoder: Any,
        deepest: int,
        adapter: str | None,
        dtype: torch.dtype,
        before_layer: Callable[[nn.Module, Any], None],
    ) -> None:
        self.dtype = dtype
        self.prefixes = PrefixCache()
        """The template head's pass through these layers (localmodel/prefix.py); they never change."""
        self.released = 0
        """Bytes of fp32 weights handed back once copied (localmodel/pages.py): RSS does not grow by the twin
        until a local answer reads them again."""
        pages, layers = Pages(), nn.ModuleList()
        for k in range(deepest):  # a layer at a time, so that the fp32 pages read never pile up
            read: list[torch.Tensor] = []
            layers.append(self._copy(decoder.layers[k], adapter, read))
            self.released += pages.release(read)
        for layer in layers:
            layer.register_forward_pre_hook(before_layer)  # shutdown and abort stop the twin too
        embed = _base(decoder.embed_tokens)
        if embed is not decoder.embed_tokens and _carries(decoder.embed_tokens, adapter):
            raise Unsupported("LoRA on the embeddings")
        self.decoder = _twin(decoder, layers=layers, embed_tokens=embed)

    def autocast(self) -> torch.autocast:
        """Where `decoder` runs: its products and attention in `dtype`, residual stream and norms in fp32."""
        return torch.autocast("cpu", dtype=self.dtype)

    def _copy(self, module: nn.Module, adapter: str | None, read: list[torch.Tensor]) -> nn.Module:
        """`module` with every linear layer below it in `dtype` (LoRA merged); nothing else copied. The fp32
        weights copied are added to `read`."""
        children = {}
        for name, child in module.named_children():
            weight = _merged(child, adapter)
            if weight is None:
                children[name] = self._copy(child, adapter, read)
                continue
            base = _base(child)
            assert isinstance(base, nn.Linear)
            read.append(base.weight)
            with torch.device("meta"):  # no fp32 allocation: the weight is set just below
                linear = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
            linear.weight = nn.Parameter(weight.to(self.dtype), requires_grad=False)
            if base.bias is not None:
                linear.bias = nn.Parameter(base.bias.detach().to(self.dtype), requires_grad=False)
            children[name] = linear
        return _twin(module, **children)


def _merged(module: nn.Module, adapter: str | None) -> torch.Tensor | None:
    """A linear layer's weight with `adapter`'s LoRA delta added; None for any other module."""
    from peft.tuners.lora import Linear as LoraLinear

    base = _base(module)
    if not isinstance(base, nn.Linear):
        if _carries(module, adapter):
            raise Unsupported(f"LoRA on a {type(base).__name__}")
        return None
    if not _carries(module, adapter):
        return base.weight.detach()  # another adapter's layer (an answerer's): the base weights
    if not isinstance(module, LoraLinear) or any(
        adapter in getattr(module, table, {}) and bool(getattr(module, table)[adapter])
        for table in ("use_dora", "lora_bias", "lora_variant")
    ):
        raise Unsupported(f"{type(module).__name__} with DoRA, a bias or a LoRA variant")
    assert adapter is not None
    return module.get_delta_weight(adapter).detach().add_(base.weight)  # one fp32 temporary, not two


def _carries(module: nn.Module, adapter: str | None) -> bool:
    return adapter is not None and adapter in getattr(module, "lora_A", {})


def _base(module: nn.Module) -> nn.Module:
    """The module a PEFT layer wraps (the module itself when PEFT did not wrap it)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return module.get_base_layer() if isinstance(module, BaseTunerLayer) else module


def _twin(module: nn.Module, **children: nn.Module) -> nn.Module:
    """A new module object of `module`'s class and attributes (config, layer index), sharing its parameters
    and buffers by reference, with `children` replaced, and with no hooks: the original's (the abort check,
    an early exit's) belong to the original."""
    twin = copy.copy(module)
    state = twin.__dict__
    state["_parameters"] = dict(module._parameters)
    state["_buffers"] = dict(module._buffers)
    state["_modules"] = {**module._modules, **children}
    for key, value in vars(module).items():
        if "hooks" in key and isinstance(value, dict):
            state[key] = type(value)()
    return twin
