"""constrained_lora: per user, the frozen unified adapter plus a small residual LoRA held near
it: a penalty on the residual's effective weight change (l2_lambda * ||s B_u A_u||^2), or a
KL term to the unified adapter's next-token distribution on the user's own prompts (`kd`).

The unified adapter is merged into the fleet's copy of the base, so each user's residual
(rank 2-8, B = 0) starts exactly at unified; l2_lambda = 0 is hybrid-like, a large one keeps
unified. Each user's exported folder is unified + residual as one peft adapter (ranks
concatenated, `engine.concat_peft`), loadable without this project; a new user gets unified
in the same shape (residual zero), so one stack answers everybody.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from personal.engine import concat_peft, import_peft
from personal.errors import PersonalError
from personal.strategies import unified
from personal.strategies.common import (fleet_schedule, fleet_unit, own_or_fallback_predictor,
                                        user_groups, val_groups)
from personal.strategies.fleet import FleetSpec
from personal.strategies.registry import register_strategy, servable
from personal.strategies.routes import Route, RouteTable, own_or

FOLDER = "adapters/constrained_lora"
COLD_START = "adapters/constrained_lora_unified"
"""Unified in the users' shape (its rank plus the residual's, residual zero): new users."""


@dataclass
class ConstrainedConfig:
    """A residual adapter per user on the frozen unified one (schedule from `train` unless
    set here)."""

    rank: int = 4
    """Rank of each user's residual (the study: 2, 4 or 8)."""
    l2_lambda: float = 0.1
    """Weight of the penalty on the residual's effective weight change, l2_lambda *
    sum over layers of ||s B A||_F^2 (0: no pull, hybrid-like; large: unified)."""
    kd: bool = False
    """Distillation instead of the weight penalty: a KL term to the unified adapter's
    next-token distribution on the user's own training prompts."""
    kd_weight: float = 1.0
    """Weight of the KL term (with kd)."""
    kd_temperature: float = 2.0
    """Temperature of the KL term (with kd); its value is scaled by T^2."""
    epochs: Optional[float] = 1.0
    """Passes over the user's training sessions."""
    min_steps: Optional[int] = 8
    """A floor on each residual's optimiser steps (8: 1 epoch of a default 30-session user,
    as hybrid_lora), so a user with few sessions still gets as many updates."""
    lr: Optional[float] = 1e-3
    """Peak learning rate of the residuals."""
    batch_size: Optional[int] = None
    """Turns per step (None: train.batch_size)."""
    eval_every: Optional[int] = 0
    """Validation checks every N steps (0: once per epoch); the best state is kept."""
    patience: Optional[int] = None
    """Checks without improvement before stopping (None: train.patience)."""
    val_turns: int = 16
    """Validation turns per user for early stopping, evenly spread (0: all of them)."""

    def __post_init__(self) -> None:  # at config time: a bad option stops before any work
        check_config(self)


def check_config(scfg: ConstrainedConfig) -> None:
    """Refuse options that cannot train, naming the option."""
    where = "strategy.constrained_lora"
    if not isinstance(scfg.rank, int) or scfg.rank < 1:
        raise PersonalError(f"{where}.rank must be >= 1 (the residual's rank), got {scfg.rank}")
    if not scfg.l2_lambda >= 0:
        raise PersonalError(f"{where}.l2_lambda must be >= 0, got {scfg.l2_lambda}")
    if not scfg.kd_weight >= 0:
        raise PersonalError(f"{where}.kd_weight must be >= 0, got {scfg.kd_weight}")
    if not scfg.kd_temperature > 0:
        raise PersonalError(f"{where}.kd_temperature must be > 0, got {scfg.kd_temperature}")


def spec(ctx, scfg: ConstrainedConfig) -> FleetSpec:
    check_config(scfg)
    return FleetSpec(folder=FOLDER, merge_from=unified.ADAPTER, rank=scfg.rank,
                     delta_lambda=0.0 if scfg.kd else scfg.l2_lambda,
                     kd_weight=scfg.kd_weight if scfg.kd else 0.0,
                     kd_temperature=scfg.kd_temperature, train=fleet_schedule(ctx, scfg))


def write_cold_start(ctx, scfg: ConstrainedConfig) -> None:
    """Unified with a zero residual, in the users' folders' shape."""
    weights = import_peft([ctx.run.path / unified.ADAPTER])
    state = weights.adapter(0)
    zero = {key: (torch.zeros(scfg.rank, t.shape[1]) if ".lora_A." in key
                  else torch.zeros(t.shape[0], scfg.rank)) for key, t in state.items()}
    concat_peft([(state, weights.alpha / weights.rank), (zero, 1.0)], ctx.run.path / COLD_START,
                weights.target_modules, ctx.cfg.model.base)


def stages(ctx, scfg: ConstrainedConfig) -> list:
    groups, vals = user_groups(ctx, "train"), val_groups(ctx, scfg.val_turns)
    unit = fleet_unit(ctx, "train/constrained_lora", groups, vals, spec(ctx, scfg),
                      upstream=[unified.training_inputs(ctx)])
    train = unit.fn

    def work() -> dict:
        record = train()
        write_cold_start(ctx, scfg)
        return record

    unit.fn, unit.outputs = work, unit.outputs + [COLD_START]
    return unified.unified_stages(ctx) + [[unit]]


def predictor(ctx, scfg: ConstrainedConfig):
    return own_or_fallback_predictor(ctx, FOLDER, COLD_START)


def routes(ctx, scfg: ConstrainedConfig) -> RouteTable:
    """Each user with a residual gets unified + it; everybody else unified (same shape)."""
    fallback = Route.one(COLD_START)
    return RouteTable("constrained_lora", own_or(ctx, FOLDER, fallback), fallback)


register_strategy("constrained_lora", config=ConstrainedConfig, stages=stages,
                  predictor=predictor, serving=servable(routes), plans=("phase2",),
                  position=90, expected_seconds={"train/constrained_lora": 200.0},
                  cold_start="the unified adapter (a zero residual)")
