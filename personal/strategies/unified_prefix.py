"""unified_prefix: the unified LoRA adapter plus a per-user soft prompt (the study's
Strategy 9, form (a)): each user's prefix is fitted on the frozen unified adapter, so the
prompt carries what is the user's and the LoRA what everybody shares.

A new user gets the mean of the trained users' prompts. `unified_path` takes any peft folder
of a unified adapter (another run's `adapters/unified_lora`); by default the run trains its
own. The prompt-swap check answers some test turns with another user's prompt and records
the share whose output changes (`diagnostics/unified_prefix.json`, a row of the report's
strategy checks): a prompt the model ignores changes nothing.

`form=joint` is the study's form (b): the LoRA and every user's prompt trained together on
all users (the run's `train` schedule; the prompts at `lr`), so the LoRA learns to read the
prompt; one peft LoRA is shared by every row and each row's prompt is its user's
(`engine.RoutedModel` through the training core's loop). The exported folders have the
same shape as form (a)'s: the shared LoRA and the user's prompt.
"""
from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from personal.data.safety import child_path
from personal.engine.peft_io import CONFIG_FILE, PROMPTS_FILE, WEIGHTS_FILE
from personal.errors import PersonalError
from personal.models.lora import spread_sample
from personal.strategies import unified
from personal.strategies.common import (example_keys, fleet_schedule, fleet_unit, load_stack,
                                        own_or_fallback_predictor, user_groups, val_groups)
from personal.strategies.fleet import FleetSpec
from personal.strategies.keys import training_inputs
from personal.strategies.registry import Unit, register_strategy, servable
from personal.strategies.routes import Route, RouteTable, own_or

NAME = "unified_prefix"
FOLDER = f"adapters/{NAME}"
COLD_START = f"adapters/{NAME}_mean"
"""The unified LoRA with the mean of the users' prompts: what a new user gets."""
DIAGNOSTICS = f"diagnostics/{NAME}.json"


@dataclass
class UnifiedPrefixConfig:
    """Per-user soft prompts on the frozen unified adapter (schedule from `train` unless
    set here)."""

    prefix_len: int = 10
    """Virtual tokens per user (the study's script: 20; its ablation: 5, 10, 20)."""
    form: str = "frozen"
    """frozen: prompts fitted on the frozen unified adapter (the study's form a); joint:
    the LoRA and the prompts trained together on all users (form b)."""
    unified_path: Optional[str] = None
    """A peft folder of a unified adapter to fit the prompts on (None: the run's own)."""
    epochs: Optional[float] = 2.0
    """Passes over the user's training sessions."""
    min_steps: Optional[int] = 16
    """A floor on each prompt's optimiser steps (16: 2 epochs of a default 30-session user)."""
    lr: Optional[float] = 3e-2
    """Peak learning rate: soft prompts need a larger one than LoRA."""
    batch_size: Optional[int] = None
    """Turns per step (None: train.batch_size)."""
    eval_every: Optional[int] = 0
    """Validation checks every N steps (0: once per epoch)."""
    patience: Optional[int] = None
    """Checks without improvement before stopping (None: train.patience)."""
    val_turns: int = 16
    """Validation turns per user for early stopping, evenly spread (0: all of them)."""
    swap_turns: int = 64
    """Test turns of the prompt-swap check, evenly spread over the users (0: no check)."""

    def __post_init__(self) -> None:  # at config time: a bad option stops before any work
        check_config(self)


def given_unified(scfg) -> Optional[Path]:
    """`unified_path`, checked to be a peft LoRA folder (None: the run's own adapter)."""
    if scfg.unified_path is None:
        return None
    folder = Path(scfg.unified_path).expanduser().resolve()
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / f).is_file()]
    if missing:
        raise PersonalError(f"strategy.{NAME}.unified_path={scfg.unified_path}: not a peft "
                            f"adapter folder (no {missing[0]})")
    return folder


