"""The one training loop (base pretraining, adapter training, data-parallel and DeepSpeed) and
its causal-LM parts: length-bucketed batches, left-padded collation, the masked LM loss term.
The shared machinery (schedule, tracker, terms, groups, steppers) is in `models.core`."""
from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from personal.models.chat import IGNORE
from personal.models.core import (BestTracker, Collective, LossTerm, adamw_stepper,
                                  default_group, load_state, lr_factor, model_tracker,
                                  param_groups, plan_steps, schedule, trainable_state,
                                  unwrapped)
from personal.models.fused_ce import linear_cross_entropy, weighted_sum
from personal.models.last_layer import target_hidden

Features = dict[str, list[int]]

#: Devices whose loss goes through `linear_cross_entropy`. On a CPU it is faster (pretraining
#: steps 1.14x, `benchmarks/fused_loss.py`). On an H200 it held 7x less memory for the
#: logits but ran 0.77-0.93x as fast as the plain path (16k tokens x 32k vocabulary, bf16
#: and fp32; `benchmarks/gpu_loss_decode.py`): GPUs keep the plain path.
FUSED_CE_DEVICES = ("cpu",)


def seed_everything(seed: int) -> None:
    """Seed Python and torch (CPU and CUDA): initialisation and dropout become reproducible."""
    random.seed(seed)
    torch.manual_seed(seed)


# --- Batches --------------------------------------------------------------------------------

