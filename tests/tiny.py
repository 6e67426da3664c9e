"""Tiny random models and adapters, built with the same libraries and loaded through the same paths as the
real ones, for tests of mechanics that do not need a model that knows anything."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig

from calibrators import PlattScaling
from localmodel import LocalModel
from scorers.card import ScorerCard, TargetCard
from scorers.head import save_head
from scorers.intrinsic import IOConfig, certainty_suffix
from train.intrinsic import IO_YAML

TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]


def build_tiny_model(
    out: Path, tokenizer_from: Path, layers: int = 4, seed: int = 0, *, tied: bool = True
) -> Path:
    """`tied=False`: an output head of its own, so that the next token is not the last one again (a random
    model with tied embeddings repeats its input): answers of varied, often multi-byte, text."""
    torch.manual_seed(seed)
    for name in TOKENIZER_FILES:
        if (tokenizer_from / name).exists():
            shutil.copy(tokenizer_from / name, out / name)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=tied,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(str(out))
    return out


def lora(model_dir: Path, invocation_tokens: list[int] | None = None, seed: int = 1) -> PeftModel:
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    # Non-zero B matrices, so that an adapter that is not applied shows in the scores.
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules="all-linear",
        init_lora_weights=False,
        alora_invocation_tokens=invocation_tokens,
    )
    return get_peft_model(base, config)


def make_head_scorer(
    model_dir: Path, out: Path, layer: int, with_lora: bool = True, targets: list[str] | None = None
) -> Path:
    """Without `targets`, a folder as written before scorers predicted several models: no targets in its
    card, one head, calibrator.json. With them, one head and calibrator per target (the first head is the
    same as the single-target folder's)."""
    out.mkdir(parents=True, exist_ok=True)
    if with_lora:
        lora(model_dir).save_pretrained(str(out))
    hidden = AutoModelForCausalLM.from_pretrained(model_dir).config.hidden_size
    generator = torch.Generator().manual_seed(2)
    weights = torch.randn(len(targets or [""]), hidden, generator=generator)
    cards = []
    for k, target in enumerate(targets or []):
        name = "calibrator.json" if k == 0 else f"calibrator.{k}.json"
        cards.append(TargetCard(model=target, calibrator=name))
    card = ScorerCard(method="head", base_model=str(model_dir), layer=layer, targets=cards)
    save_head(out, weights, torch.full((len(weights),), 0.1), card)
    for k in range(len(weights)):
        name = "calibrator.json" if k == 0 else f"calibrator.{k}.json"
        scores = [0.1, 0.3, 0.6, 0.8, 0.9, 0.2]
        PlattScaling().fit(scores, [0, 0, 1, 1, 1, 0] if k == 0 else [1, 0, 1, 0, 1, 0]).save(out / name)
    return out


def make_intrinsic_scorer(model_dir: Path, out: Path, activated: bool) -> Path:
    """A Granite-style folder: adapter_config.json, adapter weights and io.yaml, nothing else."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "io.yaml").write_text(IO_YAML)
    invocation = None
    if activated:
        model = LocalModel(str(model_dir))
        _, suffix = certainty_suffix(
            model, [{"role": "user", "content": "q"}], "a", IOConfig.load(out / "io.yaml")
        )
        invocation = model.tokenizer(suffix, add_special_tokens=False).input_ids
    lora(model_dir, invocation).save_pretrained(str(out))
    return out
