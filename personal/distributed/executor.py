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
import logging
import tempfile
from pathlib import Path
from typing import Callable, Optional

from personal.config import Config
from personal.strategies.registry import Unit

log = logging.getLogger("personal")


def _ray_unified(ctx) -> Callable[[], dict]:
    """Data-parallel TorchTrainer; DeepSpeed ZeRO when `ray.deepspeed` names a config."""
    from personal.distributed.deepspeed import train_unified_deepspeed_on_ray, uses_deepspeed
    from personal.distributed.unified import train_unified_on_ray

    if uses_deepspeed(ctx.cfg):
        return lambda: train_unified_deepspeed_on_ray(ctx)
    return lambda: train_unified_on_ray(ctx)


#: Units with a Ray form: unit name -> (ctx -> work function).
RAY_UNITS: dict[str, Callable] = {"train/unified_lora": _ray_unified}


def ray_stages(ctx, name: str) -> list[list[Unit]]:
    """The strategy's stages, units with a Ray form swapped in (same names and inputs)."""
    from personal.experiment.pipeline import strategy_units

    stages = strategy_units(ctx, name)
    return [[Unit(u.name, u.inputs, RAY_UNITS[u.name](ctx), u.outputs)
             if u.name in RAY_UNITS else u for u in stage] for stage in stages]


def train_strategy_on_ray(ctx, name: str) -> str:
    """`pipeline.train_strategy` on Ray; returns the same hash of all unit inputs."""
    from personal.experiment.pipeline import train_strategy

    return train_strategy(ctx, name, stages_fn=ray_stages)


def train_and_evaluate(ctx, name: str, use_ray: bool) -> dict:
    """Train one strategy (on Ray or locally) and evaluate it on `cfg.eval.split`."""
    from personal.experiment.pipeline import evaluate_strategy, train_strategy

    trained = train_strategy_on_ray(ctx, name) if use_ray else train_strategy(ctx, name)
    return evaluate_strategy(ctx, name, trained)


def run_experiment(cfg: Config, run_path: str | Path, strategies: list[str], *,
                   address: Optional[str] = None, num_cpus: Optional[int] = None,
                   use_ray: bool = True, temp_dir: Optional[str] = None) -> Path:
    """Train, evaluate and report `strategies` in one run; with `use_ray`, on the Ray
    runtime at `address` / `cfg.ray.address` / RAY_ADDRESS, or a local one started here
    (`num_cpus`, temp files in `temp_dir` or a fresh temp folder). Returns the report path."""
    from personal.distributed.runtime import absolute_config, ray_runtime
    from personal.experiment.context import Context
    from personal.experiment.pipeline import execute_plan

    cfg = absolute_config(cfg)
    ctx = Context.create(cfg, run_path)
    if not use_ray:
        return execute_plan(ctx, strategies)
    temp = temp_dir or tempfile.mkdtemp(prefix="personal-ray-")
    with ray_runtime(address or cfg.ray.address, num_cpus, temp):
        if cfg.ray.lanes == 1:
            return execute_plan(ctx, strategies, stages_fn=ray_stages)
        from personal.distributed.lanes import run_lanes, start_lanes, stop_lanes

        actors = start_lanes(ctx, cfg.ray.lanes, ray_stages)  # they start while we plan
        try:
            runner = functools.partial(run_lanes, lanes=cfg.ray.lanes, actors=actors)
            return execute_plan(ctx, strategies, stages_fn=ray_stages, runner=runner,
                                lanes=cfg.ray.lanes)
        finally:
            stop_lanes(actors)  # already done unless the plan failed before it ran
