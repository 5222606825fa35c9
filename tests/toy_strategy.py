"""A strategy from outside the package: what a user's own module looks like.

`toy_lora` trains one LoRA adapter on every training user's turns at its own learning rate
into its own folder, answers every user with it, and is served with the same route. It uses
only the public API (`register_strategy`, the shared helpers) and no file under personal/
knows its name: the registry, the plans (`toy`), the ETA table, the shared test matrix and the
Serve app's route table pick it up from this module alone.
"""
from __future__ import annotations

from dataclasses import dataclass

from personal.config import TrainConfig
from personal.models.lora import train_lora
from personal.strategies.common import routed_predictor, schedule
from personal.strategies.keys import training_inputs
from personal.strategies.registry import Unit, not_servable, register_strategy, servable
from personal.strategies.routes import Route, fixed_routes

NAME = "toy_lora"
FOLDER = "adapters/toy_lora"


@dataclass
class ToyConfig:
    """The toy adapter's own schedule."""

    lr: float = 5e-2
    """Peak learning rate of the toy adapter."""


def toy_schedule(ctx, scfg: ToyConfig) -> TrainConfig:
    return schedule(ctx, lr=scfg.lr)


def stages(ctx, scfg: ToyConfig) -> list[list[Unit]]:
    def work() -> dict:
        model, tokenizer = ctx.base
        personas = ctx.training_personas()
        result = train_lora(model, tokenizer, ctx.examples("train", personas),
                            ctx.examples("val", personas), ctx.cfg.lora,
                            toy_schedule(ctx, scfg), out_dir=ctx.run.path / FOLDER,
                            progress=False, fmt=ctx.prompt_format())
        return {"steps": result.steps}

    inputs = training_inputs(ctx, NAME, scfg.lr)
    return [[Unit(f"train/{NAME}", inputs, work, [FOLDER])]]


def predictor(ctx, scfg: ToyConfig):
    return routed_predictor(ctx, [ctx.run.path / FOLDER], lambda e: 0)


register_strategy(NAME, config=ToyConfig, stages=stages, predictor=predictor,
                  serving=servable(fixed_routes(NAME, Route.one(FOLDER))), plans=("toy",),
                  expected_seconds={f"train/{NAME}": 5.0})


@dataclass
class UnservedConfig:
    """`toy_unserved` has no options."""


def zero_shot(ctx, scfg: UnservedConfig):
    from personal.engine.generate import generate

    model, tokenizer = ctx.base
    fmt = ctx.prompt_format()
    return lambda examples: generate(model, tokenizer, examples, ctx.cfg.generation, fmt=fmt)


#: Why the Serve app refuses `toy_unserved` (every built-in strategy is servable).
UNSERVED_REASON = "an example of a strategy the Serve app refuses, with its reason"

# A strategy that cannot be served: `personal serve` refuses it with the registered reason.
register_strategy("toy_unserved", config=UnservedConfig, stages=lambda ctx, scfg: [],
                  predictor=zero_shot, serving=not_servable(UNSERVED_REASON))
