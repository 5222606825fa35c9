"""What several strategies share: a fleet of adapters as one unit of work, schedules that
override the run's `train` section, and a predictor that answers each test turn with its
user's adapter out of one stacked model (mixed batches, one pass over the test split).

    unit = fleet_unit(ctx, "train/per_user_lora", groups, vals, FleetSpec(folder=...))
    predict = routed_predictor(ctx, [folder / n for n in names], route)
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Callable, Optional, Sequence

from personal.config import TrainConfig
from personal.data.schema import Example
from personal.engine import generate_routed, inject_from_peft
from personal.errors import PersonalError
from personal.models.lora import spread_sample
from personal.strategies.fleet import FleetSpec, per_user_groups, spec_dict, train_fleet
from personal.strategies.keys import training_inputs
from personal.strategies.registry import Unit


def schedule(ctx, **changes) -> TrainConfig:
    """The run's `train` section with the strategy's own values (None keeps the run's)."""
    return dataclasses.replace(ctx.cfg.train, **{k: v for k, v in changes.items()
                                                 if v is not None})


#: Schedule options a fleet strategy's config may carry; None keeps the run's `train` value.
SCHEDULE_FIELDS = ("epochs", "lr", "batch_size", "eval_every", "patience", "min_steps")


def adapter_schedule(ctx, **changes) -> TrainConfig:
    """`schedule` for a strategy's own adapters. `train.min_steps` is the floor that gives
    the unified adapter enough updates on a small dataset; these keep their own epochs
    (per-user adapters overfit their ~30 dialogues within a few), so their floor is 0 unless
    `changes` sets one."""
    return schedule(ctx, **{"min_steps": 0, **changes})


def fleet_schedule(ctx, scfg) -> TrainConfig:
    """`adapter_schedule` with the strategy config's own SCHEDULE_FIELDS (those it has and
    sets)."""
    return adapter_schedule(ctx, **{k: getattr(scfg, k, None) for k in SCHEDULE_FIELDS})


def user_groups(ctx, split: str, personas: Optional[Sequence[str]] = None
                ) -> dict[str, list[Example]]:
    """One group of `split` examples per training user (users with none are left out)."""
    return per_user_groups(ctx, personas, split=split)


def val_groups(ctx, limit: int, personas: Optional[Sequence[str]] = None
               ) -> dict[str, list[Example]]:
    """Each training user's validation turns for early stopping, at most `limit` of them
    evenly spread over their sessions (0: all): the check runs for every adapter each epoch,
    and all ~37 turns of 200 users cost about half a packed training epoch per check."""
    return {u: spread_sample(exs, limit) for u, exs in user_groups(ctx, "val", personas).items()}


def fleet_unit(ctx, name: str, groups: dict[str, list[Example]],
               vals: dict[str, list[Example]], spec: FleetSpec,
               upstream: Sequence[str] = ()) -> Unit:
    """One unit that trains a fleet (one adapter per group) with the batched engine, on Ray
    workers when the Ray executor runs; finished adapters are skipped inside the fleet too,
    so an interrupted fleet resumes adapter by adapter. `upstream`: input hashes of the
    units it builds on (e.g. the unified adapter it starts from)."""
    inputs = training_inputs(ctx, name, example_keys(groups), example_keys(vals),
                             spec_dict(spec), list(upstream))

    def work() -> dict:
        return fleet_summary(train_fleet(ctx, groups, vals, spec=spec))

    return Unit(name, inputs, work, [spec.folder])


def example_keys(groups: dict[str, list[Example]]) -> dict[str, list[tuple]]:
    """{group: its examples' (persona, session, turn)}, sorted by group: what a training
    unit's input hash holds of its data."""
    return {n: [(e.persona_id, e.session_id, e.turn_index) for e in exs]
            for n, exs in sorted(groups.items())}


def fleet_summary(records: dict[str, dict]) -> dict:
    """A compact record of a fleet: adapters, mean steps, how many stopped early."""
    steps = [r["steps"] for r in records.values()]
    return {"adapters": len(records), "mean_steps": sum(steps) / max(len(steps), 1),
            "stopped_early": sum(bool(r.get("stopped_early")) for r in records.values()),
            "mean_best_val_loss": _mean([r.get("best_val_loss") for r in records.values()])}


def _mean(values) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def load_stack(ctx, folders: Sequence[Path]):
    """A copy of the base carrying the given peft folders as one stack (slot k = folders[k])."""
    missing = [str(f) for f in folders if not (Path(f) / "adapter_config.json").is_file()]
    if missing:
        raise PersonalError(f"adapters not trained yet: {missing[:3]} "
                            f"({len(missing)} missing); run `personal train` first")
    return inject_from_peft(copy.deepcopy(ctx.base[0]), list(folders)).eval()


def routed_predictor(ctx, folders: Sequence[Path], route: Callable[[Example], object],
                     fmt=None) -> Callable[[list[Example]], list[str]]:
    """predict(examples) -> texts, example e answered by slot `route(e)` of the stack made of
    `folders` (-1: the base model; a weight vector: a mixture)."""
    model, tokenizer = load_stack(ctx, folders), ctx.base[1]
    fmt = fmt or ctx.prompt_format()

    def predict(examples: list[Example]) -> list[str]:
        return generate_routed(model, tokenizer, examples, [route(e) for e in examples],
                               ctx.cfg.generation, fmt=fmt, progress=ctx.progress)

    return predict


def own_or_fallback_predictor(ctx, folder: str, fallback: str) -> Callable[[list[Example]],
                                                                         list[str]]:
    """The predictor of a per-user fleet: each training user answered by `folder/<user>`,
    everybody else (cold-start users) by the run-relative folder `fallback`, out of one
    stack (so `fallback` has the users' shape)."""
    from personal.data.safety import child_path

    names = sorted(user_groups(ctx, "train"))
    folders = [child_path(ctx.run.path / folder, n, "persona id") for n in names]
    return routed_predictor(ctx, folders + [ctx.run.path / fallback],
                            per_user_route(names, len(names)))


def per_user_route(names: Sequence[str], fallback: Optional[int]) -> Callable[[Example], int]:
    """Route a user's turns to the adapter named after them; other users to `fallback`
    (e.g. the unified adapter's slot; None makes an unknown user an error)."""
    index = {n: k for k, n in enumerate(names)}

    def route(e: Example) -> int:
        if e.persona_id in index:
            return index[e.persona_id]
        if fallback is None:
            raise PersonalError(f"no adapter for user {e.persona_id}")
        return fallback

    return route
