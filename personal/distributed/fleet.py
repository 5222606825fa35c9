"""Fleets on Ray Train: a fleet's adapters sharded across workers (worker r of W trains
names r, r+W, ... with `strategies.fleet.train_shard`); no gradient sync between adapters.

    records = train_fleet(ctx, groups, vals, spec=spec)      # Ray Train when it buys parallelism

A restarted worker (FailureConfig) skips the adapters already recorded with the same inputs.
The run directory must be visible to every worker (one machine, or a shared filesystem on a
cluster, as Ray Train's storage). The Ray executor hands `ray_backend` to its contexts, so
the fleet units of every strategy come here without the strategies importing Ray.
"""
from __future__ import annotations

import os
import time
from typing import Optional, Sequence

import torch

from personal.data.schema import Example
from personal.distributed import runtime
from personal.distributed.runtime import (config_payload, prepare_base, scaling_config,
                                          storage_dir, worker_context, worker_threads)
from personal.errors import PersonalError
from personal.hashing import stable_hash
from personal.strategies.fleet import (FleetSpec, check_fleet, fleet_records,  # noqa: F401
                                       per_user_groups, spec_dict, spec_from_dict, train_shard)


def fleet_worker(config: dict) -> None:
    """Ray Train per-worker function: rebuild the Context, train this worker's shard."""
    import ray.train  # Ray only where it runs: the module imports without it

    torch.set_num_threads(int(config.get("threads", 1)))
    ctx = worker_context(config["cfg"], config["run"])
    tc = ray.train.get_context()
    groups = _load_groups(ctx, config["groups"])
    val_groups = _load_groups(ctx, config["val_groups"])
    done = train_shard(ctx, groups, val_groups, tc.get_world_rank(), tc.get_world_size(),
                       config["adapters_per_call"], config.get("fault"),
                       spec_from_dict(config["spec"]))
    ray.train.report({"trained_now": len(done)})


def _example_keys(groups: dict[str, Sequence[Example]]) -> dict[str, list]:
    """Groups as (split, persona, session, turn) keys: small to ship, rebuilt on workers."""
    return {n: [[e.persona_id, e.session_id, e.turn_index] for e in exs]
            for n, exs in groups.items()}


def _load_groups(ctx, keyed: dict[str, dict]) -> dict[str, list[Example]]:
    out = {}
    for name, spec in keyed.items():
        index = {(e.persona_id, e.session_id, e.turn_index): e
                 for e in ctx.examples(spec["split"], sorted({k[0] for k in spec["keys"]}))}
        try:
            out[name] = [index[tuple(k)] for k in spec["keys"]]
        except KeyError as err:
            raise PersonalError(f"adapter {name}: example {err} is not in split "
                                f"{spec['split']}") from None
    return out


def train_fleet(ctx, groups: dict[str, Sequence[Example]],
                val_groups: Optional[dict[str, Sequence[Example]]] = None, *,
                spec: FleetSpec = FleetSpec(), **options) -> dict[str, dict]:
    """`strategies.fleet.train_fleet` with Ray Train's options (`ray_backend`'s): one adapter
    per group into `run/<spec.folder>/<name>/`; returns every adapter's record (finished
    ones are skipped)."""
    check_fleet(groups)
    ray_backend(ctx, groups, val_groups or {}, spec, **options)
    return fleet_records(ctx, groups, spec)


def ray_backend(ctx, groups: dict[str, Sequence[Example]],
                val_groups: dict[str, Sequence[Example]], spec: FleetSpec, *,
                split: str = "train", val_split: str = "val", use_ray: Optional[bool] = None,
                num_workers: Optional[int] = None, adapters_per_call: int = 0,
                max_failures: int = 2, fault: Optional[dict] = None) -> None:
    """The fleet backend the Ray executor gives its contexts (`Context.fleet_backend`): the
    fleet on Ray Train when `ray_buys_parallelism` (use_ray None), else every shard in this
    process. Groups hold examples of the run's `split` (their validation examples:
    `val_split`)."""
    workers = num_workers or ctx.cfg.ray.num_workers
    if use_ray is None:
        use_ray = ray_buys_parallelism(ctx.cfg, workers)
    if not use_ray:
        train_shard(ctx, groups, val_groups, adapters_per_call=adapters_per_call, spec=spec)
    else:
        _fleet_on_ray(ctx, groups, val_groups, split, val_split, workers, adapters_per_call,
                      max_failures, fault, spec)


def ray_buys_parallelism(cfg, workers: int) -> bool:
    """Whether a fleet should go to Ray Train: a Ray runtime is up in this process and the
    fleet gets parallelism from it (several workers, or a cluster). One worker on a local
    runtime trains in one process just as the driver would, after ~30 s of Ray Train
    start-up (a trivial TorchTrainer.fit is ~20 s on 2 cores, plus the worker's imports):
    then the driver trains it itself, with the same result."""
    on_cluster = bool(cfg.ray.address or os.environ.get("RAY_ADDRESS"))
    # looked up on the module, where tests stand in for it
    return runtime.ray_active() and (workers > 1 or on_cluster)


def _fleet_on_ray(ctx, groups, val_groups, split, val_split, workers, adapters_per_call,
                  max_failures, fault, spec) -> None:
    from ray.train import FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    prepare_base(ctx)
    run = ctx.run.path.resolve()
    keyed = {n: {"split": split, "keys": k} for n, k in _example_keys(groups).items()}
    vkeyed = {n: {"split": val_split, "keys": k} for n, k in _example_keys(val_groups).items()}
    workers = max(1, min(workers, len(groups)))
    trainer = TorchTrainer(
        fleet_worker,
        train_loop_config={"cfg": config_payload(ctx.cfg), "run": str(run), "groups": keyed,
                           "val_groups": vkeyed, "adapters_per_call": adapters_per_call,
                           "fault": fault, "threads": worker_threads(ctx.cfg, workers),
                           "spec": spec_dict(spec)},
        scaling_config=scaling_config(ctx.cfg, workers),
        run_config=RunConfig(name=f"fleet-{stable_hash(sorted(groups), time.time())}",
                             storage_path=storage_dir(run),
                             failure_config=FailureConfig(max_failures=max_failures)))
    result = trainer.fit()
    if result.error is not None:
        raise PersonalError(f"adapter fleet on Ray failed: {result.error}")
    missing = [n for n in groups if not (run / spec.folder / n / "adapter_config.json").is_file()]
    if missing:
        raise PersonalError(f"adapter fleet on Ray finished without adapters {missing}")
