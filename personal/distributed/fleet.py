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
import math
import os
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from personal.config import to_dict
from personal.data.schema import Example
from personal.errors import PersonalError
from personal.experiment.runs import stable_hash

PREFIX = "adapters"


def adapter_unit(name: str) -> str:
    return f"train/adapter/{name}"


def adapter_inputs(ctx, name: str, index: int, examples: Sequence[Example],
                   val: Sequence[Example]) -> str:
    """Everything adapter `name` depends on: base, data fingerprint, its examples, LoRA
    shape, schedule, format and its seed index."""
    d = to_dict(ctx.cfg)
    keys = [(e.persona_id, e.session_id, e.turn_index) for e in examples]
    vkeys = [(e.persona_id, e.session_id, e.turn_index) for e in val]
    return stable_hash("fleet", name, index, ctx.fingerprint, ctx.base_key, keys, vkeys,
                       d["lora"], d["train"], d["data"]["history_messages"],
                       d["model"]["include_character"], d["model"]["max_seq_len"])


@torch.no_grad()
def init_slots(model: nn.Module, seeds: Sequence[int]) -> None:
    """Initialise slot j of the stack like a one-adapter stack injected with `seeds[j]`
    (peft's kaiming-uniform A, zero B): an adapter's start does not depend on its slot."""
    from personal.engine.stacked_lora import lora_layers

    layers = lora_layers(model)
    for j, seed in enumerate(seeds):
        g = torch.Generator(device="cpu").manual_seed(seed)
        for layer in layers:
            a = torch.empty(layer.lora_A.shape[1:], dtype=torch.float32)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=g)
            layer.lora_A[j].copy_(a)
            layer.lora_B[j].zero_()


def train_chunk(ctx, names: list[str], seeds: list[int], data: list[list[dict]],
                val: list[list[dict]]) -> list[dict]:
    """One `train_stacked` call for `names`; exports each adapter; returns their records."""
    from personal.engine import export_peft, inject_stacked_lora, train_stacked

    base, tokenizer = ctx.base
    lora = ctx.cfg.lora
    model = inject_stacked_lora(copy.deepcopy(base), len(names), rank=lora.rank,
                                alpha=lora.alpha, dropout=lora.dropout,
                                target_modules=lora.target_modules, seed=seeds[0])
    init_slots(model, seeds)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    has_val = any(val)
    result = train_stacked(model, data, ctx.cfg.train, val_datasets=val if has_val else None,
                           adapter_seeds=seeds, pad_token_id=pad)
    records = []
    for k, name in enumerate(names):
        out = export_peft(model, k, ctx.run.path / PREFIX / name,
                          base_model_name_or_path=ctx.cfg.model.base)
        run = result.adapters[k]
        records.append({"adapter_dir": str(out), "steps": run.steps,
                        "best_step": run.best_step, "best_val_loss": run.best_val_loss,
                        "stopped_early": run.stopped_early, "val_losses": run.val_losses,
                        "first_train_loss": run.train_losses[0] if run.train_losses else None,
                        "last_train_loss": run.train_losses[-1] if run.train_losses else None})
    return records


def _record(ctx, name: str, inputs: str, result: dict, seconds: float) -> None:
    from personal.experiment.runs import _safe

    ctx.run.write_json(f"units/{_safe(adapter_unit(name))}.json", {
        "unit": adapter_unit(name), "inputs": inputs, "outputs": [f"{PREFIX}/{name}"],
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
                fault: Optional[dict] = None) -> dict[str, dict]:
    """Train worker `rank`'s shard of the fleet (skipping recorded adapters); returns the
    records of the adapters it trained now."""
    names = sorted(groups)
    val_groups = val_groups or {}
    fmt, tokenizer = ctx.prompt_format(), ctx.base[1]
    todo = []
    for i in range(rank, len(names), world):
        name = names[i]
        inputs = adapter_inputs(ctx, name, i, groups[name], val_groups.get(name, []))
        if not ctx.run.unit_done(adapter_unit(name), inputs):
            todo.append((i, name, inputs))
    size = adapters_per_call if adapters_per_call > 0 else max(len(todo), 1)
    done: dict[str, dict] = {}
    for at in range(0, len(todo), size):
        chunk = todo[at:at + size]
        t0 = time.perf_counter()
        data = [[fmt.encode(tokenizer, e) for e in groups[n]] for _, n, _ in chunk]
        val = [[fmt.encode(tokenizer, e) for e in val_groups.get(n, [])] for _, n, _ in chunk]
        seeds = [ctx.cfg.train.seed + i for i, _, _ in chunk]
        records = train_chunk(ctx, [n for _, n, _ in chunk], seeds, data, val)
        seconds = (time.perf_counter() - t0) / len(chunk)
        for (_, name, inputs), rec in zip(chunk, records):
            _record(ctx, name, inputs, rec, seconds)
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
                       config["adapters_per_call"], config.get("fault"))
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
                split: str = "train", val_split: str = "val", use_ray: bool = True,
                num_workers: Optional[int] = None, adapters_per_call: int = 0,
                max_failures: int = 2, fault: Optional[dict] = None) -> dict[str, dict]:
    """Train one adapter per group into `run/adapters/<name>/`; returns every adapter's
    record (finished ones are skipped). Groups hold examples of the run's `split` (their
    validation examples: `val_split`). Without Ray, one process trains all shards."""
    if not groups:
        raise PersonalError("train_fleet: no adapter groups")
    bad = [n for n in groups if not n or "/" in n or n.startswith(".")]
    if bad:
        raise PersonalError(f"train_fleet: adapter names must be plain folder names: {bad}")
    if not use_ray:
        train_shard(ctx, groups, val_groups, adapters_per_call=adapters_per_call)
    else:
        _fleet_on_ray(ctx, groups, val_groups or {}, split, val_split,
                      num_workers or ctx.cfg.ray.num_workers, adapters_per_call, max_failures,
                      fault)
    return {n: ctx.run.read_json(f"units/train__adapter__{n}.json")["result"]
            for n in sorted(groups)}


def _fleet_on_ray(ctx, groups, val_groups, split, val_split, workers, adapters_per_call,
                  max_failures, fault) -> None:
    from ray.train import FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from personal.distributed.runtime import (config_payload, prepare_base, scaling_config,
                                              storage_dir)

    prepare_base(ctx)
    run = ctx.run.path.resolve()
    keyed = {n: {"split": split, "keys": k} for n, k in _example_keys(groups).items()}
    vkeyed = {n: {"split": val_split, "keys": k} for n, k in _example_keys(val_groups).items()}
    workers = max(1, min(workers, len(groups)))
    trainer = TorchTrainer(
        fleet_worker,
        train_loop_config={"cfg": config_payload(ctx.cfg), "run": str(run), "groups": keyed,
                           "val_groups": vkeyed, "adapters_per_call": adapters_per_call,
                           "fault": fault, "threads": ctx.cfg.ray.cpus_per_worker},
        scaling_config=scaling_config(ctx.cfg, workers),
        run_config=RunConfig(name=f"fleet-{stable_hash(sorted(groups), time.time())}",
                             storage_path=storage_dir(run),
                             failure_config=FailureConfig(max_failures=max_failures)))
    result = trainer.fit()
    if result.error is not None:
        raise PersonalError(f"adapter fleet on Ray failed: {result.error}")
    missing = [n for n in groups if not (run / PREFIX / n / "adapter_config.json").is_file()]
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
