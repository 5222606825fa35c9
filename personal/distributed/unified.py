"""The unified adapter, data-parallel: the same training as `models.lora.train_lora` (the one
loop, `models.training.train_loop`, given a Collective), with each global batch split across
workers and the LoRA gradients summed (gloo on CPU, NCCL on GPU).

Every worker draws the same global batch order; worker r takes rows r, r+W, ... of each batch,
computes the sum of its token losses, and the gradients are all-reduced and divided by the
batch's global target-token count: the update is the single-process update (up to float
summation order; exactly it with one worker). Validation losses are summed the same way, so
every worker makes the same early-stopping decision.

    result = train_unified(ctx)                  # one process, no Ray: today's train_lora
    record = train_unified_on_ray(ctx)           # Ray Train TorchTrainer, cfg.ray workers

Checkpoints (adapter, optimiser, schedule, data position, best weights) are reported through
`ray.train.report` at every validation check; a restarted worker group resumes from the latest.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from personal.distributed.runtime import (config_payload, prepare_base, scaling_config,
                                          storage_dir, worker_context, worker_threads)
from personal.errors import PersonalError
from personal.models.core import Collective, default_collective
from personal.models.lora import train_lora
from personal.strategies.unified import ADAPTER, training_inputs

CHECKPOINT_FILE = "state.pt"


def train_unified(ctx, coll: Optional[Collective] = None, resume: Optional[dict] = None,
                  on_check=None, stepper: Optional[Callable[..., Any]] = None,
                  model: Optional[torch.nn.Module] = None) -> dict:
    """Train the run's unified adapter into `run/adapters/unified_lora` (the unit's work);
    returns its record (as the local unit does). `model`: the base to adapt (default the
    context's, e.g. moved to this worker's GPU)."""
    base, tokenizer = ctx.base
    personas = ctx.training_personas()
    result = train_lora(model if model is not None else base, tokenizer,
                        ctx.examples("train", personas), ctx.examples("val", personas),
                        ctx.cfg.lora, ctx.cfg.train, out_dir=ctx.run.path / ADAPTER,
                        progress=False, fmt=ctx.prompt_format(), coll=coll, resume=resume,
                        on_check=on_check, stepper=stepper)
    return {k: v for k, v in result.to_dict().items()
            if k not in ("train_losses", "term_losses")}


# --- On Ray Train ---------------------------------------------------------------------------

def unified_worker(config: dict) -> None:
    """Ray Train per-worker function: rebuild the Context, resume from the latest checkpoint,
    train this worker's share, report checkpoints at every validation check."""
    import ray.train  # Ray only where it runs: the module imports without it

    torch.set_num_threads(int(config.get("threads", 1)))
    ctx = worker_context(config["cfg"], config["run"])
    coll = default_collective()
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = torch.load(Path(d) / CHECKPOINT_FILE, weights_only=False)

    def on_check(metrics: dict, state: Callable[[], dict]) -> None:
        with tempfile.TemporaryDirectory() as d:
            if coll.rank == 0:
                torch.save(state(), Path(d) / CHECKPOINT_FILE)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
            else:
                ray.train.report(metrics)

    record = train_unified(ctx, coll, resume, on_check)
    if coll.rank == 0:
        ctx.run.write_json("ray/unified_lora_record.json", record)


def train_unified_on_ray(ctx, max_failures: int = 2) -> dict:
    """Train the unified adapter with a TorchTrainer of `cfg.ray.num_workers` workers; a
    re-run with the same inputs resumes from the latest reported checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    prepare_base(ctx)
    workers = ctx.cfg.ray.num_workers
    run = ctx.run.path.resolve()
    trainer = TorchTrainer(
        unified_worker,
        train_loop_config={"cfg": config_payload(ctx.cfg), "run": str(run),
                           "threads": worker_threads(ctx.cfg, workers)},
        scaling_config=scaling_config(ctx.cfg),
        run_config=RunConfig(name=f"unified_lora-{training_inputs(ctx)}",
                             storage_path=storage_dir(run),
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)))
    result = trainer.fit()
    if result.error is not None:
        raise PersonalError(f"unified_lora on Ray failed: {result.error}")
    record = json.loads((run / "ray" / "unified_lora_record.json").read_text(encoding="utf-8"))
    return record


def ray_form(ctx) -> Callable[[], dict]:
    """The Ray form of the `train/unified_lora` unit (the unified strategy's `ray_forms`):
    data-parallel Ray Train, or DeepSpeed ZeRO when `ray.deepspeed` names a config."""
    # a cycle at import time: distributed.deepspeed imports this module
    from personal.distributed.deepspeed import train_unified_deepspeed_on_ray, uses_deepspeed

    if uses_deepspeed(ctx.cfg):
        return lambda: train_unified_deepspeed_on_ray(ctx)
    return lambda: train_unified_on_ray(ctx)
