"""The unified adapter, data-parallel: the same training as `models.lora.train_lora`, with each
global batch split across workers and the LoRA gradients summed (gloo on CPU, NCCL on GPU).

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

import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from personal.errors import PersonalError
from personal.models.lora import (TrainResult, pad_id, prepare_training, save_adapter,
                                  train_settings)
from personal.models.training import (BestTracker, LoopResult, LoopSettings, collate,
                                      length_batches, loss_sums, lr_factor, masked_lm_loss,
                                      total_steps)

ADAPTER = "adapters/unified_lora"
CHECKPOINT_FILE = "state.pt"


class Collective:
    """Sums across the workers of a data-parallel group; this one is a single worker."""

    rank, world = 0, 1

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return t


class TorchCollective(Collective):
    """torch.distributed all-reduce over the process group Ray Train set up."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        self.dist.all_reduce(t)
        return t


def default_collective() -> Collective:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return TorchCollective()
    return Collective()


# --- The loop ---------------------------------------------------------------------------------



def dp_val_loss(model, val_local, has_val: bool, batch_size: int, pad_id: int,
                coll: "Collective"):
    """A `BestTracker` validation loss summed over workers (each holds a shard of val)."""
    def val_loss() -> Optional[float]:
        if not has_val:
            return None
        total, count = loss_sums(model, val_local, batch_size, pad_id)
        if coll.world > 1:
            t = coll.sum(torch.tensor([total, float(count)], dtype=torch.float64))
            total, count = float(t[0]), int(t[1])
        return total / max(count, 1)

    return val_loss


