"""The Ray runtime and what workers need to rebuild a run: absolute configs, worker contexts,
resources and storage folders.

Work is shipped to Ray workers as (resolved config dict, run path), never as closures: every
worker rebuilds the same `Context` from the files, which is deterministic.

    with ray_runtime(cfg, temp_dir=run / "ray"):       # local runtime, or cfg.ray.address
        train_unified_on_ray(cfg, run)
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from personal.config import Config, from_dict, to_dict
from personal.errors import PersonalError
from personal.experiment.context import Context, prepare_data
from personal.experiment.runs import Run

# Ray itself is imported inside the functions that use it: the core imports and tests without it.

log = logging.getLogger("personal")

#: Config fields holding filesystem paths: made absolute before a config leaves the driver,
#: because Ray workers run in their own working directories.
PATH_FIELDS = (("data", "path"), ("data", "splits"), ("data", "background_path"),
               ("model", "cache_dir"))


def absolute_config(cfg: Config, root: Optional[Path] = None) -> Config:
    """A copy of `cfg` whose data/cache paths (and a local `model.base` folder) are absolute."""
    root = Path(root or Path.cwd())
    for section, name in PATH_FIELDS:
        value = getattr(getattr(cfg, section), name)
        if value:
            sub = dataclasses.replace(getattr(cfg, section), **{name: str((root / value).resolve())})
            cfg = dataclasses.replace(cfg, **{section: sub})
    base = cfg.model.base
    if base != "tiny" and (root / base).exists():
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(
            cfg.model, base=str((root / base).resolve())))
    return cfg


def config_payload(cfg: Config) -> dict[str, Any]:
    """The config as a plain dict (what travels to workers)."""
    return to_dict(absolute_config(cfg))


def config_from_payload(payload: dict[str, Any]) -> Config:
    return from_dict(Config, payload, where="worker config")


def worker_context(payload: dict[str, Any], run_path: str | Path):
    """The run's Context rebuilt on a worker from (config dict, run path), without reopening
    the run (no provenance rewrite, no log handler): the driver already did both."""
    cfg = config_from_payload(payload)
    ds, splits, fp = prepare_data(cfg)
    return Context(cfg, Run(Path(run_path)), ds, splits, fp)


def prepare_base(ctx) -> None:
    """Make sure the built-in base is pretrained and cached before workers start, so they
    load it instead of pretraining it concurrently."""
    if ctx.cfg.model.base == "tiny":
        ctx.base  # noqa: B018  (cached_property: pretrains once, then loads from the cache)


def worker_resources(cfg: Config) -> dict[str, float]:
    """Resources of one Ray Train worker from `cfg.ray`."""
    res: dict[str, float] = {"CPU": float(cfg.ray.cpus_per_worker)}
    if cfg.ray.use_gpu:
        res["GPU"] = 1.0
    return res


def worker_threads(cfg: Config, num_workers: int) -> int:
    """Torch threads of one Ray Train worker: its `ray.cpus_per_worker`, or on a local
    runtime (no address) the caller's torch threads shared among the workers, so a laptop's
    one default worker is not held to a single core while the driver waits, and a lane
    (one thread of two cores) does not start a worker that competes with the other lane."""
    local = not (cfg.ray.address or os.environ.get("RAY_ADDRESS"))
    if local:
        return max(cfg.ray.cpus_per_worker, torch.get_num_threads() // max(1, num_workers))
    return cfg.ray.cpus_per_worker


def scaling_config(cfg: Config, num_workers: Optional[int] = None):
    """Ray Train ScalingConfig from `cfg.ray` (workers, GPUs, CPUs per worker)."""
    from ray.train import ScalingConfig

    n = num_workers or cfg.ray.num_workers
    if n < 1:
        raise PersonalError(f"ray.num_workers={n}: need at least one worker")
    return ScalingConfig(num_workers=n, use_gpu=cfg.ray.use_gpu,
                         resources_per_worker=worker_resources(cfg))


def storage_dir(run_path: str | Path) -> str:
    """Where Ray Train/Tune keep checkpoints and results: inside the run (absolute)."""
    path = Path(run_path).resolve() / "ray"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


#: glibc malloc settings for every process of a local Ray runtime (lanes, Ray Train
#: workers): take big blocks from the heap and keep up to 1 GB of it after a free. By
#: default glibc maps each block over 32 MB afresh and unmaps it on free, so every such
#: tensor (a 256-row generation batch has several) page-faults its memory in again: an
#: elementwise op on 38 MB took 32 ms instead of 10, and prompt prefill of 256 rows ran
#: 2x slower (`benchmarks/allocator.py`). Linux/glibc only; elsewhere they mean nothing.
#: A value already in the environment wins.
ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def allocator_env() -> dict[str, str]:
    """`ALLOCATOR_ENV` with any value the environment already sets."""
    return {k: os.environ.get(k, v) for k, v in ALLOCATOR_ENV.items()}


def ray_active() -> bool:
    """True when this process is connected to a Ray runtime (the Ray executor is running)."""
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


@contextlib.contextmanager
def ray_runtime(address: Optional[str] = None, num_cpus: Optional[int] = None,
                temp_dir: Optional[str | Path] = None) -> Iterator[None]:
    """Connect to `address` (or RAY_ADDRESS), or start a local runtime in-process with
    `num_cpus` and its temp files under `temp_dir`; shut down on exit only what was started
    here. An already initialised Ray is reused as it is."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"log_to_driver": True}
    if address:
        ray.init(address=address, include_dashboard=False, **kwargs)
    else:
        # The dashboard serves Ray's state API. Without it, the placement-group cleaner of
        # every TorchTrainer.fit cannot see its controller end: it logged "Failed to query Ray
        # Train Controller actor state" about once a second for the rest of the job (2,065 of
        # the main job's 2,880 console lines). Loopback only, on a free port.
        kwargs.update(include_dashboard=True, dashboard_host="127.0.0.1",
                      dashboard_port=free_port())
        # Set before the runtime starts: glibc reads them when a process starts, and every
        # worker of a local runtime inherits this process's environment.
        os.environ.update(allocator_env())
        if temp_dir is not None:
            # Unix socket paths are limited to ~107 bytes: keep the temp root short.
            Path(temp_dir).mkdir(parents=True, exist_ok=True)
            kwargs["_temp_dir"] = str(Path(temp_dir).resolve())
        ray.init(num_cpus=num_cpus, **kwargs)
    try:
        yield
    finally:
        ray.shutdown()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_rank_zero() -> bool:
    """True outside Ray Train and on its world rank 0."""
    try:
        import ray.train

        return ray.train.get_context().get_world_rank() == 0
    except Exception:  # noqa: BLE001 - not inside a Ray Train worker
        return True
