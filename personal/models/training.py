"""The training loop shared by base pretraining and adapter training: length-bucketed batches,
masked causal-LM loss, AdamW with warmup + decay, clipping, validation and early stopping."""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from personal.models.chat import IGNORE
from personal.models.fused_ce import linear_cross_entropy, weighted_sum

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
    return {"input_ids": torch.tensor(ids, device=device),
            "labels": torch.tensor(labels, device=device),
            "attention_mask": attention.to(device), "position_ids": positions.to(device)}


# --- Loss -----------------------------------------------------------------------------------

def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper (whose forward takes **kwargs and hands
    them on), else `model` itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


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
    from personal.models.last_layer import target_hidden

    return linear_cross_entropy(target_hidden(inner, decoder, inputs, sel), head.weight,
                                target, token_weight, head.bias)


def masked_lm_loss(model: torch.nn.Module,
                   batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(mean next-token loss over labelled tokens, their count), through `target_losses`."""
    labels = batch["labels"]
    target = labels[:, 1:]
    sel = target != IGNORE
    n = int(sel.sum())
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    if n == 0:
        return model(**inputs, use_cache=False).logits.sum() * 0.0, 0
    total, _ = target_losses(model, inputs, sel, target[sel])
    return total / n, n


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


# --- Schedule and loop ----------------------------------------------------------------------

def lr_factor(step: int, total: int, warmup: int, decay: str) -> float:
    """Multiplier of the peak lr at `step`: linear warmup, then linear or cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    if decay == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return max(0.0, 1.0 - progress)


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


def total_steps(n_examples: int, s: LoopSettings) -> int:
    """Optimiser steps of a run: `epochs` passes (fractions allowed), capped by max_steps."""
    per_epoch = math.ceil(n_examples / s.batch_size)
    steps = max(1, math.ceil(per_epoch * s.epochs))
    return min(steps, s.max_steps) if s.max_steps > 0 else steps


def train_loop(model: torch.nn.Module, train: Sequence[Features], val: Sequence[Features],
               s: LoopSettings, pad_id: int, progress: bool = True,
               desc: str = "train") -> LoopResult:
    """Train the parameters of `model` that require grad. With `val` and `patience` > 0,
    stop after `patience` checks without improvement and restore the best weights (the
    initial weights count as a check, so training can never make the result worse on val)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)
    total = total_steps(len(train), s)
    warmup = int(total * s.warmup_frac)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: lr_factor(k, total, warmup, s.decay))
    gen = torch.Generator().manual_seed(s.seed)
    lengths = [len(f["input_ids"]) for f in train]
    device = next(model.parameters()).device
    per_epoch = math.ceil(len(train) / s.batch_size)
    every = s.eval_every if s.eval_every > 0 else per_epoch
    res, start = LoopResult(), time.perf_counter()
    tracker = BestTracker(
        model, lambda: evaluate_loss(model, val, s.batch_size, pad_id) if val else None, s, res)
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    model.train()
    tracker.check(0)
    while res.steps < total and not res.stopped_early:
        for idx in length_batches(lengths, s.batch_size, gen):
            loss, _ = masked_lm_loss(model, collate([train[i] for i in idx], pad_id, device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
            opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
            res.steps, res.examples_seen = res.steps + 1, res.examples_seen + len(idx)
            res.train_losses.append((res.steps, float(loss.detach())))
            bar.update(1), bar.set_postfix(loss=f"{res.train_losses[-1][1]:.3f}")
            if res.steps % every == 0 or res.steps == total:
                tracker.check(res.steps)
            if res.steps >= total or res.stopped_early:
                break
    bar.close()
    tracker.restore()
    res.seconds = time.perf_counter() - start
    return res


class BestTracker:
    """Validation checks, patience and a copy of the best trainable weights.

    `val_loss()` returns the validation loss now, or None when there is no validation set;
    the data-parallel loop passes one that sums over workers."""

    def __init__(self, model: torch.nn.Module, val_loss: Callable[[], Optional[float]],
                 s: LoopSettings, res: LoopResult):
        self.model, self.val_loss, self.s, self.res = model, val_loss, s, res
        self.best: Optional[dict[str, torch.Tensor]] = None
        self.bad_checks = 0

    def check(self, step: int) -> None:
        if self.res.val_losses and self.res.val_losses[-1][0] == step:
            return
        loss = self.val_loss()
        if loss is None:
            return
        self.res.val_losses.append((step, loss))
        if self.res.best_val_loss is None or loss < self.res.best_val_loss:
            self.res.best_val_loss, self.res.best_step, self.bad_checks = loss, step, 0
            self.best = {n: p.detach().clone() for n, p in self.model.named_parameters()
                         if p.requires_grad}
        else:
            self.bad_checks += 1
            self.res.stopped_early = 0 < self.s.patience <= self.bad_checks

    def restore(self) -> None:
        if self.best is None:
            return
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in self.best.items():
                params[name].copy_(value)
