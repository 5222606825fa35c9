"""augmented_lora: each user's training dialogues augmented to a target size (paraphrase,
context variation, back-translation, synthesis; `strategies.augment`), then one adapter per
user on them, from the base (per-user) or from the unified adapter (hybrid, `init=unified`).

Back-translation and synthesis call a chat model: `translation_model` (required by
back_translation) and `synthesis_model` (default: the run's base) are local model folders
(a transformers config.json, weights and a tokenizer with a chat template), never
downloaded; their files' hash is part of the augmented data's inputs.

The augmented data is written into the run in the canonical layout with a splits file and
each turn's provenance (`RUN/augmented_lora/data`, `personal data validate` reads it), so it
can be inspected and reused; `augmentation.json` beside it counts what each method kept and
what the parser check rejected. Only training sessions feed it: validation and test
sessions, and cold-start users, are copied unchanged. New users get the unified adapter.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from personal.data.io import read_splits
from personal.data.validate import load_dataset
from personal.errors import PersonalError
from personal.hashing import files_fingerprint
from personal.strategies import unified
from personal.strategies.augment import (Tools, augment_users, check_methods,
                                         check_model_folder, write_augmented)
from personal.strategies.common import (fleet_schedule, fleet_summary, own_or_fallback_predictor,
                                        user_groups, val_groups)
from personal.strategies.fleet import FleetSpec, spec_dict, train_fleet
from personal.strategies.keys import training_inputs
from personal.strategies.registry import Unit, register_strategy, servable
from personal.strategies.routes import Route, RouteTable, own_or

NAME = "augmented_lora"
FOLDER = f"adapters/{NAME}"
DATA = f"{NAME}/data"
WHERE = f"strategy.{NAME}"


@dataclass
class AugmentedConfig:
    """Augmentation, then per-user adapters (schedule from `train` unless set here)."""

    target_size: int = 100
    """Training dialogues per user after augmentation (the study: 30 -> 100)."""
    target_factor: float = 0.0
    """When > 0, each user's target is this many times their real training dialogues
    (rounded), instead of target_size: the study's 30 -> 100 is 3.33, and a sweep on a
    smaller population keeps the study's proportions."""
    methods: str = "paraphrase,context_variation"
    """Comma-separated, of: paraphrase, context_variation, back_translation, synthesis."""
    translation_model: Optional[str] = None
    """Local folder of a chat model that translates, for back_translation (required by that
    method): each user turn goes into `translation_pivot` and back into English."""
    translation_pivot: str = "German"
    """The language back-translation goes through."""
    context_match: str = "session"
    """context_variation's criterion for another context: `session` (a session of that
    context led to the same settings as the whole dialogue) or `turn` (sessions of that
    context show each turn's settings, turn by turn: applies more often)."""
    synthesis_model: Optional[str] = None
    """Local folder of a chat model for synthesis (None: the run's base model)."""
    real_weight: int = 1
    """Each real training turn counts this many times (synthetic ones once): 2 weighs the
    user's own dialogues above the made ones."""
    init: str = "base"
    """Where each adapter starts: base (per-user adapters) or unified (hybrid)."""
    epochs: Optional[float] = 1.0
    """Passes over the user's augmented sessions (~3x the real ones at the default size)."""
    min_steps: Optional[int] = 16
    """A floor on each adapter's optimiser steps, as per_user_lora's."""
    lr: Optional[float] = 1e-2
    """Peak learning rate (per_user_lora's; 1e-3 suits init=unified, as hybrid_lora's)."""
    batch_size: Optional[int] = None
    """Turns per step (None: train.batch_size)."""
    eval_every: Optional[int] = 0
    """Validation checks every N steps (0: once per epoch); the best state is kept."""
    patience: Optional[int] = None
    """Checks without improvement before stopping (None: train.patience)."""
    val_turns: int = 16
    """Validation turns per user for early stopping, evenly spread (0: all of them)."""

    def __post_init__(self) -> None:  # at config time: a bad option stops before any work
        check_methods(method_list(self), self.translation_model, WHERE)
        check_model_folder(self.translation_model, f"{WHERE}.translation_model")
        check_model_folder(self.synthesis_model, f"{WHERE}.synthesis_model")
        if self.context_match not in ("session", "turn"):
            raise PersonalError(f"{WHERE}.context_match must be session or turn, got "
                                f"{self.context_match!r}")
        if not str(self.translation_pivot).strip():
            raise PersonalError(f"{WHERE}.translation_pivot must name a language")
        if not isinstance(self.target_size, int) or self.target_size < 1:
            raise PersonalError(f"{WHERE}.target_size must be >= 1, got {self.target_size}")
        if not self.target_factor == 0 and not self.target_factor >= 1:
            raise PersonalError(f"{WHERE}.target_factor must be 0 (use target_size) or >= 1 "
                                f"(augmentation only adds), got {self.target_factor}")
        if not isinstance(self.real_weight, int) or self.real_weight < 1:
            raise PersonalError(f"{WHERE}.real_weight must be an integer >= 1, got "
                                f"{self.real_weight}")
        if self.init not in ("base", "unified"):
            raise PersonalError(f"{WHERE}.init must be base or unified, got {self.init!r}")


