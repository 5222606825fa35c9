"""Fleets of adapters (per user, per cluster, experts) trained with the batched engine; no
gradient sync between adapters.

    records = train_fleet(ctx, {"persona_000": exs0, "persona_001": exs1, ...}, spec=spec)

Adapter names are sorted; adapter i (in that order) has seed `train.seed + i` for its LoRA
init and its data order, so its weights do not depend on which worker trains it or on which
other adapters share its engine call (with lora.dropout=0 exactly so, up to float order).
A shard (`train_shard`: worker r of W takes names r, r+W, ...) trains `adapters_per_call`
at a time (0: the whole shard in one `train_stacked` call), exports each finished adapter as
a peft folder to `run/<folder>/<name>/` and records it in `run/units/`, so an interrupted
fleet resumes adapter by adapter. Where a fleet runs is the context's `fleet_backend`: None
trains every shard in this process; the Ray executor sets Ray Train's
(`personal.distributed.fleet`), whose workers call `train_shard`.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from personal.config import TrainConfig, from_dict
from personal.data.schema import Example
from personal.engine import (adapter_state, attach_prompts, concat_peft, export_peft, import_peft,
                             inject_stacked_lora, merge_peft, train_stacked)
from personal.engine.prompts import prompt_tables
from personal.engine.stacked_lora import lora_layers
from personal.data.safety import check_name, child_path
from personal.errors import PersonalError
from personal.strategies.keys import training_inputs

@dataclass(frozen=True)
class FleetSpec:
    """What kind of adapters a fleet trains, how, and where they go."""

    folder: str = "adapters"
    """Run-relative folder; adapter `name` is written to `<folder>/<name>/` (peft layout)."""
    init_from: Optional[str] = None
    """Run-relative peft folder copied into every adapter before training (e.g. the unified
    adapter, for hybrid strategies); None starts from peft's init (zero update)."""
    train_lora: bool = True
    """Train the LoRA weights; False keeps them at `init_from` (or zero) and trains only the
    prompt tables."""
    prefix_len: int = 0
    """Soft-prompt tokens per adapter (0: none)."""
    user_vector: bool = False
    """A trainable per-adapter vector added to every input embedding."""
    train: Optional[TrainConfig] = None
    """Schedule of every adapter of the fleet; None uses the run's `train` section."""
    l2_lambda: float = 0.0
    """Pull each adapter toward `init_from`: adds l2_lambda * ||theta - init||^2 to its loss."""
    rank: Optional[int] = None
    """LoRA rank of the fleet's adapters (None: the run's lora.rank)."""
    merge_from: Optional[str] = None
    """Run-relative peft folder merged into the base before the stack is injected (W += s B A):
    each adapter is then a residual on top of it that starts exactly there (B = 0), and is
    exported as merge_from + residual in one standard peft folder (ranks concatenated)."""
    delta_lambda: float = 0.0
    """Weight of the `delta_norm` term: delta_lambda * ||s B A||^2 of each adapter's own
    effective weight change (with merge_from: its distance from that adapter)."""
    kd_weight: float = 0.0
    """Weight of the `kd` term: KL from the base's (with merge_from: that adapter's)
    next-token distribution on the user's own training prompts."""
    kd_temperature: float = 1.0
    """Temperature of the kd term."""


def adapter_unit(spec: FleetSpec, name: str) -> str:
    return f"train/{spec.folder}/{name}"


def _init_hash(ctx, spec: FleetSpec) -> Optional[str]:
    """Hash of the bytes of the adapters the fleet starts from (init_from, merge_from):
    retraining one retrains the fleet."""
    sources = [(n, f) for n, f in (("init_from", spec.init_from),
                                  ("merge_from", spec.merge_from)) if f is not None]
    if not sources:
        return None
    h = hashlib.sha256()
    for option, rel in sources:
        folder = ctx.run.path / rel
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise PersonalError(f"fleet {option} {folder} holds no adapter weights")
        h.update(option.encode())
        for f in files:
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def adapter_inputs(ctx, name: str, index: int, examples: Sequence[Example],
                   val: Sequence[Example], spec: FleetSpec = FleetSpec(),
                   init_hash: Optional[str] = None) -> str:
    """Everything adapter `name` depends on: base, data fingerprint, its examples, LoRA
    shape, the fleet's spec and schedule, the init adapter (`init_hash`: `_init_hash`, read
    once per fleet), format and its seed index."""
    keys = [(e.persona_id, e.session_id, e.turn_index) for e in examples]
    vkeys = [(e.persona_id, e.session_id, e.turn_index) for e in val]
    return training_inputs(ctx, "fleet", name, index, keys, vkeys, spec_dict(spec), init_hash)


