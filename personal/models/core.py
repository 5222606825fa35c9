"""The parts of the one training core that every path shares: the collective, the learning-rate
schedule, the step budget, the best-weights / early-stopping tracker (K slots), loss terms,
parameter groups and the steppers that apply a step.

    train_loop (models.training)   one adapter or a whole model, one process or data-parallel,
                                   with the AdamW stepper or a DeepSpeed engine's
    train_stacked (engine.train)   K adapters in shared passes, each on this schedule and tracker

What differs between the paths is passed in: a `Collective` (how workers sum), a stepper (how
a backward and an optimiser step are made), the loss terms, and how parameters are grouped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from personal.errors import PersonalError
from personal.models.chat import IGNORE

# --- Collective -----------------------------------------------------------------------------


class Collective:
    """Sums across the workers of a data-parallel group; this one is a single worker."""

    rank, world = 0, 1

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over the workers (in place where the backend allows)."""
        return t


class TorchCollective(Collective):
    """torch.distributed all-reduce over the process group (Ray Train sets it up)."""

    def __init__(self) -> None:
        self.dist = dist
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        # NCCL reduces CUDA tensors only; the loop's counters and CPU gradients go via the GPU.
        self.device = torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend() == "nccl" else None

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.device is None or t.device == self.device:
            self.dist.all_reduce(t)
            return t
        moved = t.to(self.device)
        self.dist.all_reduce(moved)
        return moved.to(t.device)


def default_collective() -> Collective:
    """A `TorchCollective` when a process group of more than one worker is up, else one worker."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return TorchCollective()
    return Collective()


# --- Schedule and step budget ---------------------------------------------------------------

def warmup_steps(total: int, warmup_frac: float) -> int:
    """Warmup length of a run of `total` steps: the fraction rounded down (a run too short
    for one warmup step gets none)."""
    return int(total * warmup_frac)


def lr_factor(step: int, total: int, warmup: int, decay: str = "linear") -> float:
    """Multiplier of the peak lr for optimiser step `step` (0-based): linear warmup, then
    linear or cosine decay to 0 at `total`. Every path uses this one function.

    Warmup is `(step + 1) / warmup`, not transformers' `step / warmup`: the latter makes the
    first step a step at lr 0 (no move, but Adam's moments and step count advance), and on
    small data, where a run is a handful of updates, every update counts. At `step ==
    warmup` the factor is 1 either way, and the decay is the same line."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    if decay == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return max(0.0, 1.0 - progress)


def schedule(total: int, warmup_frac: float, decay: str = "linear") -> Callable[[int], float]:
    """`lr_factor` of a run of `total` steps, as a function of the step (for LambdaLR)."""
    warmup = warmup_steps(total, warmup_frac)
    return lambda step: lr_factor(step, total, warmup, decay)


def plan_steps(n_examples: int, batch_size: int, epochs: float, max_steps: int = 0,
               min_steps: int = 0) -> int:
    """Optimiser steps of a run over `n_examples`: `epochs` passes (fractions allowed), at
    least `min_steps` (more passes on small data), capped by `max_steps` when set."""
    per_epoch = math.ceil(n_examples / batch_size)
    steps = max(1, math.ceil(per_epoch * epochs), min_steps)
    return min(steps, max_steps) if max_steps > 0 else steps


# --- Best weights, validation, early stopping -----------------------------------------------

class BestTracker:
    """Validation checks, patience and a copy of the best weights, for K slots (adapters).

    `results[k]` receives slot k's checks: it has `val_losses`, `best_val_loss`, `best_step`
    and `stopped_early` (a `LoopResult` or an engine `AdapterRun`). `snapshot(k)` copies slot
    k's trainable weights, `load(k, weights)` puts them back."""

    def __init__(self, results: Sequence[Any], patience: int,
                 snapshot: Callable[[int], dict[str, torch.Tensor]],
                 load: Callable[[int, dict[str, torch.Tensor]], None]):
        self.results, self.patience = list(results), patience
        self.snapshot, self.load = snapshot, load
        self.best: list[Optional[dict[str, torch.Tensor]]] = [None] * len(self.results)
        self.bad_checks = [0] * len(self.results)

    def record(self, k: int, step: int, loss: float) -> None:
        """Slot k's validation loss at `step`: keep its weights if best, else count a bad
        check and stop the slot after `patience` of them (0: never)."""
        res = self.results[k]
        res.val_losses.append((step, loss))
        if res.best_val_loss is None or loss < res.best_val_loss:
            res.best_val_loss, res.best_step, self.bad_checks[k] = loss, step, 0
            self.best[k] = self.snapshot(k)
        else:
            self.bad_checks[k] += 1
            res.stopped_early = 0 < self.patience <= self.bad_checks[k]

    def restore(self) -> None:
        """Every validated slot ends on its best weights."""
        for k, weights in enumerate(self.best):
            if weights is not None:
                self.load(k, weights)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the parameters of `model` that require grad, by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def load_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy `state` (by parameter name) into `model`'s parameters."""
    params = dict(model.named_parameters())
    for name, value in state.items():
        params[name].copy_(value)


def model_tracker(model: torch.nn.Module, result: Any, patience: int) -> BestTracker:
    """The one-slot tracker of a single model's trainable weights."""
    return BestTracker([result], patience, lambda _k: trainable_state(model),
                       lambda _k, state: load_state(model, state))


# --- Loss terms -----------------------------------------------------------------------------

#: fn(model, batch) -> (sum of the term over its units, number of units). The loop divides
#: the sum by the count summed over workers, so a data-parallel step is the one-process step.
TermFn = Callable[[torch.nn.Module, dict], tuple[torch.Tensor, float]]


@dataclass
class LossTerm:
    """One named, weighted part of the training loss; each is logged on its own."""

    name: str
    weight: float
    fn: TermFn


def squared_distance(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     per_slot: bool = False) -> torch.Tensor:
    """Sum of ||theta - ref||^2 over (theta, ref) pairs (in fp32); with `per_slot`, one sum
    per index of the leading (adapter) dimension."""
    total = None
    for theta, ref in pairs:
        d = (theta.float() - ref.float()).pow(2)
        d = d.flatten(1).sum(1) if per_slot else d.sum()
        total = d if total is None else total + d
    if total is None:
        raise PersonalError("squared_distance: no parameters to compare")
    return total


def l2_to_reference(reference: Mapping[str, torch.Tensor], weight: float,
                    name: str = "l2_to_reference") -> LossTerm:
    """`weight * ||theta - reference||^2` over the named parameters in `reference` (its
    gradient is 2 * weight * (theta - reference)): keeps an adapter near a shared one."""
    def fn(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, float]:
        params = dict(model.named_parameters())
        missing = sorted(set(reference) - set(params))
        if missing:
            raise PersonalError(f"{name}: the model has no parameter {missing[0]!r}")
        return squared_distance((params[n], r.to(params[n].device))
                                for n, r in reference.items()), 1.0

    return LossTerm(name, weight, fn)


def kl_to_teacher(teacher_logits_fn: Callable[[dict], torch.Tensor], temperature: float = 1.0,
                  weight: float = 1.0, name: str = "kl_to_teacher") -> LossTerm:
    """Distillation: per target token, KL(teacher || student) of the softened distributions,
    times temperature^2 (Hinton et al. 2015, so gradients keep their scale as T changes).
    `teacher_logits_fn(batch)` returns logits [B, T, V] for the same batch (no grad)."""
    def fn(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, float]:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")
                  if k in batch}
        sel = batch["labels"][:, 1:] != IGNORE
        student = model(**inputs, use_cache=False).logits[:, :-1][sel].float()
        with torch.no_grad():
            teacher = teacher_logits_fn(batch)[:, :-1][sel].float()
        t = float(temperature)
        kl = F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1),
                      log_target=True, reduction="sum")
        return kl * (t * t), float(sel.sum())

    return LossTerm(name, weight, fn)


