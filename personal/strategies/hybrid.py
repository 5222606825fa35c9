"""hybrid_lora: one adapter per user initialised from the unified adapter and trained further
on that user's data (what the user shares with everybody, plus what is theirs)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from personal.strategies import unified
from personal.strategies.common import (fleet_schedule, fleet_unit, own_or_fallback_predictor,
                                        user_groups, val_groups)
from personal.strategies.fleet import FleetSpec
from personal.strategies.registry import register_strategy, servable
from personal.strategies.routes import Route, RouteTable, own_or

FOLDER = "adapters/hybrid_lora"


@dataclass
class HybridConfig:
    """Per-user adapters continued from the unified one (schedule from `train` unless set)."""

    epochs: Optional[float] = 1.0
    """Passes over the user's training sessions after the unified adapter."""
    min_steps: Optional[int] = 8
    """A floor on each adapter's optimiser steps (8: 1 epoch of a default 30-session user, so the default data is
    unchanged), so a user with few sessions still gets as many updates (more passes over
    their data; validation keeps the best state). 0: `epochs` alone."""
    lr: Optional[float] = 1e-3
    """Peak learning rate: lower than the unified run's, a fine-tune of a trained adapter."""
    batch_size: Optional[int] = None
    """Turns per step (None: train.batch_size)."""
    eval_every: Optional[int] = 0
    """Validation checks every N steps (0: once per epoch); the best state is kept, so a
    user whose validation loss only rises keeps (nearly) the unified adapter."""
    patience: Optional[int] = None
    """Checks without improvement before stopping (None: train.patience)."""
    val_turns: int = 16
    """Validation turns per user for early stopping, evenly spread (0: all of them)."""
    l2_lambda: float = 0.0
    """Pull toward the unified weights (0: plain continued training)."""


def spec(ctx, scfg: HybridConfig) -> FleetSpec:
    return FleetSpec(folder=FOLDER, init_from=unified.ADAPTER, l2_lambda=scfg.l2_lambda,
                     train=fleet_schedule(ctx, scfg))


def stages(ctx, scfg: HybridConfig) -> list:
    groups, vals = user_groups(ctx, "train"), val_groups(ctx, scfg.val_turns)
    fleet = fleet_unit(ctx, "train/hybrid_lora", groups, vals, spec(ctx, scfg),
                       upstream=[unified.training_inputs(ctx)])
    return unified.unified_stages(ctx) + [[fleet]]


def predictor(ctx, scfg: HybridConfig):
    return own_or_fallback_predictor(ctx, FOLDER, unified.ADAPTER)


def routes(ctx, scfg: HybridConfig) -> RouteTable:
    """Each user with an adapter gets it; everybody else the unified adapter."""
    unified_route = Route.one(unified.ADAPTER)
    return RouteTable("hybrid_lora", own_or(ctx, FOLDER, unified_route), unified_route)


register_strategy("hybrid_lora", config=HybridConfig, stages=stages, predictor=predictor,
                  serving=servable(routes), plans=("phase1", "curve"), position=30,
                  expected_seconds={"train/hybrid_lora": 190.0},
                  cold_start="the unified adapter")
