"""Fleets of adapters (per user, per cluster, experts) trained with the batched engine, sharded
across Ray Train workers; no gradient sync between adapters.

    records = train_fleet(ctx, {"persona_000": exs0, "persona_001": exs1, ...})

Adapter names are sorted; adapter i (in that order) has seed `train.seed + i` for its LoRA
init and its data order, so its weights do not depend on which worker trains it or on which
other adapters share its engine call (with lora.dropout=0 exactly so, up to float order).
Worker r of W takes names r, r+W, ...; it trains them `adapters_per_call` at a time (0: its
whole shard in one `train_stacked` call), exports each finished adapter as a peft folder to
`run/adapters/<name>/` and records it in `run/units/`; a restarted worker (FailureConfig)
skips the adapters already recorded with the same inputs. The run directory must be visible
to every worker (one machine, or a shared filesystem on a cluster, as Ray Train's storage).
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

from personal.config import TrainConfig, from_dict, to_dict
from personal.data.schema import Example
from personal.errors import PersonalError
from personal.experiment.runs import stable_hash

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


def adapter_unit(spec: FleetSpec, name: str) -> str:
    return f"train/{spec.folder}/{name}"


def _unit_file(spec: FleetSpec, name: str) -> str:
    from personal.experiment.runs import _safe

    return f"units/{_safe(adapter_unit(spec, name))}.json"


def _init_hash(ctx, spec: FleetSpec) -> Optional[str]:
    """Hash of the init adapter's bytes: retraining it retrains the fleet."""
    if spec.init_from is None:
        return None
    folder = ctx.run.path / spec.init_from
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise PersonalError(f"fleet init_from {folder} holds no adapter weights")
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def adapter_inputs(ctx, name: str, index: int, examples: Sequence[Example],
                   val: Sequence[Example], spec: FleetSpec = FleetSpec(),
                   init_hash: Optional[str] = None) -> str:
    """Everything adapter `name` depends on: base, data fingerprint, its examples, LoRA
    shape, the fleet's spec and schedule, the init adapter (`init_hash`: `_init_hash`, read
    once per fleet), format and its seed index."""
    d = to_dict(ctx.cfg)
    keys = [(e.persona_id, e.session_id, e.turn_index) for e in examples]
    vkeys = [(e.persona_id, e.session_id, e.turn_index) for e in val]
    return stable_hash("fleet", name, index, ctx.fingerprint, ctx.base_key, keys, vkeys,
                       d["lora"], d["train"], spec_dict(spec), init_hash,
                       d["data"]["history_messages"], d["model"]["include_character"],
                       d["model"]["max_seq_len"])


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
    from personal.engine.prompts import prompt_tables
    from personal.engine.stacked_lora import lora_layers

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
    from personal.engine import attach_prompts, inject_stacked_lora

    lora = ctx.cfg.lora
    model = inject_stacked_lora(copy.deepcopy(ctx.base[0]), n, rank=lora.rank,
                                alpha=lora.alpha, dropout=lora.dropout,
                                target_modules=lora.target_modules, seed=seeds[0])
    if spec.prefix_len > 0 or spec.user_vector:
        attach_prompts(model, n, prefix_len=spec.prefix_len, user_vector=spec.user_vector,
                       seed=seeds[0])
    init_slots(model, seeds)
    if not spec.train_lora:
        from personal.engine.stacked_lora import lora_layers

        for layer in lora_layers(model):
            layer.lora_A.requires_grad_(False)
            layer.lora_B.requires_grad_(False)
    return model


