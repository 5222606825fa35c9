"""The strategy registry: one module per strategy, registered by name.

A strategy declares the units of work it needs, in stages (units within a stage are
independent, so an executor can fan them out), and builds a predictor that answers test
turns. Adding a strategy is one module with a config dataclass and a `@register_strategy`.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional

from personal.config import from_dict
from personal.errors import PersonalError


@dataclass
class Unit:
    """One independent piece of work: `fn()` returns a JSON-able result record.

    `inputs` is the hash of everything the result depends on (config, data, upstream
    units); `outputs` are run-relative paths the unit writes (checked on resume).
    `needs_base` False marks a unit that never touches the base model (MiniLM work on the
    data alone), so a concurrent executor may run it while the base is still pretraining."""

    name: str
    inputs: str
    fn: Callable[[], dict]
    outputs: list[str]
    needs_base: bool = True


@dataclass
class StrategySpec:
    """What the registry knows about a strategy."""

    name: str
    config_cls: type
    stages: Callable[[Any, Any], list[list[Unit]]]
    """(ctx, strategy_cfg) -> stages of units, run in order."""
    module: str
    """The strategy's module; its `predictor(ctx, strategy_cfg)` returns
    predict(examples) -> texts, used after the stages ran."""
    description: str = ""

    @property
    def predictor(self) -> Callable[[Any, Any], Callable[[list], list[str]]]:
        return getattr(sys.modules[self.module], "predictor")


STRATEGIES: dict[str, StrategySpec] = {}


def register_strategy(name: str, config_cls: type, description: str = ""):
    """Decorator on a module-level `stages` function; the module defines `predictor` too."""

    def wrap(stages_fn):
        # The module is still executing here: `predictor` is looked up when first used.
        doc = (sys.modules[stages_fn.__module__].__doc__ or "").strip().split("\n")[0]
        STRATEGIES[name] = StrategySpec(name, config_cls, stages_fn, stages_fn.__module__,
                                        description or doc)
        return stages_fn

    return wrap


def get_strategy(name: str) -> StrategySpec:
    """The registered strategy `name`, or a PersonalError listing the known ones."""
    _import_builtin()
    if name not in STRATEGIES:
        raise PersonalError(f"unknown strategy '{name}' (known: {', '.join(sorted(STRATEGIES))})")
    return STRATEGIES[name]


def strategy_config(spec: StrategySpec, options: Optional[dict]) -> Any:
    """The strategy's config dataclass from the free-form `strategy` section of the config."""
    return from_dict(spec.config_cls, options or {}, where=f"strategy {spec.name}",
                     prefix="strategy.")


def strategy_config_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _import_builtin() -> None:
    """Import the built-in strategy modules so they register themselves."""
    from personal.strategies import (base_model, cluster, hybrid, per_user,  # noqa: F401
                                     prefix, retrieval, selective, unified)