def auxiliary_term(name: str, weight: float,
                   fn: Callable[[torch.nn.Module, dict], torch.Tensor]) -> LossTerm:
    """The hook for any other term (an auxiliary head, a router's balance loss): `fn(model,
    batch)` returns the term's batch mean; data-parallel workers average it."""
    return LossTerm(name, weight, lambda model, batch: (fn(model, batch), 1.0))


# --- Models -------------------------------------------------------------------------------

def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper (whose forward takes **kwargs and hands
    them on), else `model` itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


# --- Parameter groups -----------------------------------------------------------------------

#: (substring of a parameter name, group), first match wins: "prompts.user_vector" is a
#: user vector before it is a prompt.
GROUP_PATTERNS = (("router", "router"), ("user_vector", "user_vector"), ("prompt", "prompt"),
                  ("lora_", "lora"), ("lm_head", "head"), ("score.", "head"))


def default_group(name: str) -> str:
    """The group of a parameter by its name: lora, prompt, user_vector, head, router or other."""
    return next((g for pattern, g in GROUP_PATTERNS if pattern in name), "other")


def param_groups(model: torch.nn.Module, lr: float,
                 group_lrs: Optional[Mapping[str, float]] = None,
                 group_of: Callable[[str], str] = default_group) -> list[dict]:
    """The trainable parameters as optimiser groups, each with its own lr (`group_lrs[name]`,
    else `lr`). Without `group_lrs`, one group of all: exactly the optimiser of before."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not group_lrs:
        return [{"name": "all", "params": [p for _, p in named], "lr": lr}]
    groups: dict[str, list] = {}
    for n, p in named:
        groups.setdefault(group_of(n), []).append(p)
    unknown = sorted(set(group_lrs) - set(groups))
    if unknown:
        raise PersonalError(f"group_lrs names {unknown[0]!r}, a group with no trainable "
                            f"parameters (groups: {sorted(groups)})")
    return [{"name": g, "params": ps, "lr": float(group_lrs.get(g, lr))}
            for g, ps in groups.items()]


# --- Steppers: how a backward and an optimiser step are made --------------------------------

class AdamWStepper:
    """The default: loss.backward; (sum gradients over workers); clip; AdamW; schedule."""

    def __init__(self, params: list, opt: torch.optim.Optimizer, sched: Any,
                 max_grad_norm: float, coll: Collective):
        self.params, self.opt, self.sched = params, opt, sched
        self.max_grad_norm, self.coll = max_grad_norm, coll

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        if self.coll.world > 1:
            all_reduce_grads(self.params, self.coll)
        torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.opt.step(), self.sched.step(), self.opt.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict(), "sched": self.sched.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"]), self.sched.load_state_dict(state["sched"])


def adamw_stepper(model: torch.nn.Module, groups: list[dict], lr_lambda: Callable[[int], float],
                  s: Any, coll: Collective) -> AdamWStepper:
    """The default stepper factory: AdamW over `groups` with `lr_lambda` as its schedule."""
    params = [p for p in model.parameters() if p.requires_grad]  # model order: same clip sum
    opt = torch.optim.AdamW(groups, lr=s.lr, weight_decay=s.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    return AdamWStepper(params, opt, sched, s.max_grad_norm, coll)


class EngineStepper:
    """Steps through an engine with `backward(loss)` and `step()` (DeepSpeed's): the engine
    reduces gradients, clips, steps the optimiser and the schedule it was handed."""

    def __init__(self, engine: Any, world: int = 1):
        self.engine, self.world = engine, world

    def backward(self, loss: torch.Tensor) -> None:
        # The core's loss is this worker's share of the global sum; DeepSpeed averages
        # gradients over workers, so scale by the world to get the sum back.
        self.engine.backward(loss * self.world if self.world > 1 else loss)

    def step(self) -> None:
        self.engine.step()

    def state_dict(self) -> dict:
        raise PersonalError("an engine stepper checkpoints through its engine, not the loop")

    def load_state_dict(self, state: dict) -> None:
        raise PersonalError("an engine stepper resumes through its engine, not the loop")


def all_reduce_grads(params: list, coll: Collective) -> None:
    """Sum the gradients of all workers in one flat all-reduce (zeros where a worker had none)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = coll.sum(torch.cat([g.reshape(-1) for g in grads]))
    at = 0
    for p in params:
        n = p.numel()
        p.grad = flat[at:at + n].view_as(p).clone()
        at += n


# --- Parity of trained weights --------------------------------------------------------------

#: Bound on `relative_difference` between two runs of the same training that differ only in
#: float summation order (padding widths, pass splits, data-parallel shards, CPU kernels).
#: Why 1e-3: a gradient summed in another order differs by a relative ~sqrt(n) * u (u =
#: 2^-24, fp32's unit roundoff; n <= 1e5 terms per reduction here: <= 2e-5); Adam's update
#: m / sqrt(v) is scale-free, so that relative error passes into each step's update about
#: unchanged, and over T steps the weights' errors feed the next gradients and add up to at
#: most ~T times it (T <= 12 in these tests: <= 2.4e-4). Elements whose gradient is itself
#: at the rounding level can take a different O(lr) Adam step, but they carry a negligible
#: share of the update's norm -- which is why the comparison is norm-wise, not elementwise
#: (an elementwise atol failed on AMD EPYC by 1.05e-5 for exactly such elements). The
#: smallest real bug (one of T steps at a wrong lr, a batch dropped, clipping skipped)
#: changes the update by ~1/T >= 8%, far above 1e-3.
PARITY_RTOL = 1e-3


def relative_difference(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor],
                        init: Optional[Mapping[str, torch.Tensor]] = None) -> float:
    """||a - b|| / ||b - init|| over all tensors (init None: zeros): how far two trained
    weight sets differ, relative to the size of the training update itself."""
    if set(a) != set(b):
        raise PersonalError(f"the weight sets differ in keys: {sorted(set(a) ^ set(b))[:3]}")
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a)
    den = sum(float((b[k].double() - (init[k].double() if init is not None else 0)).pow(2)
                    .sum()) for k in b)
    return math.sqrt(num) / max(math.sqrt(den), 1e-30)


def lora_products(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """B @ A of every LoRA pair in a peft state (the weight change the adapter makes, up to
    its scale): the trained update without the initial weights, since B starts at zero."""
    return {k.replace(".lora_A", ""): state[k.replace("lora_A", "lora_B")].double()
            @ state[k].double() for k in state if "lora_A" in k}
