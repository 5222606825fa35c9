"""The shared strategy matrix: every registered strategy, on 3 tiny users for a few steps.

For each one: training changed something (every adapter it wrote moves the base model's
logits), save -> load -> predict is identical (a fresh context reads the run from disk), the
same seed gives the same adapters and the same predictions, and serving: a servable
strategy's served answers (its registered route table through the Serve app's generator
core) equal its offline predictions; any other is refused with its registered reason. A new
strategy is picked up by registering it (`toy_strategy`, a module outside the package, is
one); `OPTIONS` holds the few settings a 3-user world needs."""
import copy
import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from personal.distributed.smoke import smoke_config
from personal.experiment.context import Context
from personal.experiment.pipeline import train_strategy
from personal.strategies.registry import all_strategies, get_strategy, strategy_config

import toy_strategy  # noqa: F401,E402  (a strategy registered from outside the package)

NAMES = sorted(s.name for s in all_strategies())
#: Settings a 3-user, few-step world needs (cluster counts below the number of users, ...).
#: The random smoke base answers "" everywhere, so strategies whose own schedules count few
#: epochs get enough steps here to say something (else the comparisons compare nothing).
LONGER = {"epochs": 15}
OPTIONS: dict[str, dict] = {"per_user_lora": {**LONGER, "lr": 5e-2},
                            "hybrid_lora": {**LONGER, "lr": 5e-2},
                            "constrained_lora": {**LONGER, "lr": 5e-2},
                            "unified_prefix": {**LONGER, "lr": 0.1},
                            "augmented_lora": {**LONGER, "lr": 5e-2, "target_size": 6},
                            "multitask_lora": {},
                            "meta_lora": {"support_size": 2, "meta_steps": 3, "users_per_step": 2,
                                          "inner_steps": 3, "inner_lr": 0.5},
                            "prefix_per_user": {**LONGER, "lr": 0.1}, "retrieval_trained": LONGER,
                            "moe_lora": {"label_turns": 4, "diagnostic_turns": 6}}
#: A soft prompt alone does not move the random smoke base off its stop token in a few
#: steps; its reload is still checked through the weights (equal bytes) and its logits.
SILENT = {"prefix_per_user"}


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    base = smoke_config(tmp_path_factory.mktemp("matrix"), users=3, sessions=6,
                        overrides=["train.epochs=20", "train.max_steps=20", "train.eval_every=4",
                                   "train.lr=5e-2", "train.batch_size=2", "train.patience=0",
                                   "generation.max_new_tokens=6"])
    return dataclasses.replace(base, strategy=copy.deepcopy(OPTIONS))


def trained(cfg, path, name):
    ctx = Context.create(cfg, path)
    train_strategy(ctx, name)
    return ctx


@pytest.fixture(scope="module")
def once(cfg, tmp_path_factory):
    """name -> a context whose run trained that strategy (trained on first use, then shared
    by the tests that only read it)."""
    runs = {}

    def get(name):
        if name not in runs:
            runs[name] = trained(cfg, tmp_path_factory.mktemp(name), name)
        return runs[name]

    return get


def adapter_folders(run):
    return sorted(p.parent for p in run.rglob("adapters/**/adapter_model.safetensors"))


def some_examples(ctx, n=6):
    return ctx.examples("test")[:n]


def predict(ctx, name, examples):
    spec = get_strategy(name)
    return spec.predictor(ctx, strategy_config(spec, ctx.cfg.strategy.get(name)))(examples)


@torch.no_grad()
def logits_of(model, ctx, example):
    from personal.engine import adapter_rows

    ids = ctx.prompt_format().prompt_ids(ctx.base[1], example, 8)
    x = torch.tensor([ids])
    rows = torch.tensor([0]) if hasattr(model, "_stacked_lora_spec") else None
    if rows is None:
        return model(input_ids=x).logits[0, -1]
    from personal.engine import build_inputs

    with adapter_rows(model, rows):
        return model(**build_inputs(model, x, torch.ones_like(x))).logits[0, -1]


