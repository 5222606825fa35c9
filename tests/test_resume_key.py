"""One resume key: every config field a trained adapter depends on re-runs every training unit
of every registered strategy, and a field no training reads re-runs none.

A unit is skipped on resume exactly when its recorded input hash equals the one it would have
now (`Run.unit_done`), so comparing the hashes is comparing what resumes; the last test runs
a plan twice to show a changed field really re-runs the unit and an unrelated one does not.
"""
import dataclasses

import pytest

import toy_strategy  # noqa: F401  (an outside strategy is covered too)
from personal.config import LoraConfig, TrainConfig
from personal.distributed.smoke import smoke_config
from personal.experiment.context import Context
from personal.experiment.pipeline import execute_plan
from personal.experiment.units import eval_inputs, strategy_units
from personal.strategies.registry import all_strategies


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    cfg = smoke_config(root, users=3, sessions=6, overrides=["train.max_steps=4"])
    # a 3-user world has 4 training dialogues per user: meta_lora's default support set of 5
    # is refused there (as it should be), so it gets one that fits
    cfg = dataclasses.replace(cfg, strategy={"meta_lora": {"support_size": 2}})
    return cfg, root


def training_units(ctx) -> dict[str, str]:
    """unit name -> input hash of every unit that trains an adapter, over all strategies."""
    out = {}
    for spec in all_strategies():
        for stage in strategy_units(ctx, spec.name):
            for unit in stage:
                if unit.name.startswith("train/"):
                    out[unit.name] = unit.inputs
    return out


def changed(value):
    """Another valid value of a config field's type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 0.5 if value else 0.01
    if isinstance(value, list):
        return value[:-1]
    raise TypeError(f"no change rule for {value!r}")


#: What an adapter's weights depend on, written out here independently of TRAINING_FIELDS:
#: every LoRA and schedule field, and the three that shape the training text.
DEPENDS = [("lora", f.name) for f in dataclasses.fields(LoraConfig)] + \
    [("train", f.name) for f in dataclasses.fields(TrainConfig)] + \
    [("data", "history_messages"), ("model", "include_character"), ("model", "max_seq_len")]


def with_field(cfg, section: str, name: str, value):
    sub = dataclasses.replace(getattr(cfg, section), **{name: value})
    return dataclasses.replace(cfg, **{section: sub})


def test_every_training_field_reruns_every_training_unit(world, tmp_path):
    cfg, _ = world
    before = training_units(Context.create(cfg, tmp_path / "run"))
    assert {"train/unified_lora", "train/per_user_lora", "train/cluster_lora",
            "train/toy_lora"} <= set(before)
    for section, name in DEPENDS:
        value = changed(getattr(getattr(cfg, section), name))
        after = training_units(Context.create(with_field(cfg, section, name, value),
                                              tmp_path / "run"))
        same = sorted(u for u in before if after[u] == before[u])
        assert not same, f"{section}.{name}={value!r} leaves {same} as they were"


@pytest.mark.parametrize("section,name,value", [("eval", "bootstrap", 17),
                                                ("eval", "alpha", 0.01),
                                                ("eval", "min_user_score", 0.5),
                                                ("generation", "batch_size", 3)])
def test_a_field_no_training_reads_reruns_none(world, tmp_path, section, name, value):
    cfg, _ = world
    ctx = Context.create(cfg, tmp_path / "run")
    other = Context.create(with_field(cfg, section, name, value), tmp_path / "run")
    assert training_units(other) == training_units(ctx)
    if section == "eval":  # what only the report reads re-runs no evaluation either
        assert eval_inputs(other, "trained") == eval_inputs(ctx, "trained")


def test_a_changed_field_reruns_the_unit_and_an_unrelated_one_does_not(world, tmp_path):
    cfg, _ = world
    run = tmp_path / "run"
    record = run / "units" / "train__unified_lora.json"
    execute_plan(Context.create(cfg, run), ["unified_lora"])
    first = record.read_text(encoding="utf-8")
    execute_plan(Context.create(with_field(cfg, "eval", "bootstrap", 17), run), ["unified_lora"])
    assert record.read_text(encoding="utf-8") == first  # skipped: not re-run
    execute_plan(Context.create(with_field(cfg, "data", "history_messages", 4), run),
                 ["unified_lora"])
    assert record.read_text(encoding="utf-8") != first  # re-run with the new inputs
