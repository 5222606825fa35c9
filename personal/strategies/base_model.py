"""base: the base model zero-shot, no adapter (the floor every strategy must clear)."""
from __future__ import annotations

from dataclasses import dataclass

from personal.strategies.registry import register_strategy


@dataclass
class BaseConfig:
    """The zero-shot base has no options."""


@register_strategy("base", BaseConfig)
def stages(ctx, scfg: BaseConfig) -> list:
    return []


def predictor(ctx, scfg: BaseConfig):
    from personal.models.generate import generate

    model, tokenizer = ctx.base
    fmt = ctx.prompt_format()
    return lambda examples: generate(model, tokenizer, examples, ctx.cfg.generation, fmt=fmt,
                                     progress=ctx.progress)