def spec_dict(spec: FleetSpec) -> dict:
    """The spec as plain JSON (to hash, and to ship to Ray workers)."""
    return dataclasses.asdict(spec)


def spec_from_dict(d: dict) -> FleetSpec:
    train = d.get("train")
    return FleetSpec(**{**d, "train": None if train is None else from_dict(TrainConfig, train)})


@torch.no_grad()
def init_slots(model: nn.Module, seeds: Sequence[int]) -> None:
    """Initialise slot j of the stack like a one-adapter stack injected with `seeds[j]`
    (peft's kaiming-uniform A, zero B; a soft prefix drawn from the vocabulary with that
    seed): an adapter's start does not depend on its slot."""
    layers = lora_layers(model)
    tables = prompt_tables(model)
    emb = model.get_input_embeddings().weight
    for j, seed in enumerate(seeds):
        g = torch.Generator(device="cpu").manual_seed(seed)
        for layer in layers:
            a = torch.empty(layer.lora_A.shape[1:], dtype=torch.float32)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=g)
            layer.lora_A[j].copy_(a)
            layer.lora_B[j].zero_()
        if tables is not None and getattr(tables, "prefix", None) is not None:
            ids = torch.randint(0, emb.shape[0], (tables.prefix_len,), generator=g)
            tables.prefix[j] = emb[ids.to(emb.device)].to(tables.prefix.dtype)


def fleet_model(ctx, n: int, seeds: Sequence[int], spec: FleetSpec) -> nn.Module:
    """A copy of the base with an n-adapter stack (and prompt tables) shaped by `spec`."""
    lora = ctx.cfg.lora
    model = copy.deepcopy(ctx.base[0])
    if spec.merge_from is not None:
        merge_peft(model, ctx.run.path / spec.merge_from)
    model = inject_stacked_lora(model, n, rank=spec.rank or lora.rank,
                                alpha=lora.alpha, dropout=lora.dropout,
                                target_modules=lora.target_modules, seed=seeds[0])
    if spec.prefix_len > 0 or spec.user_vector:
        attach_prompts(model, n, prefix_len=spec.prefix_len, user_vector=spec.user_vector,
                       seed=seeds[0])
    init_slots(model, seeds)
    if not spec.train_lora:
        for layer in lora_layers(model):
            layer.lora_A.requires_grad_(False)
            layer.lora_B.requires_grad_(False)
    return model


def train_chunk(ctx, names: list[str], seeds: list[int], data: list[list[dict]],
                val: list[list[dict]], spec: FleetSpec = FleetSpec()) -> list[dict]:
    """One `train_stacked` call for `names`; exports each adapter; returns their records."""
    tokenizer = ctx.base[1]
    model = fleet_model(ctx, len(names), seeds, spec)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    has_val = any(val)
    init = None if spec.init_from is None else ctx.run.path / spec.init_from
    result = train_stacked(model, data, spec.train or ctx.cfg.train,
                           val_datasets=val if has_val else None, adapter_seeds=seeds,
                           pad_token_id=pad, init_from=init,
                           l2_to=init if spec.l2_lambda > 0 else None,
                           l2_lambda=spec.l2_lambda, delta_lambda=spec.delta_lambda,
                           kd_weight=spec.kd_weight, kd_temperature=spec.kd_temperature)
    records = []
    for k, name in enumerate(names):
        out = export_adapter(ctx, model, k, spec,
                             child_path(ctx.run.path / spec.folder, name, "adapter name"))
        run = result.adapters[k]
        records.append({"adapter_dir": str(out), "steps": run.steps,
                        "best_step": run.best_step, "best_val_loss": run.best_val_loss,
                        "stopped_early": run.stopped_early, "val_losses": run.val_losses,
                        "first_train_loss": run.train_losses[0] if run.train_losses else None,
                        "last_train_loss": run.train_losses[-1] if run.train_losses else None})
    return records


def export_adapter(ctx, model: nn.Module, k: int, spec: FleetSpec, out: Path) -> Path:
    """Adapter k as a peft folder; with merge_from, the merged adapter plus the residual in
    one folder (`concat_peft`), so it loads anywhere without the merge."""
    if spec.merge_from is None:
        return export_peft(model, k, out, base_model_name_or_path=ctx.cfg.model.base)
    merged = import_peft([ctx.run.path / spec.merge_from])
    layer = lora_layers(model)[0]
    return concat_peft([(merged.adapter(0), merged.alpha / merged.rank),
                        (adapter_state(model, k), layer.scaling)], out,
                       merged.target_modules, ctx.cfg.model.base)


