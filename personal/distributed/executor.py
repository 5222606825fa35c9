"""The Ray executor: the pipeline's stages and units, with the units that have a Ray form run
on Ray (the unified adapter through Ray Train's TorchTrainer). Every other unit runs as in the
local executor: in `ray.lanes` lane actors at once, each unit as soon as the units it needs
have finished (`personal.distributed.lanes`), or in the driver one after another with
`ray.lanes=1`. Unit names and input hashes are the local ones, so a run directory resumes
the same whichever executor made it.

    report = run_experiment(cfg, "runs/x", ["base", "unified_lora"])            # local Ray
    report = run_experiment(cfg, "runs/x", [...], address="ray://head:10001")    # a cluster
"""
from __future__ import annotations

import functools
import importlib
import logging
import tempfile
from pathlib import Path
from typing import Callable, Optional

from personal.config import Config
from personal.distributed.fleet import ray_backend
from personal.distributed.lanes import run_lanes, start_lanes, stop_lanes
from personal.distributed.runtime import absolute_config, ray_runtime
from personal.errors import PersonalError
from personal.experiment.context import Context
from personal.experiment.pipeline import evaluate_strategy, execute_plan, train_strategy
from personal.experiment.units import strategy_units
from personal.strategies.registry import Unit, all_strategies

log = logging.getLogger("personal")


def ray_form(target: str) -> Callable:
    """The function named by a strategy's `ray_forms` entry ("module:function")."""
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise PersonalError(f"Ray form {target!r} cannot be loaded: {err}") from None


def ray_units() -> dict[str, Callable]:
    """Unit name -> (ctx -> work function), from every registered strategy's `ray_forms`."""
    return {unit: ray_form(target) for spec in all_strategies()
            for unit, target in spec.ray_forms.items()}


def ray_stages(ctx, name: str) -> list[list[Unit]]:
    """The strategy's stages, units with a Ray form swapped in (same names and inputs); the
    context's fleets go to Ray Train too (`Context.fleet_backend`)."""
    ctx.fleet_backend = ray_backend
    forms = ray_units()
    stages = strategy_units(ctx, name)
    return [[Unit(u.name, u.inputs, forms[u.name](ctx), u.outputs, u.needs_base)
             if u.name in forms else u for u in stage] for stage in stages]


def train_strategy_on_ray(ctx, name: str) -> str:
    """`pipeline.train_strategy` on Ray; returns the same hash of all unit inputs."""
    return train_strategy(ctx, name, stages_fn=ray_stages)


def train_and_evaluate(ctx, name: str, use_ray: bool) -> dict:
    """Train one strategy (on Ray or locally) and evaluate it on `cfg.eval.split`."""
    trained = train_strategy_on_ray(ctx, name) if use_ray else train_strategy(ctx, name)
    return evaluate_strategy(ctx, name, trained)


def run_experiment(cfg: Config, run_path: str | Path, strategies: list[str], *,
                   address: Optional[str] = None, num_cpus: Optional[int] = None,
                   use_ray: bool = True, temp_dir: Optional[str] = None) -> Path:
    """Train, evaluate and report `strategies` in one run; with `use_ray`, on the Ray
    runtime at `address` / `cfg.ray.address` / RAY_ADDRESS, or a local one started here
    (`num_cpus`, temp files in `temp_dir` or a fresh temp folder). Returns the report path."""
    cfg = absolute_config(cfg)
    ctx = Context.create(cfg, run_path)
    if not use_ray:
        return execute_plan(ctx, strategies)
    temp = temp_dir or tempfile.mkdtemp(prefix="personal-ray-")
    with ray_runtime(address or cfg.ray.address, num_cpus, temp):
        if cfg.ray.lanes == 1:
            return execute_plan(ctx, strategies, stages_fn=ray_stages)
        actors = start_lanes(ctx, cfg.ray.lanes, ray_stages)  # they start while we plan
        try:
            runner = functools.partial(run_lanes, lanes=cfg.ray.lanes, actors=actors)
            return execute_plan(ctx, strategies, stages_fn=ray_stages, runner=runner,
                                lanes=cfg.ray.lanes)
        finally:
            stop_lanes(actors)  # already done unless the plan failed before it ran