def _trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def _load_trainable(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, value in state.items():
        params[name].copy_(value)


@dataclasses.dataclass
class _Loop:
    model: torch.nn.Module
    train: Sequence[dict]
    s: LoopSettings
    pad_id: int
    coll: Collective
    params: list
    opt: Any
    sched: Any
    res: LoopResult
    tracker: BestTracker


def _step(lp: _Loop, idx: list[int]) -> None:
    """One optimiser step on this worker's rows of the global batch `idx`."""
    device = next(lp.model.parameters()).device
    local = idx[lp.coll.rank::lp.coll.world]
    loss, n = (masked_lm_loss(lp.model, collate([lp.train[i] for i in local], lp.pad_id, device))
               if local else (None, 0))
    if lp.coll.world == 1:
        loss.backward()
        seen = float(loss.detach())
    else:
        sums = lp.coll.sum(torch.tensor([float(n), float(loss.detach()) * n if n else 0.0],
                                        dtype=torch.float64))
        n_global = max(float(sums[0]), 1.0)
        if n:
            (loss * (n / n_global)).backward()
        _all_reduce_grads(lp.params, lp.coll)
        seen = float(sums[1]) / n_global
    torch.nn.utils.clip_grad_norm_(lp.params, lp.s.max_grad_norm)
    lp.opt.step(), lp.sched.step(), lp.opt.zero_grad(set_to_none=True)
    lp.res.steps, lp.res.examples_seen = lp.res.steps + 1, lp.res.examples_seen + len(idx)
    lp.res.train_losses.append((lp.res.steps, seen))


def _all_reduce_grads(params: list, coll: Collective) -> None:
    """Sum the LoRA gradients of all workers in one flat all-reduce."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = coll.sum(torch.cat([g.reshape(-1) for g in grads]))
    at = 0
    for p in params:
        n = p.numel()
        p.grad = flat[at:at + n].view_as(p).clone()
        at += n


def _state(lp: _Loop, epoch: int, next_batch: int) -> dict[str, Any]:
    """Everything needed to continue exactly where the loop is (a checkpoint)."""
    return {"lora": _trainable(lp.model), "opt": lp.opt.state_dict(),
            "sched": lp.sched.state_dict(), "res": dataclasses.asdict(lp.res),
            "best": lp.tracker.best, "bad_checks": lp.tracker.bad_checks, "epoch": epoch,
            "next_batch": next_batch, "rng": torch.get_rng_state()}


def _resume(lp: _Loop, state: dict[str, Any]) -> tuple[int, int]:
    _load_trainable(lp.model, state["lora"])
    lp.opt.load_state_dict(state["opt"])
    lp.sched.load_state_dict(state["sched"])
    for key, value in state["res"].items():
        setattr(lp.res, key, value)
    lp.tracker.best, lp.tracker.bad_checks = state["best"], state["bad_checks"]
    torch.set_rng_state(state["rng"])
    return state["epoch"], state["next_batch"]


def dp_train_loop(model, train: Sequence[dict], val: Sequence[dict], s: LoopSettings,
                  pad_id: int, coll: Optional[Collective] = None,
                  resume: Optional[dict] = None,
                  on_check: Optional[Callable[[dict, Callable[[], dict]], None]] = None,
                  stop_after: int = 0) -> LoopResult:
    """`models.training.train_loop`, data-parallel over `coll`. `on_check(metrics, state)`
    is called after every validation check (`state()` builds a checkpoint); `resume` is such
    a checkpoint. `stop_after` > 0 stops after that many steps (to test resuming)."""
    coll = coll or Collective()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    total = total_steps(len(train), s)
    warmup = int(total * s.warmup_frac)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(k, total, warmup, s.decay))
    res = LoopResult()
    lp = _Loop(model, train, s, pad_id, coll, params, opt, sched, res,
               BestTracker(model, dp_val_loss(model, list(val)[coll.rank::coll.world], bool(val),
                                           s.batch_size, pad_id, coll), s, res))
    lengths = [len(f["input_ids"]) for f in train]
    every = s.eval_every if s.eval_every > 0 else math.ceil(len(train) / s.batch_size)
    model.train()
    epoch, skip = _resume(lp, resume) if resume else (0, 0)
    if not resume:
        lp.tracker.check(0)
    gen = torch.Generator().manual_seed(s.seed)
    for _ in range(epoch):  # replay the data order of the epochs already done
        length_batches(lengths, s.batch_size, gen)
    start = time.perf_counter() - res.seconds
    while res.steps < total and not res.stopped_early:
        for b, idx in enumerate(length_batches(lengths, s.batch_size, gen)):
            if b < skip:
                continue
            _step(lp, idx)
            if res.steps % every == 0 or res.steps == total:
                lp.tracker.check(res.steps)
                res.seconds = time.perf_counter() - start
                if on_check is not None:
                    on_check(_metrics(res), lambda e=epoch, n=b + 1: _state(lp, e, n))
            if res.steps >= total or res.stopped_early or res.steps == stop_after:
                break
        if res.steps == stop_after:
            return res
        epoch, skip = epoch + 1, 0
    lp.tracker.restore()
    res.seconds = time.perf_counter() - start
    return res


def _metrics(res: LoopResult) -> dict[str, float]:
    out = {"step": res.steps, "train_loss": res.train_losses[-1][1] if res.train_losses else math.nan}
    if res.val_losses:
        out["val_loss"] = res.val_losses[-1][1]
    return out


# --- One adapter, any number of workers -----------------------------------------------------

def train_lora_dp(model, tokenizer, train_examples, val_examples, lora_cfg, train_cfg,
                  out_dir: str | Path | None = None, *, fmt, coll: Optional[Collective] = None,
                  resume: Optional[dict] = None, on_check=None,
                  stop_after: int = 0) -> TrainResult:
    """`models.lora.train_lora` on `coll.world` workers: same seed, same adapter init, same
    schedule; worker 0 writes the peft folder (plus training.json) to `out_dir`."""
    coll = coll or Collective()
    adapted, train, val = prepare_training(model, tokenizer, train_examples, val_examples,
                                           lora_cfg, train_cfg, fmt)
    loop = dp_train_loop(adapted, train, val, train_settings(train_cfg), pad_id(tokenizer),
                         coll, resume=resume, on_check=on_check, stop_after=stop_after)
    adapted.eval()
    result = TrainResult(model=adapted, **dataclasses.asdict(loop))
    if out_dir is not None and coll.rank == 0:
        result.adapter_dir = str(save_adapter(adapted, out_dir, result))
    return result


def train_unified(ctx, coll: Optional[Collective] = None, resume: Optional[dict] = None,
                  on_check=None) -> dict:
    """Train the run's unified adapter into `run/adapters/unified_lora` (the unit's work);
    returns its record (as the local unit does)."""
    model, tokenizer = ctx.base
    personas = ctx.training_personas()
    result = train_lora_dp(model, tokenizer, ctx.examples("train", personas),
                           ctx.examples("val", personas), ctx.cfg.lora, ctx.cfg.train,
                           out_dir=ctx.run.path / ADAPTER, fmt=ctx.prompt_format(), coll=coll,
                           resume=resume, on_check=on_check)
    return {k: v for k, v in result.to_dict().items() if k != "train_losses"}


# --- On Ray Train ---------------------------------------------------------------------------

def unified_worker(config: dict) -> None:
    """Ray Train per-worker function: rebuild the Context, resume from the latest checkpoint,
    train this worker's share, report checkpoints at every validation check."""
    import ray.train

    from personal.distributed.runtime import worker_context

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

    from personal.distributed.runtime import (config_payload, prepare_base, scaling_config,
                                              storage_dir, worker_threads)
    from personal.strategies.unified import training_inputs

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
    from personal.distributed.deepspeed import train_unified_deepspeed_on_ray, uses_deepspeed

    if uses_deepspeed(ctx.cfg):
        return lambda: train_unified_deepspeed_on_ray(ctx)
    return lambda: train_unified_on_ray(ctx)
