"""The one resume key of a training unit: the hash of everything its result depends on.

    inputs = training_inputs(ctx, "train/per_user_lora", example_keys, spec_dict(spec))

A unit is skipped on resume when its record holds the same hash (`Run.unit_done`), so every
config field an adapter's weights depend on must be in it, and no other: `TRAINING_FIELDS`
lists them once for every training unit, and a unit adds what is its own (its options, the
examples it trains on, the hashes of the units it starts from).
"""
from __future__ import annotations

from typing import Any

from personal.config import to_dict
from personal.hashing import stable_hash

#: Config fields every trained adapter depends on: the LoRA shape, the run's schedule, and
#: the prompt format its training text is rendered with. (section, field); field None: the
#: whole section.
TRAINING_FIELDS: tuple[tuple[str, Any], ...] = (
    ("lora", None), ("train", None), ("data", "history_messages"),
    ("model", "include_character"), ("model", "max_seq_len"))


def training_config(cfg) -> list:
    """The values of `TRAINING_FIELDS` in `cfg`, in that order."""
    d = to_dict(cfg)
    return [d[section] if name is None else d[section][name] for section, name in TRAINING_FIELDS]


def training_inputs(ctx, name: str, *parts: Any) -> str:
    """Input hash of training unit `name`: the data fingerprint, the base model, the
    training config (`TRAINING_FIELDS`) and the unit's own JSON-able `parts`."""
    return stable_hash(name, ctx.fingerprint, ctx.base_key, training_config(ctx.cfg), *parts)
