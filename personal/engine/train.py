"""Train K adapters in shared forward passes, each exactly as if it were trained alone.

    result = train_stacked(model, datasets, TrainConfig(lr=2e-3, epochs=3), val_datasets=vals)

`datasets[k]` are adapter k's examples: dicts of `input_ids` and `labels` (-100 outside the
targets). Per adapter: its own data order (`sampler.adapter_batches`), a token-mean loss over
its own batch, its own gradient clipping, warmup + decay schedule over its own steps, AdamW
moments and step count, learning rate, and early stopping on its own validation loss. The
losses of the adapters in a pass are summed: their parameters are disjoint slices, so each
adapter's gradient is exactly its own loss's gradient.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from personal.config import TrainConfig
from personal.engine.optim import StackedAdamW, clip_per_adapter
from personal.engine.peft_io import import_peft
from personal.engine.prompts import build_inputs, prompt_tables
from personal.engine.sampler import (IGNORE, adapter_batches, check_examples, collate, pack_rows,
                                     pass_cost, target_count)
from personal.engine.stacked_lora import (StackedWeights, adapter_rows, get_routing,
                                          load_adapter_state, lora_layers, stacked_parameters)
from personal.errors import PersonalError
from personal.models.core import (BestTracker, default_group, lr_factor, squared_distance,
                                  warmup_steps)
from personal.models.training import target_losses

AdapterRef = Union[dict, StackedWeights, str, Path]


@dataclass
class AdapterRun:
    """What happened to one adapter during `train_stacked`."""

    total_steps: int                      # steps planned (epochs x batches, capped)
    steps: int = 0                        # steps taken (fewer if stopped early)
    stopped_early: bool = False
    best_step: Optional[int] = None       # step whose weights were kept (None: no validation)
    best_val_loss: Optional[float] = None
    train_losses: list[float] = field(default_factory=list)   # per step, weighted sum of terms
    val_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    term_losses: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    """(step, unweighted value) per loss term: `lm` (token mean), `l2_to_reference`,
    `delta_norm`, `kd`."""


@dataclass
class StackedTrainResult:
    """Per-adapter runs plus the throughput of the whole call."""

    adapters: list[AdapterRun]
    wall_s: float
    examples: int          # training examples processed (rows of all passes)
    tokens: int            # real tokens processed in training passes


@dataclass
class _State:
    model: nn.Module
    cfg: TrainConfig
    datasets: Sequence[Sequence[dict]]
    val_datasets: Optional[Sequence[Sequence[dict]]]
    params: dict[str, nn.Parameter]
    opt: StackedAdamW
    runs: list[AdapterRun]
    plans: list[list[list[int]]]
    lrs: list[float]
    has_prefix: bool
    device: torch.device
    pad_token_id: int
    micro_batch_rows: int
    tracker: Optional[BestTracker] = None
    param_scale: Optional[list[float]] = None     # lr multiplier per parameter (its group's)
    l2_ref: Optional[dict[str, torch.Tensor]] = None
    l2_lambda: float = 0.0
    delta_lambda: float = 0.0
    kd_weight: float = 0.0
    kd_temperature: float = 1.0
    examples: int = 0
    tokens: int = 0


def train_stacked(model: nn.Module, datasets: Sequence[Sequence[dict]], cfg: TrainConfig, *,
                  val_datasets: Optional[Sequence[Sequence[dict]]] = None,
                  lrs: Optional[Sequence[float]] = None,
                  adapter_seeds: Optional[Sequence[int]] = None,
                  init_from: Optional[AdapterRef] = None, l2_to: Optional[AdapterRef] = None,
                  l2_lambda: float = 0.0, delta_lambda: float = 0.0, kd_weight: float = 0.0,
                  kd_temperature: float = 1.0, micro_batch_rows: int = 64, pad_token_id: int = 0,
                  on_step: Optional[Callable[[int, list[int]], None]] = None,
                  check_start: bool = False,
                  group_lr_scale: Optional[dict[str, float]] = None,
                  group_of: Callable[[str], str] = default_group) -> StackedTrainResult:
    """Train every adapter of the model's stack (LoRA and/or prompt tables) on its dataset.

    cfg: lr (default for all), epochs, max_steps, min_steps, batch_size (per adapter),
      warmup_frac, weight_decay, max_grad_norm (per adapter), eval_every (0: once per
      epoch), patience (0: no early stopping), seed (adapter k's data order: `seed + k`
      unless `adapter_seeds`). Schedule, step budget, batch order and best-weights tracking
      are the training core's (`models.core`, `models.training.batch_plan`), so one adapter
      here trains as `train_lora` trains it.
    lrs: a peak learning rate per adapter. init_from: one adapter state (peft keys or a peft
      folder) copied into every slot, or StackedWeights, one per slot (hybrid strategies).
    l2_to / l2_lambda: the `l2_to_reference` term, l2_lambda * ||theta_k - ref||^2, added to
      adapter k's loss (constrained).
    delta_lambda: the `delta_norm` term, delta_lambda * sum over layers of ||s * B_k A_k||_F^2,
      adapter k's effective weight change (a residual held near whatever the base already
      is; penalising A and B apart is a poor proxy: many factor pairs give one update).
    kd_weight / kd_temperature: the `kd` term, kd_weight * T^2 * KL(teacher || adapter k)
      per target token at temperature T, the teacher being the stack's own base (every row
      at -1, in eval mode): with an adapter merged into the base (`merge_peft`), the
      residual is distilled toward that adapter's next-token distribution.
    val_datasets: enables validation, early stopping and keeping each adapter's best weights.
    check_start: also validate before the first step, so an adapter never ends worse on val
      than it started (as `train_loop` does); off by default: one more validation pass.
    group_lr_scale: lr multiplier per parameter group (`group_of` of the state key: lora,
      prompt, user_vector, ...); the others at 1.
    The model's device is used; adapters with an empty dataset are left untouched.
    """
    st = _setup(model, datasets, cfg, val_datasets, lrs, adapter_seeds, init_from, l2_to,
                l2_lambda, micro_batch_rows, pad_token_id)
    _set_constraints(st, delta_lambda, kd_weight, kd_temperature)
    st.param_scale = _param_scale(st.params, group_lr_scale, group_of)
    t0 = time.perf_counter()
    was_training = model.training
    if check_start:
        _evaluate(st, [k for k in range(len(st.runs)) if _has_val(st, k)])
    step = 0
    while True:
        active = [k for k, run in enumerate(st.runs)
                  if not run.stopped_early and run.steps < run.total_steps]
        if not active:
            break
        model.train()
        _train_step(st, active)
        step += 1
        _evaluate_due(st, active)
        if on_step is not None:
            on_step(step, active)
    st.tracker.restore()
    model.train(was_training)
    return StackedTrainResult(st.runs, time.perf_counter() - t0, st.examples, st.tokens)


def _setup(model, datasets, cfg, val_datasets, lrs, adapter_seeds, init_from, l2_to, l2_lambda,
           micro_batch_rows, pad_token_id) -> _State:
    k = get_routing(model).num_adapters
    for name, items in (("datasets", datasets), ("val_datasets", val_datasets),
                        ("lrs", lrs), ("adapter_seeds", adapter_seeds)):
        if items is not None and len(items) != k:
            raise PersonalError(f"{name} has {len(items)} entries; the stack holds {k} adapters")
    check_examples(datasets)
    if val_datasets is not None:
        check_examples(val_datasets, "val_datasets")
    params = {key: p for key, p in stacked_parameters(model).items() if p.requires_grad}
    if not params:
        raise PersonalError("the model has no trainable stacked parameters")
    if init_from is not None:
        _load_init(model, init_from, k)
    seeds = list(adapter_seeds) if adapter_seeds is not None else [cfg.seed + j for j in range(k)]
    plans = [adapter_batches(len(d), cfg.batch_size, cfg.epochs, cfg.max_steps, s,
                             min_steps=cfg.min_steps,
                             lengths=[len(ex["input_ids"]) for ex in d])
             for d, s in zip(datasets, seeds)]
    torch.manual_seed(cfg.seed)  # dropout
    tables = prompt_tables(model)
    device = next(iter(params.values())).device
    st = _State(model, cfg, datasets, val_datasets, params,
                StackedAdamW(list(params.values()), k, weight_decay=cfg.weight_decay),
                [AdapterRun(total_steps=len(p)) for p in plans], plans,
                [float(x) for x in lrs] if lrs is not None else [cfg.lr] * k,
                bool(tables is not None and getattr(tables, "prefix", None) is not None),
                device, pad_token_id, micro_batch_rows)
    if l2_to is not None and l2_lambda > 0:
        st.l2_ref, st.l2_lambda = _reference(l2_to, params, k, device), float(l2_lambda)
    st.tracker = BestTracker(st.runs, cfg.patience, lambda j: _snapshot(st, j),
                             lambda j, weights: _load_slot(st, j, weights))
    return st


def _set_constraints(st: _State, delta_lambda: float, kd_weight: float,
                     kd_temperature: float) -> None:
    for name, value in (("delta_lambda", delta_lambda), ("kd_weight", kd_weight)):
        if not value >= 0:
            raise PersonalError(f"{name} must be >= 0, got {value}")
    if not kd_temperature > 0:
        raise PersonalError(f"kd_temperature must be > 0, got {kd_temperature}")
    if kd_weight > 0 and prompt_tables(st.model) is not None:
        raise PersonalError("the kd term's teacher is the stack's base (rows -1), which has no "
                            "place for prompt tables; distil a LoRA-only stack")
    st.delta_lambda, st.kd_weight = float(delta_lambda), float(kd_weight)
    st.kd_temperature = float(kd_temperature)


def _snapshot(st: _State, k: int) -> dict[str, torch.Tensor]:
    return {key: p[k].detach().clone() for key, p in st.params.items()}


@torch.no_grad()
def _load_slot(st: _State, k: int, weights: dict[str, torch.Tensor]) -> None:
    for key, value in weights.items():
        st.params[key][k] = value


def _param_scale(params: dict[str, nn.Parameter], group_lr_scale: Optional[dict[str, float]],
                 group_of: Callable[[str], str]) -> Optional[list[float]]:
    """Each stacked parameter's lr multiplier, from its group's (None: all 1)."""
    if not group_lr_scale:
        return None
    groups = [group_of(key) for key in params]
    unknown = sorted(set(group_lr_scale) - set(groups))
    if unknown:
        raise PersonalError(f"group_lr_scale names {unknown[0]!r}, a group with no trainable "
                            f"parameters (groups: {sorted(set(groups))})")
    return [float(group_lr_scale.get(g, 1.0)) for g in groups]


def _load_init(model, init_from: AdapterRef, k: int) -> None:
    if isinstance(init_from, StackedWeights):
        if init_from.num_adapters != k:
            raise PersonalError(f"init_from holds {init_from.num_adapters} adapters, the stack {k}")
        for j in range(k):
            load_adapter_state(model, j, init_from.adapter(j), strict=False)
        return
    load_adapter_state(model, None, _as_state(init_from), strict=False)


def _as_state(ref: AdapterRef) -> dict[str, torch.Tensor]:
    if isinstance(ref, (str, Path)):
        return import_peft([ref]).adapter(0)
    return ref


def _reference(ref: AdapterRef, params, k: int, device) -> dict[str, torch.Tensor]:
    """Reference weights as stacked [K or 1, ...] tensors per key (only keys it holds)."""
    if isinstance(ref, StackedWeights):
        if ref.num_adapters != k:
            raise PersonalError(f"l2_to holds {ref.num_adapters} adapters, the stack {k}")
        tensors = ref.tensors
    else:
        tensors = {key: t.unsqueeze(0) for key, t in _as_state(ref).items()}
    unknown = sorted(set(tensors) - set(params))
    if unknown:
        raise PersonalError(f"l2_to has keys the stack lacks, e.g. {unknown[:3]}")
    return {key: t.to(device=device, dtype=torch.float32) for key, t in tensors.items()}


def _train_step(st: _State, active: list[int]) -> None:
    """One optimiser step for every active adapter, on its next batch."""
    batches = {k: st.plans[k][st.runs[k].steps] for k in active}
    counts = {k: sum(target_count(st.datasets[k][i], st.has_prefix) for i in b)
              for k, b in batches.items()}
    rows = [(k, st.datasets[k][i]) for k in active for i in batches[k]]
    losses = torch.zeros(len(st.runs), device=st.device)
    kd = torch.zeros(len(st.runs), device=st.device) if st.kd_weight > 0 else None
    for chunk in pack_rows(rows, st.micro_batch_rows, pass_cost(st.device)):
        batch = collate(chunk, st.pad_token_id, st.device)
        scale = torch.tensor([1.0 / counts[k] for k, _ in chunk], device=st.device)
        if kd is None:
            total, sums = _row_losses(st.model, batch, scale)
        else:
            total, sums, kd_sums = _row_losses_kd(st, batch, scale)
            kd.index_add_(0, batch["adapters"], kd_sums * scale)
        total.backward()
        losses.index_add_(0, batch["adapters"], sums * scale)
        st.examples += len(chunk)
        st.tokens += int(batch["attention_mask"].sum())
    idx = torch.tensor(active, device=st.device)
    terms: dict[str, tuple[float, list[float]]] = {}
    if kd is not None:
        terms["kd"] = (st.kd_weight, kd[idx].tolist())
    if st.l2_ref is not None:
        l2 = _l2_distances(st, idx)
        (st.l2_lambda * l2.sum()).backward()
        terms["l2_to_reference"] = (st.l2_lambda, l2.tolist())
    if st.delta_lambda > 0:
        delta = _delta_norms(st.model, idx)
        (st.delta_lambda * delta.sum()).backward()
        terms["delta_norm"] = (st.delta_lambda, delta.tolist())
    params = list(st.params.values())
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    clip_per_adapter(params, idx, st.cfg.max_grad_norm)
    lrs = []
    for k in active:
        run = st.runs[k]
        mult = lr_factor(run.steps, run.total_steps,
                         warmup_steps(run.total_steps, st.cfg.warmup_frac), "linear")
        lrs.append(st.lrs[k] * mult)
    st.opt.step(active, lrs, st.param_scale)
    for p in params:
        p.grad = None
    _log_step(st, active, losses[idx].tolist(), terms)


def _log_step(st: _State, active: list[int], lm: list[float],
              terms: dict[str, tuple[float, list[float]]]) -> None:
    """Each active adapter's step: its term values (name -> (weight, values)) and their
    weighted sum."""
    for i, k in enumerate(active):
        run = st.runs[k]
        run.steps += 1
        run.term_losses.setdefault("lm", []).append((run.steps, lm[i]))
        total = lm[i]
        for name, (weight, values) in terms.items():
            run.term_losses.setdefault(name, []).append((run.steps, values[i]))
            total += weight * values[i]
        run.train_losses.append(total)


def _delta_norms(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """sum over layers of ||s * B_k A_k||_F^2 per active adapter [len(idx)], in fp32, through
    the r x r Gram matrices: ||BA||^2 = tr((B^T B)(A A^T)), never the out x in product."""
    total = None
    for layer in lora_layers(model):
        a = layer.lora_A.index_select(0, idx).float()
        b = layer.lora_B.index_select(0, idx).float()
        d = ((a @ a.transpose(1, 2)) * (b.transpose(1, 2) @ b)).sum((1, 2)) * layer.scaling ** 2
        total = d if total is None else total + d
    if total is None:
        raise PersonalError("delta_norm: the model has no LoRA layers")
    return total


def _l2_distances(st: _State, idx: torch.Tensor) -> torch.Tensor:
    """||theta_k - ref_k||^2 of each active adapter [len(idx)] (the `l2_to_reference` term,
    `models.core.squared_distance` per slot)."""
    pairs = ((st.params[key].index_select(0, idx),
              ref.index_select(0, idx) if ref.shape[0] > 1 else ref)
             for key, ref in st.l2_ref.items())
    return squared_distance(pairs, per_slot=True)


def _row_losses_kd(st: _State, batch: dict[str, torch.Tensor], row_scale: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_row_losses` plus the kd term: (sum over rows of row_scale * (CE + kd_weight * KD),
    each row's summed CE [rows], each row's summed KD [rows]; both detached). All logits
    at the targets are needed here, so this is the unfused path."""
    model, temp = st.model, st.kd_temperature
    labels = batch["labels"][:, 1:]
    sel = labels != IGNORE
    rows = sel.nonzero()[:, 0]
    plain = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with adapter_rows(model, batch["adapters"]):
        inputs = build_inputs(model, **plain)
        logits = model(**inputs, use_cache=False).logits[:, :-1][sel].float()
    was_training = model.training
    model.eval()
    with torch.no_grad(), adapter_rows(model, torch.full_like(batch["adapters"], -1)):
        teacher = model(**build_inputs(model, **plain), use_cache=False).logits[:, :-1][sel]
    model.train(was_training)
    ce = F.cross_entropy(logits, labels[sel], reduction="none")
    t_log = F.log_softmax(teacher.float() / temp, dim=-1)
    kl = (t_log.exp() * (t_log - F.log_softmax(logits / temp, dim=-1))).sum(-1) * temp ** 2
    weight = row_scale[rows]
    total = (weight * (ce + st.kd_weight * kl)).sum()
    zeros = torch.zeros(labels.shape[0], device=ce.device)
    return (total, zeros.index_add(0, rows, ce.detach()),
            zeros.index_add(0, rows, kl.detach()))


