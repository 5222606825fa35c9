"""prefix_per_user: a per-user soft prompt (virtual tokens before the prompt) on the frozen
base model; the only trained weights are the user's prefix."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from personal.data.safety import child_path
from personal.errors import PersonalError
from personal.strategies.common import (fleet_schedule, fleet_unit, per_user_route,
                                        routed_predictor, user_groups, val_groups)
from personal.strategies.fleet import FleetSpec
from personal.strategies.registry import register_strategy, servable
from personal.strategies.routes import BASE, RouteTable, own_or

FOLDER = "adapters/prefix_per_user"


@dataclass
class PrefixConfig:
    """Per-user soft prompts (schedule from `train` unless set here)."""

    prefix_len: int = 8
    """Virtual tokens per user."""
    epochs: Optional[float] = 2.0
    """Passes over the user's training sessions."""
    min_steps: Optional[int] = 16
    """A floor on each adapter's optimiser steps (16: 2 epochs of a default 30-session user, so the default data is
    unchanged), so a user with few sessions still gets as many updates (more passes over
    their data; validation keeps the best state). 0: `epochs` alone."""
    lr: Optional[float] = 3e-2
    """Peak learning rate: soft prompts need a larger one than LoRA."""
    batch_size: Optional[int] = None
    """Turns per step (None: train.batch_size)."""
    eval_every: Optional[int] = 0
    """Validation checks every N steps (0: once per epoch)."""
    patience: Optional[int] = None
    """Checks without improvement before stopping (None: train.patience)."""
    val_turns: int = 16
    """Validation turns per user for early stopping, evenly spread (0: all of them)."""


def spec(ctx, scfg: PrefixConfig) -> FleetSpec:
    if scfg.prefix_len < 1:
        raise PersonalError(f"strategy.prefix_per_user.prefix_len must be >= 1, "
                            f"got {scfg.prefix_len}")
    return FleetSpec(folder=FOLDER, train_lora=False, prefix_len=scfg.prefix_len,
                     train=fleet_schedule(ctx, scfg))


def stages(ctx, scfg: PrefixConfig) -> list:
    groups, vals = user_groups(ctx, "train"), val_groups(ctx, scfg.val_turns)
    fleet = fleet_unit(ctx, "train/prefix_per_user", groups, vals, spec(ctx, scfg))
    return [[fleet]]


def predictor(ctx, scfg: PrefixConfig):
    """Users without a prefix (cold-start) get the base model: a stack holds one key set,
    and the unified adapter has no prefix table."""
    names = sorted(user_groups(ctx, "train"))
    folders = [child_path(ctx.run.path / FOLDER, n, "persona id") for n in names]
    return routed_predictor(ctx, folders, per_user_route(names, -1))


def routes(ctx, scfg: PrefixConfig) -> RouteTable:
    """Soft prompts and the unified LoRA have different key sets: users without a prefix get
    the base model, as offline."""
    return RouteTable("prefix_per_user", own_or(ctx, FOLDER, BASE), BASE, "prompt")


register_strategy("prefix_per_user", config=PrefixConfig, stages=stages, predictor=predictor,
                  serving=servable(routes), plans=("phase1",), position=40,
                  expected_seconds={"train/prefix_per_user": 320.0},
                  cold_start="the base model without a prefix")