@pytest.mark.parametrize("name", NAMES)
def test_training_changes_the_model(cfg, once, name):
    from personal.engine import inject_from_peft

    spec = get_strategy(name)
    ctx = once(name)
    stages = spec.stages(ctx, strategy_config(spec, cfg.strategy.get(name)))
    folders = adapter_folders(ctx.run.path)
    if not any(stages):
        assert folders == [], f"{name} declares no training but wrote adapters"
        return
    assert folders, f"{name} trained but wrote no adapter"
    example = some_examples(ctx, 1)[0]
    plain = logits_of(ctx.base[0], ctx, example)
    for folder in folders:
        model = inject_from_peft(copy.deepcopy(ctx.base[0]), [folder]).eval()
        moved = (logits_of(model, ctx, example) - plain).abs().max()
        assert moved > 1e-4, f"{folder} does not change the base model's output"


@pytest.mark.parametrize("name", NAMES)
def test_save_load_predict_is_identical_and_seeded(cfg, once, tmp_path, name):
    first = once(name)
    examples = some_examples(first)
    before = predict(first, name, examples)
    assert len(before) == len(examples) and all(isinstance(t, str) for t in before)
    spec = get_strategy(name)
    if name not in SILENT and any(spec.stages(first, strategy_config(spec, cfg.strategy.get(name)))):
        # the random smoke base answers "" everywhere; a trained strategy must not, or the
        # comparisons below would compare nothing
        assert any(before), f"{name} generates only empty texts"
    reloaded = Context.create(cfg, first.run.path)  # nothing in memory: read from disk
    assert predict(reloaded, name, examples) == before

    again = trained(cfg, tmp_path / "b", name)  # same config, same seed, fresh run
    a, b = adapter_folders(first.run.path), adapter_folders(again.run.path)
    assert [f.relative_to(first.run.path) for f in a] == [f.relative_to(again.run.path) for f in b]
    for fa, fb in zip(a, b):
        wa = load_file(str(fa / "adapter_model.safetensors"))
        wb = load_file(str(fb / "adapter_model.safetensors"))
        assert all(torch.equal(wa[k], wb[k]) for k in wa), fa
    assert predict(again, name, examples) == before


@pytest.mark.parametrize("name", NAMES)
def test_served_answers_equal_offline_predictions_or_serving_is_refused(once, name):
    from personal.distributed.runtime import config_payload
    from personal.distributed.serve import AdapterGenerator
    from personal.errors import PersonalError
    from personal.serving.routing import (AssistRequest, ServeConfig, decide, request_router,
                                          route_table)

    spec, ctx = get_strategy(name), once(name)
    if not spec.serving.servable:
        with pytest.raises(PersonalError, match="cannot be served") as err:
            route_table(ctx, name)
        assert spec.serving.reason in str(err.value)
        return
    examples = ctx.examples("test")
    table = route_table(ctx, name)
    core = AdapterGenerator(config_payload(ctx.cfg), ctx.run.path, table.folders(),
                            ServeConfig(max_loaded_adapters=2))
    requests = [AssistRequest(e.persona_id, e.meta, tuple(e.history)) for e in examples]
    # the request router (moe_lora's, retrieval's) decides each request as the app's
    # RequestRouter deployment does; other strategies route by their table
    decisions = decide(table, request_router(ctx, name), requests)
    served = core.answer(requests, [d.route for d in decisions], [d.context for d in decisions])
    assert [r["text"] for r in served] == predict(ctx, name, examples)


def test_routed_generation_equals_peft_generation_of_the_same_adapter(cfg, tmp_path):
    """A fleet's mixed-batch predictor answers exactly as peft does with that one adapter."""
    from personal.strategies.common import routed_predictor
    from personal.strategies.unified import ADAPTER

    ctx = trained(cfg, tmp_path / "run", "unified_lora")
    examples = ctx.examples("test")
    peft_texts = predict(ctx, "unified_lora", examples)
    routed = routed_predictor(ctx, [ctx.run.path / ADAPTER, ctx.run.path / ADAPTER],
                              lambda e: hash(e.session_id) % 2)  # either slot, mixed batches
    assert routed(examples) == peft_texts
    base_texts = routed_predictor(ctx, [ctx.run.path / ADAPTER], lambda e: -1)(examples)
    assert base_texts == predict(ctx, "base", examples)
    assert base_texts != peft_texts  # the adapter matters, so the equality above says something