def _row_losses(model: nn.Module, batch: dict[str, torch.Tensor],
                row_scale: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over rows of row_scale * the row's summed next-token cross-entropy, which is
    differentiable; each row's summed cross-entropy [rows], detached)."""
    with adapter_rows(model, batch["adapters"]):
        inputs = build_inputs(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        labels = inputs.pop("labels")
        shifted = labels[:, 1:]
        sel = shifted != IGNORE
        rows = sel.nonzero()[:, 0]
        weight = None if row_scale is None else row_scale[rows]
        total, ce = target_losses(model, inputs, sel, shifted[sel], weight)
    return total, torch.zeros(labels.shape[0], device=ce.device).index_add_(0, rows, ce)


@torch.no_grad()
def validation_losses(model: nn.Module, val_datasets: Sequence[Sequence[dict]],
                      adapters: Sequence[int], micro_batch_rows: int = 64,
                      pad_token_id: int = 0) -> dict[int, float]:
    """Token-mean validation loss of each listed adapter on its own validation examples,
    computed in shared passes (eval mode: no dropout)."""
    tables = prompt_tables(model)
    has_prefix = bool(tables is not None and getattr(tables, "prefix", None) is not None)
    device = next(model.parameters()).device
    rows = [(k, ex) for k in adapters for ex in val_datasets[k]]
    counts = {k: sum(target_count(ex, has_prefix) for ex in val_datasets[k]) for k in adapters}
    sums = torch.zeros(get_routing(model).num_adapters, device=device)
    was_training = model.training
    model.eval()
    for chunk in pack_rows(rows, micro_batch_rows, pass_cost(device)):
        batch = collate(chunk, pad_token_id, device)
        sums.index_add_(0, batch["adapters"], _row_losses(model, batch)[1])
    model.train(was_training)
    return {k: sums[k].item() / counts[k] for k in adapters if counts[k] > 0}


def _has_val(st: _State, k: int) -> bool:
    return st.val_datasets is not None and bool(st.val_datasets[k])


def _due(st: _State, k: int) -> bool:
    run = st.runs[k]
    if not _has_val(st, k):
        return False
    every = st.cfg.eval_every
    if every <= 0:  # once per epoch of this adapter
        every = -(-len(st.datasets[k]) // st.cfg.batch_size)
    return run.steps % every == 0 or run.steps == run.total_steps


def _evaluate_due(st: _State, active: list[int]) -> None:
    _evaluate(st, [k for k in active if _due(st, k)])


def _evaluate(st: _State, adapters: list[int]) -> None:
    """Validate `adapters` in shared passes; the core's tracker keeps bests and stops."""
    if not adapters:
        return
    losses = validation_losses(st.model, st.val_datasets, adapters, st.micro_batch_rows,
                               st.pad_token_id)
    for k, loss in losses.items():
        st.tracker.record(k, st.runs[k].steps, loss)  # a stopped adapter gets no more steps