def method_list(scfg: AugmentedConfig) -> list[str]:
    return [m.strip() for m in str(scfg.methods).split(",") if m.strip()]


def model_identity(path: str) -> str:
    """What a model folder's outputs depend on: the hash of its files (configs, tokenizer,
    weights), not where it lies."""
    return files_fingerprint(p for p in Path(path).iterdir() if p.is_file())


def data_inputs(ctx, scfg: AugmentedConfig) -> str:
    methods = method_list(scfg)
    model = []
    if "synthesis" in methods:
        synth = model_identity(scfg.synthesis_model) if scfg.synthesis_model else ctx.base_key
        model += [synth, dataclasses.asdict(ctx.cfg.generation)]
    if "back_translation" in methods:
        model += [model_identity(scfg.translation_model), scfg.translation_pivot,
                  TRANSLATION_TOKENS]
    match = [scfg.context_match] if scfg.context_match != "session" else []  # old keys hold
    return training_inputs(ctx, f"data/{NAME}", methods, targets(ctx, scfg),
                           ctx.cfg.train.seed, model, *match)


def targets(ctx, scfg: AugmentedConfig) -> dict[str, int]:
    """Each training user's target size (target_factor x their real count, or target_size)."""
    real = {pid: len(ctx.splits[pid].train) for pid in ctx.training_personas()}
    if scfg.target_factor > 0:
        return {pid: int(round(scfg.target_factor * n)) for pid, n in real.items()}
    return {pid: scfg.target_size for pid in real}


def check_sizes(ctx, scfg: AugmentedConfig) -> None:
    """A target below a user's real training dialogues is refused at plan time."""
    for pid, target in targets(ctx, scfg).items():
        n = len(ctx.splits[pid].train)
        if n > target:
            raise PersonalError(f"{WHERE}.target_size={target} is below the {n} real "
                                f"training dialogues of user {pid}; augmentation only adds")


#: New tokens a translation may take (a user turn is ~20 tokens; a pivot language longer).
TRANSLATION_TOKENS = 96


def chat_model(cfg, path: str):
    """(model, tokenizer) of a local chat-model folder, on the config's device and dtype."""
    from personal.models.base import load_hf

    return load_hf(cfg, Path(path))


def synthesis_generator(ctx, path: Optional[str] = None):
    """The run's base (or the chat model at `path`) answering examples in the run's prompt
    format (sampling is the generation config's)."""
    from personal.engine.generate import generate

    model, tokenizer = chat_model(ctx.cfg, path) if path else ctx.base
    fmt = ctx.prompt_format()
    return lambda examples: generate(model, tokenizer, examples, ctx.cfg.generation, fmt=fmt)


def translator(cfg, path: str):
    """translate(texts, language) -> texts through the chat model at `path`, greedy."""
    from personal.engine.generate import generate
    from personal.models.chat import render

    model, tokenizer = chat_model(cfg, path)
    gen = dataclasses.replace(cfg.generation, do_sample=False, max_new_tokens=TRANSLATION_TOKENS)

    def translate(texts: list[str], language: str) -> list[str]:
        prompts = [render(tokenizer, [{"role": "user", "content": f"Translate into {language}. "
                                       f"Answer with the translation only.\n\n{t}"}],
                          add_generation_prompt=True) for t in texts]
        return generate(model, tokenizer, prompts, gen) if prompts else []

    return translate


