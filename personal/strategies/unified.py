"""unified_lora: one LoRA adapter trained on every user's training turns (the reference)."""
from __future__ import annotations

import copy
from dataclasses import dataclass

from peft import PeftModel

from personal.engine.generate import generate
from personal.models.lora import merged_for_inference, train_lora
from personal.strategies.keys import training_inputs as unit_inputs
from personal.strategies.registry import Unit, register_strategy, servable
from personal.strategies.routes import UNIFIED, Route, fixed_routes

ADAPTER = UNIFIED
UNIT = "train/unified_lora"


@dataclass
class UnifiedConfig:
    """The unified adapter takes its shape from `lora` and its schedule from `train`."""


def training_inputs(ctx) -> str:
    """Everything the unified adapter depends on: data, base, LoRA shape, schedule, format."""
    return unit_inputs(ctx, "unified_lora")


def stages(ctx, scfg: UnifiedConfig) -> list[list[Unit]]:
    def work() -> dict:
        model, tokenizer = ctx.base
        personas = ctx.training_personas()
        result = train_lora(model, tokenizer, ctx.examples("train", personas),
                            ctx.examples("val", personas), ctx.cfg.lora, ctx.cfg.train,
                            out_dir=ctx.run.path / ADAPTER, progress=ctx.progress,
                            fmt=ctx.prompt_format())
        return {k: v for k, v in result.to_dict().items() if k not in ("train_losses",)}

    return [[Unit(UNIT, training_inputs(ctx), work, [ADAPTER])]]


def unified_stages(ctx) -> list[list[Unit]]:
    """The unified adapter's stage, for strategies that start from it or fall back to it."""
    return stages(ctx, UnifiedConfig())


def load_unified(ctx):
    """The base with the run's unified adapter folded into its weights, for generation (on a
    copy: the shared base stays clean)."""
    model, _ = ctx.base
    adapted = PeftModel.from_pretrained(copy.deepcopy(model), str(ctx.run.path / ADAPTER)).eval()
    return merged_for_inference(adapted)


def predictor(ctx, scfg: UnifiedConfig):
    model, tokenizer = load_unified(ctx), ctx.base[1]
    fmt = ctx.prompt_format()
    return lambda examples: generate(model, tokenizer, examples, ctx.cfg.generation, fmt=fmt,
                                     progress=ctx.progress)


register_strategy(
    "unified_lora", config=UnifiedConfig, stages=stages, predictor=predictor,
    serving=servable(fixed_routes("unified_lora", Route.one(ADAPTER))),
    plans=("phase1", "phase2", "phase3", "baseline", "curve"), position=10,
    expected_seconds={UNIT: 255.0, "eval/unified_lora": 165.0},
    # Data-parallel Ray Train (DeepSpeed ZeRO when `ray.deepspeed` names a config).
    ray_forms={UNIT: "personal.distributed.unified:ray_form"},
    cold_start="the unified adapter (it keeps no user state)")