def train_chunk(ctx, names: list[str], seeds: list[int], data: list[list[dict]],
                val: list[list[dict]], spec: FleetSpec = FleetSpec()) -> list[dict]:
    """One `train_stacked` call for `names`; exports each adapter; returns their records."""
    from personal.engine import export_peft, train_stacked

    tokenizer = ctx.base[1]
    model = fleet_model(ctx, len(names), seeds, spec)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    has_val = any(val)
    init = None if spec.init_from is None else ctx.run.path / spec.init_from
    result = train_stacked(model, data, spec.train or ctx.cfg.train,
                           val_datasets=val if has_val else None, adapter_seeds=seeds,
                           pad_token_id=pad, init_from=init,
                           l2_to=init if spec.l2_lambda > 0 else None,
                           l2_lambda=spec.l2_lambda)
    records = []
    for k, name in enumerate(names):
        out = export_peft(model, k, ctx.run.path / spec.folder / name,
                          base_model_name_or_path=ctx.cfg.model.base)
        run = result.adapters[k]
        records.append({"adapter_dir": str(out), "steps": run.steps,
                        "best_step": run.best_step, "best_val_loss": run.best_val_loss,
                        "stopped_early": run.stopped_early, "val_losses": run.val_losses,
                        "first_train_loss": run.train_losses[0] if run.train_losses else None,
                        "last_train_loss": run.train_losses[-1] if run.train_losses else None})
    return records


def _record(ctx, spec: FleetSpec, name: str, inputs: str, result: dict, seconds: float) -> None:
    ctx.run.write_json(_unit_file(spec, name), {
        "unit": adapter_unit(spec, name), "inputs": inputs, "outputs": [f"{spec.folder}/{name}"],
        "seconds": seconds, "result": result, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})


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


def fleet_worker(config: dict) -> None:
    """Ray Train per-worker function: rebuild the Context, train this worker's shard."""
    import ray.train

    from personal.distributed.runtime import worker_context

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
                split: str = "train", val_split: str = "val", use_ray: Optional[bool] = None,
                num_workers: Optional[int] = None, adapters_per_call: int = 0,
                max_failures: int = 2, fault: Optional[dict] = None,
                spec: FleetSpec = FleetSpec()) -> dict[str, dict]:
    """Train one adapter per group into `run/<spec.folder>/<name>/`; returns every adapter's
    record (finished ones are skipped). Groups hold examples of the run's `split` (their
    validation examples: `val_split`). use_ray None: on Ray Train when
    `ray_buys_parallelism`; otherwise (or use_ray False) this process trains all shards."""
    if not groups:
        raise PersonalError("train_fleet: no adapter groups")
    bad = [n for n in groups if not n or "/" in n or n.startswith(".")]
    if bad:
        raise PersonalError(f"train_fleet: adapter names must be plain folder names: {bad}")
    workers = num_workers or ctx.cfg.ray.num_workers
    if use_ray is None:
        use_ray = ray_buys_parallelism(ctx.cfg, workers)
    if not use_ray:
        train_shard(ctx, groups, val_groups, adapters_per_call=adapters_per_call, spec=spec)
    else:
        _fleet_on_ray(ctx, groups, val_groups or {}, split, val_split, workers,
                      adapters_per_call, max_failures, fault, spec)
    return {n: ctx.run.read_json(_unit_file(spec, n))["result"] for n in sorted(groups)}


def ray_buys_parallelism(cfg, workers: int) -> bool:
    """Whether a fleet should go to Ray Train: a Ray runtime is up in this process and the
    fleet gets parallelism from it (several workers, or a cluster). One worker on a local
    runtime trains in one process just as the driver would, after ~30 s of Ray Train
    start-up (a trivial TorchTrainer.fit is ~20 s on 2 cores, plus the worker's imports):
    then the driver trains it itself, with the same result."""
    import os

    from personal.distributed.runtime import ray_active

    on_cluster = bool(cfg.ray.address or os.environ.get("RAY_ADDRESS"))
    return ray_active() and (workers > 1 or on_cluster)


def _fleet_on_ray(ctx, groups, val_groups, split, val_split, workers, adapters_per_call,
                  max_failures, fault, spec) -> None:
    from ray.train import FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from personal.distributed.runtime import (config_payload, prepare_base, scaling_config,
                                              storage_dir, worker_threads)

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


def per_user_groups(ctx, personas: Optional[Sequence[str]] = None,
                    split: str = "train") -> dict[str, list[Example]]:
    """One group per training user (the per-user fleet)."""
    personas = list(personas) if personas is not None else ctx.training_personas()
    out: dict[str, list[Example]] = {p: [] for p in personas}
    for e in ctx.examples(split, personas):
        out[e.persona_id].append(e)
    return {p: exs for p, exs in out.items() if exs}
