"""unified_lora: one LoRA adapter trained on every user's training turns (the reference)."""
from __future__ import annotations

import copy
from dataclasses import dataclass

from personal.config import to_dict
from personal.experiment.runs import stable_hash
from personal.strategies.registry import Unit, register_strategy

ADAPTER = "adapters/unified_lora"


@dataclass
class UnifiedConfig:
    """The unified adapter takes its shape from `lora` and its schedule from `train`."""


def training_inputs(ctx) -> str:
    """Everything the unified adapter depends on: data, base, LoRA shape, schedule, format."""
    d = to_dict(ctx.cfg)
    return stable_hash("unified_lora", ctx.fingerprint, ctx.base_key, d["lora"], d["train"],
                       d["data"]["history_messages"], d["model"]["include_character"],
                       d["model"]["max_seq_len"])


@register_strategy("unified_lora", UnifiedConfig)
def stages(ctx, scfg: UnifiedConfig) -> list[list[Unit]]:
    def work() -> dict:
        from personal.models.lora import train_lora

        model, tokenizer = ctx.base
        personas = ctx.training_personas()
        result = train_lora(model, tokenizer, ctx.examples("train", personas),
                            ctx.examples("val", personas), ctx.cfg.lora, ctx.cfg.train,
                            out_dir=ctx.run.path / ADAPTER, progress=ctx.progress,
                            fmt=ctx.prompt_format())
        return {k: v for k, v in result.to_dict().items() if k not in ("train_losses",)}

    return [[Unit("train/unified_lora", training_inputs(ctx), work, [ADAPTER])]]


def load_unified(ctx):
    """The base with the run's unified adapter folded into its weights, for generation (on a
    copy: the shared base stays clean)."""
    from peft import PeftModel

    from personal.models.lora import merged_for_inference

    model, _ = ctx.base
    adapted = PeftModel.from_pretrained(copy.deepcopy(model), str(ctx.run.path / ADAPTER)).eval()
    return merged_for_inference(adapted)


def predictor(ctx, scfg: UnifiedConfig):
    from personal.models.generate import generate

    model, tokenizer = load_unified(ctx), ctx.base[1]
    fmt = ctx.prompt_format()
    return lambda examples: generate(model, tokenizer, examples, ctx.cfg.generation, fmt=fmt,
                                     progress=ctx.progress)