def augment(ctx, scfg: AugmentedConfig) -> dict:
    methods = method_list(scfg)
    tools = Tools(pivot=scfg.translation_pivot, context_match=scfg.context_match)
    if "synthesis" in methods:
        tools.generate = synthesis_generator(ctx, scfg.synthesis_model)
    if "back_translation" in methods:
        tools.translate = translator(ctx.cfg, scfg.translation_model)
    result = augment_users(ctx.dataset, ctx.splits, targets(ctx, scfg), methods,
                           seed=ctx.cfg.train.seed, history_messages=ctx.cfg.data.history_messages,
                           tools=tools)
    write_augmented(result, ctx.run.path / DATA, {"methods": methods,
                                                  "target_size": scfg.target_size,
                                                  "target_factor": scfg.target_factor,
                                                  "seed": ctx.cfg.train.seed})
    return {"totals": result.totals()}


def augmented_context(ctx):
    """The run's context over the augmented data (same run, base and users; its own data
    fingerprint, so a change of the augmentation retrains every adapter)."""
    folder = ctx.run.path / DATA
    ds = load_dataset(folder)
    splits = read_splits(folder / "splits.json", ds)
    fp = files_fingerprint(sorted(folder.glob("*.jsonl")) + [folder / "splits.json"])
    new = dataclasses.replace(ctx, dataset=ds, splits=splits, fingerprint=fp, _examples={})
    for cached in ("base", "base_key"):  # loaded once per run, not once per view of it
        if cached in ctx.__dict__:
            new.__dict__[cached] = ctx.__dict__[cached]
    return new


def weighted_groups(actx, real_ids: dict[str, set[int]], weight: int) -> dict[str, list]:
    """Each user's augmented training turns, those of their real sessions `weight` times."""
    groups = user_groups(actx, "train")
    return {pid: exs + [e for e in exs if e.session_id in real_ids[pid]] * (weight - 1)
            for pid, exs in groups.items()}


def spec(ctx, scfg: AugmentedConfig) -> FleetSpec:
    return FleetSpec(folder=FOLDER, init_from=unified.ADAPTER if scfg.init == "unified" else None,
                     train=fleet_schedule(ctx, scfg))


def stages(ctx, scfg: AugmentedConfig) -> list:
    check_sizes(ctx, scfg)
    data_unit = Unit(f"data/{NAME}", data_inputs(ctx, scfg), lambda: augment(ctx, scfg),
                     [DATA], needs_base="synthesis" in method_list(scfg)
                     and scfg.synthesis_model is None)
    fspec = spec(ctx, scfg)
    sessions = {p.persona_id: p.sessions for p in ctx.dataset.personas}
    real = {pid: {sessions[pid][i].session_id for i in ctx.splits[pid].train}
            for pid in ctx.training_personas()}

    def train() -> dict:
        actx = augmented_context(ctx)
        groups = weighted_groups(actx, real, scfg.real_weight)
        return fleet_summary(train_fleet(actx, groups, val_groups(actx, scfg.val_turns),
                                         spec=fspec))

    upstream = [unified.training_inputs(ctx)] if scfg.init == "unified" else []
    fleet = Unit(f"train/{NAME}", training_inputs(ctx, f"train/{NAME}", data_unit.inputs,
                                                  spec_dict(fspec), scfg.real_weight,
                                                  scfg.val_turns, upstream), train, [FOLDER])
    return unified.unified_stages(ctx) + [[data_unit], [fleet]]


def predictor(ctx, scfg: AugmentedConfig):
    return own_or_fallback_predictor(ctx, FOLDER, unified.ADAPTER)


def routes(ctx, scfg: AugmentedConfig) -> RouteTable:
    """Each trained user gets their adapter; everybody else the unified adapter."""
    fallback = Route.one(unified.ADAPTER)
    return RouteTable(NAME, own_or(ctx, FOLDER, fallback), fallback)


register_strategy(NAME, config=AugmentedConfig, stages=stages, predictor=predictor,
                  serving=servable(routes), plans=("phase2",), position=100,
                  expected_seconds={f"data/{NAME}": 30.0, f"train/{NAME}": 400.0},
                  cold_start="the unified adapter")
