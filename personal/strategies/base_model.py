"""base: the base model zero-shot, no adapter (the floor every strategy must clear)."""
from __future__ import annotations

from dataclasses import dataclass

from personal.engine.generate import generate
from personal.strategies.registry import register_strategy, servable
from personal.strategies.routes import BASE, fixed_routes


@dataclass
class BaseConfig:
    """The zero-shot base has no options."""


def stages(ctx, scfg: BaseConfig) -> list:
    return []


def predictor(ctx, scfg: BaseConfig):
    model, tokenizer = ctx.base
    fmt = ctx.prompt_format()
    return lambda examples: generate(model, tokenizer, examples, ctx.cfg.generation, fmt=fmt,
                                     progress=ctx.progress)


register_strategy("base", config=BaseConfig, stages=stages, predictor=predictor,
                  serving=servable(fixed_routes("base", BASE, "none")),
                  plans=("phase1", "phase2", "phase3", "baseline", "curve"), position=0,
                  expected_seconds={"eval/base": 70.0},
                  cold_start="the base model (it keeps no user state)")