def check_config(scfg) -> None:
    """Refuse options that cannot train, naming the option."""
    if not isinstance(scfg.prefix_len, int) or scfg.prefix_len < 1:
        raise PersonalError(f"strategy.{NAME}.prefix_len must be >= 1, got {scfg.prefix_len}")
    if scfg.swap_turns < 0:
        raise PersonalError(f"strategy.{NAME}.swap_turns must be >= 0, got {scfg.swap_turns}")
    if scfg.form not in ("frozen", "joint"):
        raise PersonalError(f"strategy.{NAME}.form must be frozen or joint, got {scfg.form!r}")
    if scfg.form == "joint" and scfg.unified_path is not None:
        raise PersonalError(f"strategy.{NAME}.unified_path: form=joint trains its own LoRA; "
                            "give unified_path with form=frozen only")
    given_unified(scfg)


def spec(ctx, scfg: UnifiedPrefixConfig) -> FleetSpec:
    # an absolute folder stays absolute under the run's path (pathlib's `/`)
    given = given_unified(scfg)
    init = str(given) if given is not None else unified.ADAPTER
    return FleetSpec(folder=FOLDER, init_from=init, train_lora=False,
                     prefix_len=scfg.prefix_len, train=fleet_schedule(ctx, scfg))


def write_mean_prompt(ctx, names: list[str]) -> None:
    """The cold-start folder: the (shared) LoRA of the users' folders and their mean prompt."""
    first = child_path(ctx.run.path / FOLDER, names[0], "persona id")
    prompts = [load_file(str(child_path(ctx.run.path / FOLDER, n, "persona id") / PROMPTS_FILE))
               for n in names]
    out = ctx.run.path / COLD_START
    out.mkdir(parents=True, exist_ok=True)
    for f in (CONFIG_FILE, WEIGHTS_FILE):
        shutil.copy2(first / f, out / f)
    mean = {k: torch.stack([p[k] for p in prompts]).mean(0) for k in prompts[0]}
    save_file(mean, str(out / PROMPTS_FILE), metadata={"format": "pt"})


def swap_sample(ctx, names: list[str], limit: int) -> list:
    """Test turns of the swap check: evenly spread over the training users' test turns."""
    return spread_sample([e for e in ctx.examples("test", names)], limit)


def prompt_swap(ctx, folder: str, limit: int) -> dict:
    """Answer a sample of test turns with each user's own adapter folder (`folder/<user>`)
    and with the next user's (sorted order: a derangement when there are two users or
    more); the share of turns whose text changes. Shared by every strategy whose users
    differ only in a table (prompts, user vectors)."""
    names = sorted(user_groups(ctx, "train"))
    examples = swap_sample(ctx, names, limit)
    if len(names) < 2 or not examples:
        return {"swap_turns": 0, "changed_share": None,
                "reason": "needs two trained users and test turns"}
    folders = [child_path(ctx.run.path / folder, n, "persona id") for n in names]
    index = {n: k for k, n in enumerate(names)}
    own = [index[e.persona_id] for e in examples]
    other = [(k + 1) % len(names) for k in own]
    from personal.engine import generate_routed

    model, tok = load_stack(ctx, folders), ctx.base[1]
    fmt = ctx.prompt_format()
    mine = generate_routed(model, tok, examples, own, ctx.cfg.generation, fmt=fmt)
    swapped = generate_routed(model, tok, examples, other, ctx.cfg.generation, fmt=fmt)
    changed = sum(a != b for a, b in zip(mine, swapped))
    return {"swap_turns": len(examples), "changed_share": changed / len(examples)}


def swap_unit(ctx, name: str, folder: str, limit: int, upstream: str, check: str,
              meaning: str, extra: Optional[dict] = None) -> Unit:
    """The unit that runs `prompt_swap` after training and records it in
    `diagnostics/<name>.json` (a row of the report's strategy checks)."""
    path = f"diagnostics/{name}.json"

    def work() -> dict:
        result = {"strategy": name, "check": check, "meaning": meaning, **(extra or {}),
                  **prompt_swap(ctx, folder, limit)}
        ctx.run.write_json(path, result)
        return result

    inputs = training_inputs(ctx, f"check/{name}_swap", upstream, limit,
                             dataclasses.asdict(ctx.cfg.generation))
    return Unit(f"check/{name}_swap", inputs, work, [path])


