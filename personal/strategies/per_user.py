"""per_user_lora: one LoRA adapter per user from the base model, on that user's ~30 training
dialogues only (the naive personalization the study finds overfitting)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from personal.data.safety import child_path
from personal.errors import PersonalError
from personal.strategies import unified
from personal.strategies.common import (fleet_schedule, fleet_unit, per_user_route,
                                        routed_predictor, user_groups, val_groups)
from personal.strategies.fleet import FleetSpec
from personal.strategies.registry import register_strategy, servable
from personal.strategies.routes import BASE, Route, RouteTable, own_or, unknown_fallback

FOLDER = "adapters/per_user_lora"


@dataclass
class PerUserConfig:
    """Per-user adapters (shape from `lora`; schedule from `train` unless set here)."""

    epochs: Optional[float] = 2.0
    """Passes over the user's ~30 training sessions (8 steps each with batches of 4): the
    cost of the whole fleet is about that many passes over all users' data."""
    min_steps: Optional[int] = 16
    """A floor on each adapter's optimiser steps (16: 2 epochs of a default 30-session user, so the default data is
    unchanged), so a user with few sessions still gets as many updates (more passes over
    their data; validation keeps the best state). 0: `epochs` alone."""
    lr: Optional[float] = 1e-2
    """Peak learning rate: 5x the unified run's, which takes ~100x more steps."""
    batch_size: Optional[int] = None
    """Turns per step (None: train.batch_size)."""
    eval_every: Optional[int] = 0
    """Validation checks on the user's validation turns every N steps (0: once per epoch)."""
    patience: Optional[int] = None
    """Checks without improvement before stopping (None: train.patience; 0: never)."""
    val_turns: int = 16
    """Validation turns per user for early stopping, evenly spread (0: all of them)."""
    fallback: str = "unified"
    """Users without an adapter (cold-start): `unified` (trains it too) or `base`."""


def fallback_stage(ctx, fallback: str) -> list[list]:
    """The unified adapter's stage when users without an adapter fall back to it."""
    if fallback not in ("unified", "base"):
        raise PersonalError(f"strategy fallback must be 'unified' or 'base', got {fallback!r}")
    return unified.unified_stages(ctx) if fallback == "unified" else []


def fallback_folders(ctx, fallback: str) -> list:
    return [ctx.run.path / unified.ADAPTER] if fallback == "unified" else []


def spec(ctx, scfg: PerUserConfig) -> FleetSpec:
    return FleetSpec(folder=FOLDER, train=fleet_schedule(ctx, scfg))


def stages(ctx, scfg: PerUserConfig) -> list:
    groups, vals = user_groups(ctx, "train"), val_groups(ctx, scfg.val_turns)
    fleet = fleet_unit(ctx, "train/per_user_lora", groups, vals, spec(ctx, scfg))
    return fallback_stage(ctx, scfg.fallback) + [[fleet]]


def predictor(ctx, scfg: PerUserConfig):
    names = sorted(user_groups(ctx, "train"))
    folders = [child_path(ctx.run.path / FOLDER, n, "persona id") for n in names] + \
        fallback_folders(ctx, scfg.fallback)
    fallback = len(names) if scfg.fallback == "unified" else -1
    return routed_predictor(ctx, folders, per_user_route(names, fallback))


def routes(ctx, scfg: PerUserConfig) -> RouteTable:
    """Each user with an adapter gets it; other known users the fallback, unknown ids the
    unified adapter when the run has it, else the base."""
    other = Route.one(unified.ADAPTER) if scfg.fallback == "unified" else BASE
    return RouteTable("per_user_lora", own_or(ctx, FOLDER, other), unknown_fallback(ctx))


register_strategy("per_user_lora", config=PerUserConfig, stages=stages, predictor=predictor,
                  serving=servable(routes), plans=("phase1", "curve"), position=20,
                  expected_seconds={"train/per_user_lora": 345.0},
                  cold_start="the `fallback` (the unified adapter by default)")
