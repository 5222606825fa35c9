"""The unified adapter with DeepSpeed ZeRO on GPUs (Ray Train workers, one GPU each).

Select it with a ZeRO config file: `ray.deepspeed: configs/deepspeed_zero2.json` (with
`ray.use_gpu: true`), see configs/ray_deepspeed.yaml. The peft model's trainable LoRA weights
and their AdamW states are partitioned across workers (ZeRO stage 1 or 2; the frozen base stays
whole on every GPU, so stage 3 brings nothing for LoRA and is refused). Batches, schedule and
seed are those of the default path, because it is the default path's loop
(`models.training.train_loop`) with a DeepSpeed stepper (`deepspeed_stepper`): schedule,
validation, early stopping and best weights; worker r takes rows r, r+W, ... of every batch.
On CPU, or without the `deepspeed` package, it stops with a message saying so; the default
data-parallel path (personal.distributed.unified) needs neither.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from personal.distributed.runtime import (config_payload, scaling_config, storage_dir,
                                          worker_context)
from personal.distributed.unified import ADAPTER, train_unified
from personal.errors import PersonalError
from personal.models.core import EngineStepper, default_collective



def read_zero_config(path: str | Path, train_cfg: Any, world: int) -> dict[str, Any]:
    """The ZeRO JSON with the run's batch size, clipping and lr filled in (so the YAML stays
    the one source of the schedule); stage 3 is refused."""
    path = Path(path)
    if not path.is_file():
        raise PersonalError(f"ray.deepspeed={path}: DeepSpeed config file not found")
    try:
        ds = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise PersonalError(f"{path}: not valid JSON: line {err.lineno}: {err.msg}") from None
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2):
        raise PersonalError(f"{path}: zero_optimization.stage={stage}; LoRA keeps the frozen "
                            f"base on every GPU, use stage 1 or 2")
    ds["train_batch_size"] = train_cfg.batch_size
    ds["train_micro_batch_size_per_gpu"] = max(1, math.ceil(train_cfg.batch_size / world))
    ds["gradient_accumulation_steps"] = 1
    ds["gradient_clipping"] = train_cfg.max_grad_norm
    return ds


def check_deepspeed(cfg: Any) -> str:
    """The ZeRO config path when the DeepSpeed path can run here; else a PersonalError that
    says why (no GPU asked for, no CUDA, no deepspeed package)."""
    path = getattr(cfg.ray, "deepspeed", None)
    if not path:
        raise PersonalError("ray.deepspeed is not set: the DeepSpeed path needs a ZeRO config")
    if not cfg.ray.use_gpu:
        raise PersonalError("ray.deepspeed needs ray.use_gpu=true: DeepSpeed ZeRO runs on CUDA "
                            "GPUs only (on CPU, leave ray.deepspeed unset)")
    if not torch.cuda.is_available():
        raise PersonalError("ray.deepspeed: no CUDA device on this machine; DeepSpeed is "
                            "skipped on CPU (leave ray.deepspeed unset to train data-parallel)")
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise PersonalError("ray.deepspeed: the deepspeed package is not installed "
                            "(pip install -e '.[gpu]')") from None
    return str(path)


def deepspeed_stepper(zero: dict[str, Any], initialize: Optional[Callable[..., tuple]] = None
                      ) -> Callable[..., EngineStepper]:
    """A stepper factory for the one training loop (`models.training.train_loop`): the
    core's AdamW groups and schedule handed to `deepspeed.initialize` (or `initialize`, the
    same signature: tests pass a fake engine), then engine.backward / engine.step, which
    reduce gradients, clip (`gradient_clipping` of `zero`), step AdamW and the schedule."""
    def make(model, groups, lr_lambda, s, coll) -> EngineStepper:
        init = initialize
        if init is None:
            import deepspeed

            init = deepspeed.initialize
        opt = torch.optim.AdamW(groups, lr=s.lr, weight_decay=s.weight_decay)
        engine, _, _, _ = init(model=model, optimizer=opt, config=zero,
                               lr_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(
                                   o, lr_lambda))
        return EngineStepper(engine, coll.world)

    return make


def deepspeed_worker(config: dict) -> None:
    """Ray Train per-worker function: the unified adapter through the one training loop, its
    steps made by a DeepSpeed engine; the same schedule, validation, early stopping and
    best weights as the default path."""
    import ray.train  # Ray and DeepSpeed only where they run: the module imports without them

    ctx = worker_context(config["cfg"], config["run"])
    tc = ray.train.get_context()
    coll = default_collective()
    device = torch.device("cuda", tc.get_local_rank())
    torch.cuda.set_device(device)
    zero = read_zero_config(config["zero"], ctx.cfg.train, coll.world)
    record = train_unified(ctx, coll, stepper=deepspeed_stepper(zero),
                           model=ctx.base[0].to(device))
    ray.train.report({"step": record["steps"]})


def train_unified_deepspeed_on_ray(ctx, max_failures: int = 1) -> dict:
    """Train the unified adapter with DeepSpeed ZeRO on `cfg.ray.num_workers` GPU workers."""
    from ray.train import FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    zero = str(Path(check_deepspeed(ctx.cfg)).resolve())
    run = ctx.run.path.resolve()
    result = TorchTrainer(
        deepspeed_worker,
        train_loop_config={"cfg": config_payload(ctx.cfg), "run": str(run), "zero": zero},
        scaling_config=scaling_config(ctx.cfg),
        run_config=RunConfig(name="unified_lora-deepspeed", storage_path=storage_dir(run),
                             failure_config=FailureConfig(max_failures=max_failures))).fit()
    if result.error is not None:
        raise PersonalError(f"unified_lora with DeepSpeed failed: {result.error}")
    return json.loads((run / ADAPTER / "training.json").read_text(encoding="utf-8"))


def uses_deepspeed(cfg: Any) -> Optional[str]:
    return getattr(cfg.ray, "deepspeed", None)