def train_joint(ctx, scfg: UnifiedPrefixConfig, groups: dict, vals: dict) -> dict:
    """Form (b): one LoRA and every user's prompt, trained together; each user's folder
    gets the LoRA and their prompt."""
    from safetensors.torch import save_file as save

    from personal.engine import attach_prompts
    from personal.engine.prompts import RoutedModel
    from personal.models.lora import attach_lora, pad_id, train_settings
    from personal.models.training import seed_everything, train_loop

    names = sorted(groups)
    model, tok = ctx.base
    fmt, pack = ctx.prompt_format(), ctx.cfg.train.pack_sessions
    seed_everything(ctx.cfg.train.seed)
    adapted = attach_lora(model, ctx.cfg.lora)
    tables = attach_prompts(adapted, len(names), prefix_len=scfg.prefix_len,
                            seed=ctx.cfg.train.seed)
    for n, p in adapted.named_parameters():  # attach_prompts froze everything else
        if "lora_" in n:
            p.requires_grad_(True)
    train = [dict(f, adapter=k) for k, n in enumerate(names)
             for f in fmt.encode_training(tok, groups[n], pack)]
    val = [dict(fmt.encode(tok, e), adapter=k) for k, n in enumerate(names) for e in vals.get(n, [])]
    settings = dataclasses.replace(train_settings(ctx.cfg.train), group_lrs={"prompt": scfg.lr})
    loop = train_loop(RoutedModel(adapted), train, val, settings, pad_id(tok),
                      progress=ctx.progress, desc="train LoRA + prompts")
    for k, n in enumerate(names):
        out = child_path(ctx.run.path / FOLDER, n, "persona id")
        adapted.save_pretrained(str(out))
        save({"prompts.prefix": tables.prefix[k].detach().cpu().contiguous()},
             str(out / PROMPTS_FILE), metadata={"format": "pt"})
    return {"adapters": len(names), "steps": loop.steps, "best_step": loop.best_step,
            "best_val_loss": loop.best_val_loss}


def joint_unit(ctx, scfg: UnifiedPrefixConfig, groups: dict, vals: dict) -> Unit:
    keys, vkeys = example_keys(groups), example_keys(vals)
    inputs = training_inputs(ctx, f"train/{NAME}", "joint", keys, vkeys, scfg.prefix_len,
                             scfg.lr)
    return Unit(f"train/{NAME}", inputs, lambda: train_joint(ctx, scfg, groups, vals), [FOLDER])


def stages(ctx, scfg: UnifiedPrefixConfig) -> list:
    groups, vals = user_groups(ctx, "train"), val_groups(ctx, scfg.val_turns)
    if scfg.form == "joint":
        fleet = joint_unit(ctx, scfg, groups, vals)
        upstream = []
    else:
        upstream = [unified.training_inputs(ctx)] if scfg.unified_path is None else []
        fleet = fleet_unit(ctx, f"train/{NAME}", groups, vals, spec(ctx, scfg),
                           upstream=upstream)
    train = fleet.fn

    def work() -> dict:
        record = train()
        write_mean_prompt(ctx, sorted(groups))
        return record

    fleet.fn, fleet.outputs = work, fleet.outputs + [COLD_START]

    swap = swap_unit(ctx, NAME, FOLDER, scfg.swap_turns, fleet.inputs, "prompt swap",
                     "share of test turns whose output changes when another user's prompt "
                     "answers them")
    head = unified.unified_stages(ctx) if upstream else []
    return head + [[fleet]] + ([[swap]] if scfg.swap_turns else [])


def predictor(ctx, scfg: UnifiedPrefixConfig):
    return own_or_fallback_predictor(ctx, FOLDER, COLD_START)


def routes(ctx, scfg: UnifiedPrefixConfig) -> RouteTable:
    """Each trained user gets unified + their prompt; everybody else unified + the mean."""
    fallback = Route.one(COLD_START)
    return RouteTable(NAME, own_or(ctx, FOLDER, fallback), fallback, "prompt")


register_strategy(NAME, config=UnifiedPrefixConfig, stages=stages, predictor=predictor,
                  serving=servable(routes), plans=("phase2",), position=95,
                  expected_seconds={f"train/{NAME}": 320.0, f"check/{NAME}_swap": 20.0},
                  cold_start="the unified adapter with the mean of the users' prompts")
