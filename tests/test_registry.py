"""The strategy registry: a strategy says everything about itself at registration.

A strategy from outside the package (tests/toy_strategy.py) runs through a plan, training,
evaluation, the report and serving without any file under personal/ naming it; a duplicate
name or a missing piece is refused at registration, naming the strategy; a package adds a
strategy through the `personal.strategies` entry-point group; plans, the servable list, the
Ray forms and the ETA table are read from the registry.
"""
import dataclasses
import sys
import textwrap
from dataclasses import dataclass

import pytest

import toy_strategy
from personal.distributed.smoke import smoke_config
from personal.errors import PersonalError
from personal.experiment.context import Context
from personal.experiment.pipeline import execute_plan, plans
from personal.experiment.progress import expected_seconds
from personal.strategies import registry
from personal.strategies.registry import (STRATEGIES, all_strategies, get_strategy,
                                          not_servable, register_strategy, servable,
                                          servable_strategies)


@dataclass
class NoOptions:
    """No options."""


def nothing(ctx, scfg):
    return []


@pytest.fixture
def scratch():
    """Names registered by a test are removed afterwards."""
    before = set(STRATEGIES)
    yield
    for name in set(STRATEGIES) - before:
        del STRATEGIES[name]


def test_the_toy_strategy_runs_through_plan_train_eval_report_and_serve(tmp_path):
    from personal.distributed.runtime import config_payload
    from personal.distributed.serve import AdapterGenerator
    from personal.serving.routing import AssistRequest, ServeConfig, route_table

    assert plans()["toy"] == ["toy_lora"]
    cfg = smoke_config(tmp_path, users=3, sessions=6,
                       overrides=["train.max_steps=6", "generation.max_new_tokens=6"])
    ctx = Context.create(cfg, tmp_path / "run")
    report = execute_plan(ctx, plans()["toy"]).read_text(encoding="utf-8")
    assert "toy_lora" in report
    assert (tmp_path / "run" / toy_strategy.FOLDER / "adapter_model.safetensors").is_file()
    summary = ctx.run.read_json("metrics/toy_lora_summary.json")
    assert summary["examples"] == len(ctx.examples("test")) > 0
    table = route_table(ctx, "toy_lora")
    assert table.folders() == [toy_strategy.FOLDER] and "toy_lora" in servable_strategies()
    examples = ctx.examples("test")[:4]
    core = AdapterGenerator(config_payload(ctx.cfg), ctx.run.path, table.folders(),
                            ServeConfig())
    served = core.answer([AssistRequest(e.persona_id, e.meta, tuple(e.history))
                          for e in examples], [table.route(e.persona_id) for e in examples])
    offline = get_strategy("toy_lora").predictor(ctx, toy_strategy.ToyConfig())(examples)
    assert [r["text"] for r in served] == offline
    assert expected_seconds("train/toy_lora") == 5.0  # its own ETA entry


def test_a_duplicate_name_is_refused_naming_both_modules(scratch):
    with pytest.raises(PersonalError, match="'toy_lora' is registered twice"):
        register_strategy("toy_lora", config=NoOptions, stages=nothing, predictor=nothing,
                          serving=not_servable("a test"))


@pytest.mark.parametrize("change,message", [
    ({"config": dict}, "config must be a dataclass"),
    ({"stages": None}, "stages must be a function"),
    ({"predictor": "predict"}, "predictor must be a function"),
    ({"serving": None}, "serving must be servable"),
    ({"plans": "phase1"}, "plans must be a tuple"),
    ({"ray_forms": {"train/x": "no_colon"}}, "must be 'module:function'"),
])
def test_a_missing_or_malformed_piece_is_refused_naming_the_strategy(scratch, change, message):
    pieces = {"config": NoOptions, "stages": nothing, "predictor": nothing,
              "serving": servable(lambda ctx, scfg: None), **change}
    with pytest.raises(PersonalError, match=message) as err:
        register_strategy("half_done", **pieces)
    assert "'half_done'" in str(err.value)
    assert "half_done" not in STRATEGIES


def test_serving_needs_a_form_or_a_reason(scratch):
    with pytest.raises(PersonalError, match="reason"):
        not_servable("  ")
    with pytest.raises(TypeError):
        register_strategy("no_serving", config=NoOptions, stages=nothing, predictor=nothing)


def installed_package(folder, name: str, entry: str) -> None:
    """What pip leaves for a package `name` whose entry point `entry` is in the group."""
    dist = folder / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
                                   encoding="utf-8")
    (dist / "entry_points.txt").write_text(f"[personal.strategies]\n{entry}\n",
                                           encoding="utf-8")


def test_a_package_registers_through_the_entry_point_group(scratch, tmp_path, monkeypatch):
    (tmp_path / "outside_strategy.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass
        from personal.strategies.registry import register_strategy, not_servable

        @dataclass
        class Options:
            """None."""

        register_strategy("outside", config=Options, stages=lambda ctx, s: [],
                          predictor=lambda ctx, s: (lambda exs: ["" for _ in exs]),
                          serving=not_servable("it answers nothing"), plans=("outside_plan",))
    '''), encoding="utf-8")
    installed_package(tmp_path, "outside_pkg", "outside = outside_strategy")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry._load_entry_points()
    assert get_strategy("outside").plans == ("outside_plan",)
    assert plans()["outside_plan"] == ["outside"]
    sys.modules.pop("outside_strategy", None)


def test_a_broken_entry_point_is_named(scratch, tmp_path, monkeypatch):
    installed_package(tmp_path, "broken_pkg", "broken = no_such_module_here")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PersonalError, match="entry point broken = no_such_module_here"):
        registry._load_entry_points()


def test_plans_servable_list_ray_forms_and_eta_come_from_the_registry():
    from personal.distributed.executor import ray_units

    builtin = [s.name for s in all_strategies() if s.module.startswith("personal.")]
    assert plans()["full"] == builtin  # every built-in strategy, in its declared order
    for phase in ("phase1", "phase2"):  # each phase holds its reference and its floor
        assert plans()[phase][:2] == ["base", "unified_lora"]
        assert plans()[phase] == [n for n in builtin if phase in get_strategy(n).plans]
    assert "constrained_lora" in plans()["phase2"] and "cluster_lora" not in plans()["phase2"]
    assert plans()["baseline"] == ["base", "unified_lora"]
    assert set(servable_strategies()) == {s.name for s in all_strategies()
                                          if s.serving.servable}
    assert "retrieval" in servable_strategies() and "moe_lora" in servable_strategies()
    assert "toy_unserved" not in servable_strategies()
    assert get_strategy("toy_unserved").serving.reason == toy_strategy.UNSERVED_REASON
    assert set(ray_units()) == {"train/unified_lora"}
    assert expected_seconds("train/per_user_lora") == get_strategy(
        "per_user_lora").expected_seconds["train/per_user_lora"]


def test_an_option_error_names_the_strategy_section():
    spec = get_strategy("per_user_lora")
    with pytest.raises(PersonalError, match="strategy.per_user_lora.epochz"):
        registry.strategy_config(spec, {"epochz": 3})
    assert dataclasses.is_dataclass(registry.strategy_config(spec, {}))