def _record(ctx, spec: FleetSpec, name: str, inputs: str, result: dict, seconds: float) -> None:
    ctx.run.record_unit(adapter_unit(spec, name), inputs, [f"{spec.folder}/{name}"], seconds,
                        result)


def _maybe_fail(fault: Optional[dict], rank: int, finished: int) -> None:
    """Fault injection for tests: worker `fault['rank']` exits hard once (the flag file
    remembers it) after it finished `fault['kill_after']` adapters."""
    if not fault or rank != fault.get("rank", 0) or finished < fault["kill_after"]:
        return
    flag = Path(fault["flag"])
    if not flag.exists():
        flag.write_text(f"killed after {finished} adapters\n", encoding="utf-8")
        os._exit(1)


def train_shard(ctx, groups: dict[str, Sequence[Example]],
                val_groups: Optional[dict[str, Sequence[Example]]] = None, rank: int = 0,
                world: int = 1, adapters_per_call: int = 0,
                fault: Optional[dict] = None, spec: FleetSpec = FleetSpec()) -> dict[str, dict]:
    """Train worker `rank`'s shard of the fleet (skipping recorded adapters); returns the
    records of the adapters it trained now."""
    names = sorted(groups)
    val_groups = val_groups or {}
    fmt, tokenizer = ctx.prompt_format(), ctx.base[1]
    todo, init = [], _init_hash(ctx, spec)
    for i in range(rank, len(names), world):
        name = names[i]
        inputs = adapter_inputs(ctx, name, i, groups[name], val_groups.get(name, []), spec,
                                init)
        if not ctx.run.unit_done(adapter_unit(spec, name), inputs):
            todo.append((i, name, inputs))
    size = adapters_per_call if adapters_per_call > 0 else max(len(todo), 1)
    done: dict[str, dict] = {}
    for at in range(0, len(todo), size):
        chunk = todo[at:at + size]
        t0 = time.perf_counter()
        pack = (spec.train or ctx.cfg.train).pack_sessions
        data = [fmt.encode_training(tokenizer, groups[n], pack) for _, n, _ in chunk]
        val = [[fmt.encode(tokenizer, e) for e in val_groups.get(n, [])] for _, n, _ in chunk]
        seeds = [ctx.cfg.train.seed + i for i, _, _ in chunk]
        records = train_chunk(ctx, [n for _, n, _ in chunk], seeds, data, val, spec)
        seconds = (time.perf_counter() - t0) / len(chunk)
        for (_, name, inputs), rec in zip(chunk, records):
            _record(ctx, spec, name, inputs, rec, seconds)
            done[name] = rec
        _maybe_fail(fault, rank, len(done))
    return done


def train_fleet(ctx, groups: dict[str, Sequence[Example]],
                val_groups: Optional[dict[str, Sequence[Example]]] = None, *,
                spec: FleetSpec = FleetSpec()) -> dict[str, dict]:
    """Train one adapter per group into `run/<spec.folder>/<name>/` where the context's
    `fleet_backend` says (None: this process); returns every adapter's record (finished
    ones are skipped)."""
    check_fleet(groups)
    backend = getattr(ctx, "fleet_backend", None)
    if backend is None:
        train_shard(ctx, groups, val_groups, spec=spec)
    else:
        backend(ctx, groups, val_groups or {}, spec)
    return fleet_records(ctx, groups, spec)


def check_fleet(groups: dict) -> None:
    if not groups:
        raise PersonalError("train_fleet: no adapter groups")
    for name in groups:
        check_name(name, "adapter name")


def fleet_records(ctx, groups: dict, spec: FleetSpec) -> dict[str, dict]:
    """The finished records of a fleet's adapters."""
    return {n: ctx.run.unit_result(adapter_unit(spec, n)) for n in sorted(groups)}


def per_user_groups(ctx, personas: Optional[Sequence[str]] = None,
                    split: str = "train") -> dict[str, list[Example]]:
    """One group per training user (the per-user fleet)."""
    personas = list(personas) if personas is not None else ctx.training_personas()
    out: dict[str, list[Example]] = {p: [] for p in personas}
    for e in ctx.examples(split, personas):
        out[e.persona_id].append(e)
    return {p: exs for p, exs in out.items() if exs}