def length_batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator,
                   shuffle: bool = True) -> list[list[int]]:
    """Batches of indices with similar lengths (little padding). With `shuffle`, the order is
    random per `generator`: shuffle, sort within windows of 50 batches, shuffle the batches."""
    n = len(lengths)
    order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
    window = batch_size * 50
    batches = []
    for w in range(0, n, window):
        chunk = sorted(order[w:w + window], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    if shuffle:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


def batch_plan(lengths: Sequence[int], batch_size: int, steps: int,
               seed: int) -> list[list[int]]:
    """The batches of a run of `steps` optimiser steps, in order: `length_batches` epoch
    after epoch from one generator seeded `seed`. Every path draws its order here, so one
    adapter sees the same batches alone, data-parallel or in the engine's stack."""
    if not lengths:
        return []
    gen = torch.Generator().manual_seed(seed)
    plan: list[list[int]] = []
    while len(plan) < steps:
        plan += length_batches(lengths, batch_size, gen)
    return plan[:steps]


def collate(features: Sequence[Features], pad_id: int,
            device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """LEFT-padded tensors with position ids that ignore the padding, so a row computes the
    same as alone and every row's targets end in the last columns (see `masked_lm_loss`)."""
    width = max(len(f["input_ids"]) for f in features)
    ids, labels, mask = [], [], []
    for f in features:
        pad = width - len(f["input_ids"])
        ids.append([pad_id] * pad + list(f["input_ids"]))
        labels.append([IGNORE] * pad + list(f.get("labels", [IGNORE] * len(f["input_ids"]))))
        mask.append([0] * pad + [1] * len(f["input_ids"]))
    attention = torch.tensor(mask, dtype=torch.long)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    batch = {"input_ids": torch.tensor(ids, device=device),
             "labels": torch.tensor(labels, device=device),
             "attention_mask": attention.to(device), "position_ids": positions.to(device)}
    if "adapter" in features[0]:  # rows of a routed model (per-user tables, one LoRA)
        batch["adapters"] = torch.tensor([f["adapter"] for f in features], device=device)
    for key in ("aux", "user"):  # labels of auxiliary heads, as they are (lists)
        if key in features[0]:
            batch[key] = [f[key] for f in features]
    return batch


# --- Loss -----------------------------------------------------------------------------------

def target_losses(model: torch.nn.Module, inputs: dict, sel: torch.Tensor,
                  target: torch.Tensor, token_weight: Optional[torch.Tensor] = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over the selected targets of token_weight * cross-entropy, the per-target
    cross-entropies [n_targets], detached). `sel` marks the positions that predict a target
    over columns 0 .. T-2 (position t predicts token t+1); `target` holds those targets in
    the same order.

    The output head over the vocabulary is the costliest layer of a small model: it runs on
    the decoder's hidden states at the selected positions only, through
    `linear_cross_entropy`, which never holds all their logits (a packed session has targets
    spread over the whole row, so keeping the last columns would save nothing), on the
    devices of `FUSED_CE_DEVICES`; so does a Llama model's last decoder layer, apart from
    its keys and values (`last_layer.target_hidden`). Elsewhere, and for models whose head
    is more than one linear map (logit soft-capping, an adapted head), the full path: all
    logits, then `F.cross_entropy`."""
    inner = unwrapped(model)
    decoder, head = getattr(inner, "model", None), inner.get_output_embeddings()
    if decoder is None or type(head) is not torch.nn.Linear or \
            head.weight.device.type not in FUSED_CE_DEVICES or \
            getattr(inner.config, "final_logit_softcapping", None):
        logits = model(**inputs, use_cache=False).logits[:, :-1][sel]
        ce = F.cross_entropy(logits.float(), target, reduction="none")
        return weighted_sum(ce, token_weight), ce.detach()
    return linear_cross_entropy(target_hidden(inner, decoder, inputs, sel), head.weight,
                                target, token_weight, head.bias)


def lm_loss_sum(model: torch.nn.Module,
                batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(sum of next-token losses over labelled tokens, their count), through `target_losses`
    (its fused loss and last-layer trims): the LM loss term."""
    labels = batch["labels"]
    target = labels[:, 1:]
    sel = target != IGNORE
    n = int(sel.sum())
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids", "adapters")
              if k in batch}
    if n == 0:
        return model(**inputs, use_cache=False).logits.sum() * 0.0, 0
    total, _ = target_losses(model, inputs, sel, target[sel])
    return total, n


def masked_lm_loss(model: torch.nn.Module,
                   batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(mean next-token loss over labelled tokens, their count), through `target_losses`."""
    total, n = lm_loss_sum(model, batch)
    return (total / n if n else total), n


def lm_term(weight: float = 1.0) -> LossTerm:
    """The causal-LM loss as a loss term (token mean over the global batch): the default."""
    return LossTerm("lm", weight, lm_loss_sum)


@torch.no_grad()
def loss_sums(model: torch.nn.Module, features: Sequence[Features], batch_size: int,
              pad_id: int) -> tuple[float, int]:
    """(sum of token losses, token count) of `features` (dropout off); the data-parallel
    loop sums these over workers before dividing."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    lengths = [len(f["input_ids"]) for f in features]
    total, count = 0.0, 0
    for idx in length_batches(lengths, batch_size, torch.Generator(), shuffle=False):
        loss, n = masked_lm_loss(model, collate([features[i] for i in idx], pad_id, device))
        total, count = total + float(loss) * n, count + n
    model.train(was_training)
    return total, count


def evaluate_loss(model: torch.nn.Module, features: Sequence[Features], batch_size: int,
                  pad_id: int) -> float:
    """Token-weighted mean loss of `model` on `features` (dropout off)."""
    total, count = loss_sums(model, features, batch_size, pad_id)
    return total / max(count, 1)


# --- The loop -------------------------------------------------------------------------------

@dataclass
class LoopSettings:
    """What one run of `train_loop` does (filled from PretrainConfig or TrainConfig)."""

    lr: float
    epochs: float
    batch_size: int
    warmup_frac: float
    weight_decay: float
    max_grad_norm: float
    seed: int
    decay: str = "linear"
    max_steps: int = 0
    eval_every: int = 0
    patience: int = 0
    min_steps: int = 0
    group_lrs: Optional[dict[str, float]] = None
    """Learning rate per parameter group (`models.core.default_group`); others at `lr`."""


@dataclass
class LoopResult:
    """What happened: losses per step, validation losses, the best one and where."""

    train_losses: list[tuple[int, float]] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    best_val_loss: Optional[float] = None
    best_step: int = 0
    steps: int = 0
    examples_seen: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    term_losses: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    """(step, unweighted value) of each loss term; `train_losses` is their weighted sum."""


def total_steps(n_examples: int, s: LoopSettings) -> int:
    """Optimiser steps of a run (`models.core.plan_steps` of the settings)."""
    return plan_steps(n_examples, s.batch_size, s.epochs, s.max_steps, s.min_steps)


@dataclass
class _Run:
    """Everything one `train_loop` call holds."""

    model: torch.nn.Module
    train: Sequence[Features]
    s: LoopSettings
    pad_id: int
    coll: Collective
    terms: Sequence[LossTerm]
    stepper: Any
    plan: list[list[int]]
    res: LoopResult
    tracker: BestTracker
    val_loss: Callable[[], Optional[float]]


def train_loop(model: torch.nn.Module, train: Sequence[Features], val: Sequence[Features],
               s: LoopSettings, pad_id: int, progress: bool = True, desc: str = "train", *,
               coll: Optional[Collective] = None, resume: Optional[dict] = None,
               on_check: Optional[Callable[[dict, Callable[[], dict]], None]] = None,
               stop_after: int = 0, terms: Optional[Sequence[LossTerm]] = None,
               group_of: Callable[[str], str] = default_group,
               stepper: Optional[Callable[..., Any]] = None) -> LoopResult:
    """Train the parameters of `model` that require grad on the loss `terms` (default: the
    LM loss). With `val` and `patience` > 0, stop after `patience` checks without
    improvement; the best weights are restored (the initial weights count as a check, so
    training can never make the result worse on val).

    Data-parallel over `coll`: every worker draws the same global batch and takes rows r,
    r+W, ...; each term is divided by its count summed over workers, so the update is the
    one-process update up to float summation order (exactly it with one worker).
    `stepper(model, groups, lr_lambda, s, coll)` builds what applies a step (None: AdamW;
    a DeepSpeed engine's in `distributed.deepspeed`). `on_check(metrics, state)` is called
    after every validation check (`state()` builds a checkpoint); `resume` is such a
    checkpoint. `stop_after` > 0 stops after that many steps (to test resuming)."""
    run = _start(model, train, val, s, pad_id, coll or Collective(), terms, group_of,
                 stepper or adamw_stepper)
    res, total = run.res, len(run.plan)
    every = s.eval_every if s.eval_every > 0 else math.ceil(len(train) / s.batch_size)
    bar = tqdm(total=total, initial=res.steps, desc=desc, disable=not progress, leave=False)
    model.train()
    if resume:
        _resume(run, resume)
    else:
        _check(run, 0)
    start = time.perf_counter() - res.seconds
    while res.steps < total and not res.stopped_early:
        _step(run, run.plan[res.steps])
        bar.update(1), bar.set_postfix(loss=f"{res.train_losses[-1][1]:.3f}")
        if res.steps % every == 0 or res.steps == total:
            _check(run, res.steps)
            res.seconds = time.perf_counter() - start
            if on_check is not None:
                on_check(_metrics(res), lambda: _state(run))
        if res.steps == stop_after:
            bar.close()
            return res
    bar.close()
    run.tracker.restore()
    res.seconds = time.perf_counter() - start
    return res


def _start(model, train, val, s: LoopSettings, pad_id: int, coll: Collective, terms,
           group_of, stepper) -> _Run:
    total = total_steps(len(train), s)
    groups = param_groups(model, s.lr, s.group_lrs, group_of)
    res = LoopResult()
    plan = batch_plan([len(f["input_ids"]) for f in train], s.batch_size, total, s.seed)
    return _Run(model, train, s, pad_id, coll, list(terms) if terms else [lm_term()],
                stepper(model, groups, schedule(total, s.warmup_frac, s.decay), s, coll),
                plan, res, model_tracker(model, res, s.patience),
                dp_val_loss(model, list(val)[coll.rank::coll.world], bool(val), s.batch_size,
                            pad_id, coll))


def _check(run: _Run, step: int) -> None:
    """A validation check at `step` (once per step; none without a validation set)."""
    if run.res.val_losses and run.res.val_losses[-1][0] == step:
        return
    loss = run.val_loss()
    if loss is not None:
        run.tracker.record(0, step, loss)


def dp_val_loss(model: torch.nn.Module, val_local: Sequence[Features], has_val: bool,
                batch_size: int, pad_id: int,
                coll: Collective) -> Callable[[], Optional[float]]:
    """The validation loss, summed over workers (each holds a shard of val); None: no val."""
    def val_loss() -> Optional[float]:
        if not has_val:
            return None
        total, count = loss_sums(model, val_local, batch_size, pad_id)
        if coll.world > 1:
            t = coll.sum(torch.tensor([total, float(count)], dtype=torch.float64))
            total, count = float(t[0]), int(t[1])
        return total / max(count, 1)

    return val_loss


def _step(run: _Run, idx: list[int]) -> None:
    """One optimiser step on this worker's rows of the global batch `idx`."""
    parts = _term_sums(run, idx[run.coll.rank::run.coll.world])
    counts, values = _reduce(run, parts)
    loss = None
    for term, (t, _), count in zip(run.terms, parts, counts):
        if t is None or count <= 0 or term.weight == 0 or not t.requires_grad:
            continue
        piece = t / count if term.weight == 1.0 else term.weight * (t / count)
        loss = piece if loss is None else loss + piece
    if loss is not None:
        run.stepper.backward(loss)
    run.stepper.step()
    _log(run, idx, values)


def _reduce(run: _Run, parts: list) -> tuple[list[float], list[float]]:
    """(each term's count over all workers, its global value sum / count). One worker: the
    value is the fp32 quotient itself, as the loss that was backpropagated."""
    if run.coll.world == 1:
        return [c for _, c in parts], [float(t.detach() / c) if t is not None and c > 0
                                       else 0.0 for t, c in parts]
    m = len(parts)
    local = [c for _, c in parts] + [float(t.detach()) if t is not None else 0.0
                                      for t, _ in parts]
    reduced = run.coll.sum(torch.tensor(local, dtype=torch.float64)).tolist()
    counts = reduced[:m]
    return counts, [s / c if c > 0 else 0.0 for s, c in zip(reduced[m:], counts)]


def _term_sums(run: _Run, local: list[int]) -> list[tuple[Optional[torch.Tensor], float]]:
    """(sum, count) of every term on this worker's rows; a weight-0 term is only measured."""
    if not local:
        return [(None, 0.0)] * len(run.terms)
    device = next(run.model.parameters()).device
    batch = collate([run.train[i] for i in local], run.pad_id, device)
    parts = []
    for term in run.terms:
        with torch.set_grad_enabled(term.weight != 0):
            t, count = term.fn(run.model, batch)
        parts.append((t, float(count)))
    return parts


def _log(run: _Run, idx: list[int], values: list[float]) -> None:
    res = run.res
    res.steps, res.examples_seen = res.steps + 1, res.examples_seen + len(idx)
    weighted = [v if t.weight == 1.0 else t.weight * v for t, v in zip(run.terms, values)]
    res.train_losses.append((res.steps, weighted[0] + sum(weighted[1:])))
    for term, v in zip(run.terms, values):
        res.term_losses.setdefault(term.name, []).append((res.steps, v))


def _state(run: _Run) -> dict[str, Any]:
    """Everything needed to continue exactly where the loop is (a checkpoint)."""
    return {"lora": trainable_state(run.model), "stepper": run.stepper.state_dict(),
            "res": dataclasses.asdict(run.res), "best": run.tracker.best[0],
            "bad_checks": run.tracker.bad_checks[0], "rng": torch.get_rng_state()}


def _resume(run: _Run, state: dict[str, Any]) -> None:
    """Continue from a `_state` checkpoint: weights, optimiser and schedule, the result so
    far (its step count is the position in the batch plan), best weights, dropout RNG."""
    load_state(run.model, state["lora"])
    run.stepper.load_state_dict(state["stepper"])
    for key, value in state["res"].items():
        setattr(run.res, key, value)
    run.tracker.best[0], run.tracker.bad_checks[0] = state["best"], state["bad_checks"]
    torch.set_rng_state(state["rng"])


def _metrics(res: LoopResult) -> dict[str, float]:
    """What a validation check reports (to Ray Train): step, train and val loss."""
    out = {"step": res.steps,
           "train_loss": res.train_losses[-1][1] if res.train_losses else math.nan}
    if res.val_losses:
        out["val_loss"] = res.val_losses[-1][1]
    return out


__all__ = ["BestTracker", "Collective", "LoopResult", "LoopSettings", "batch_plan", "collate",
           "evaluate_loss", "length_batches", "lm_loss_sum", "lm_term", "loss_sums",
           "lr_factor", "masked_lm_loss", "seed_everything", "target_losses", "total_steps",
           "train_loop", "unwrapped"]
