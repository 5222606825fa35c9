"""meta_lora: the batched inner loop equals a plain SGD loop run by hand on one adapter; with
one inner step Reptile's update is the joint SGD step on the users' batches (the known
collapse to unified-style training) and with two it is not; a user's test-time adaptation
is that inner loop; bad options and a support set larger than a user's dialogues are
refused naming the option."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from personal.distributed.smoke import smoke_config
from personal.engine import adapter_rows, import_peft
from personal.engine.sampler import adapter_batches
from personal.engine.stacked_lora import adapter_state, stacked_parameters
from personal.errors import PersonalError
from personal.experiment.context import Context
from personal.experiment.pipeline import train_strategy
from personal.strategies import meta, unified
from personal.strategies.common import user_groups
from personal.strategies.registry import get_strategy, strategy_config

EPS32 = torch.finfo(torch.float32).eps
OPTIONS = {"support_size": 2, "meta_steps": 2, "users_per_step": 2, "inner_steps": 3,
           "inner_lr": 0.5, "batch_size": 2, "curve_points": [0, 2, -1], "curve_turns": 3}


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    root = tmp_path_factory.mktemp("meta")
    cfg = smoke_config(root, users=3, sessions=6,
                       overrides=["train.epochs=20", "train.max_steps=20", "train.lr=5e-2",
                                  "train.batch_size=2", "train.patience=0"])
    ctx = Context.create(dataclasses.replace(cfg, strategy={meta.NAME: OPTIONS}), root / "run")
    train_strategy(ctx, meta.NAME)
    return ctx


def unified_state(ctx):
    return {k: v.float() for k, v in
            import_peft([ctx.run.path / unified.ADAPTER]).adapter(0).items()}


def datasets(ctx, n=2):
    groups = user_groups(ctx, "train")
    return [meta.encode(ctx, meta.support_of(groups[u], 2)) for u in sorted(groups)[:n]]


def by_hand(ctx, state, data, steps, lr, seed):
    """One adapter, its loss written out: token-mean cross-entropy of its batch, SGD."""
    model = meta.stack_model(ctx, 1, state).train()
    params = list(stacked_parameters(model).values())
    for batch_ids in adapter_batches(len(data), 2, float(steps), steps, seed):
        losses, count = [], 0
        for i in batch_ids:
            ids = torch.tensor([data[i]["input_ids"]])
            labels = torch.tensor(data[i]["labels"])[1:]
            with adapter_rows(model, torch.tensor([0])):
                logits = model(input_ids=ids).logits[0, :-1]
            keep = labels != -100
            losses.append(F.cross_entropy(logits[keep], labels[keep], reduction="sum"))
            count += int(keep.sum())
        (sum(losses) / count).backward()
        with torch.no_grad():
            for p in params:
                p -= lr * p.grad
                p.grad = None
    return adapter_state(model, 0)


def close(a, b, scale):
    """Equal up to `scale` relative to each tensor's size: the batched loop pads and packs
    rows, so its sums run in another order (fp32, a few hundred ulps over a few steps)."""
    return all((a[k] - b[k]).abs().max() <= scale * (1 + float(b[k].abs().max())) for k in b)


def test_the_batched_inner_loop_is_sgd_by_hand(ctx):
    state, data = unified_state(ctx), datasets(ctx)
    model = meta.inner_loop(ctx, state, data, 3, 0.5, 2, seeds=[7, 8])
    for j, seed in enumerate([7, 8]):
        # padding and batching change float summation order only
        assert close(adapter_state(model, j), by_hand(ctx, state, data[j], 3, 0.5, seed),
                     2e-5)


def test_one_step_reptile_is_the_joint_sgd_step_and_two_steps_are_not(ctx):
    state, data = unified_state(ctx), datasets(ctx)
    scfg = meta.MetaConfig(outer_lr=0.5, inner_lr=0.1)
    one = meta.meta_update(state, meta.inner_loop(ctx, state, data, 1, 0.1, 2, [1, 2]), scfg)
    # joint training: one SGD step on the mean of the users' token-mean losses
    joint = {k: v.clone() for k, v in state.items()}
    steps = [by_hand(ctx, state, d, 1, 0.1, s) for d, s in zip(data, [1, 2])]
    for k in joint:  # by_hand's step is -lr * g_u; the joint step is -lr * mean(g_u)
        joint[k] = state[k] + scfg.outer_lr * sum(s[k] - state[k] for s in steps) / len(steps)
    assert close(one, joint, 2e-5)
    two = meta.meta_update(state, meta.inner_loop(ctx, state, data, 2, 0.1, 2, [1, 2]), scfg)
    twice_joint = {k: state[k] + 2 * (joint[k] - state[k]) for k in state}
    assert not close(two, twice_joint, 2e-5)  # k > 1 is not joint training


def test_each_user_is_adapted_by_the_inner_loop_from_the_learned_init(ctx):
    init = {k: v.float() for k, v in import_peft([ctx.run.path / meta.INIT]).adapter(0).items()}
    assert not close(init, unified_state(ctx), 1e-6)  # the meta-steps moved it
    groups = user_groups(ctx, "train")
    names = sorted(groups)
    for k, u in enumerate(names):
        data = meta.encode(ctx, meta.support_of(groups[u], 2))
        want = by_hand(ctx, init, data, 3, 0.5, ctx.cfg.train.seed + k)
        got = import_peft([ctx.run.path / meta.FOLDER / u]).adapter(0)
        assert close(got, want, 2e-5), u


def test_a_support_set_larger_than_a_users_dialogues_is_refused(ctx):
    scfg = meta.MetaConfig(support_size=50)
    with pytest.raises(PersonalError, match="strategy.meta_lora.support_size=50 needs 50"):
        meta.stages(ctx, scfg)


@pytest.mark.parametrize("option,value,message", [
    ("algorithm", "maml2", "must be reptile or fomaml"), ("inner_steps", 0, ">= 1"),
    ("support_size", 0, ">= 1"), ("inner_lr", -1.0, "must be > 0")])
def test_bad_options_are_refused_naming_the_option(option, value, message):
    with pytest.raises(PersonalError, match=f"strategy.meta_lora.{option}") as err:
        strategy_config(get_strategy(meta.NAME), {option: value})
    assert message in str(err.value)


def test_fomaml_trains(ctx, tmp_path):
    cfg = dataclasses.replace(ctx.cfg, strategy={meta.NAME: {**OPTIONS, "algorithm": "fomaml"}})
    other = Context.create(cfg, tmp_path / "fomaml")
    train_strategy(other, meta.NAME)
    init = import_peft([other.run.path / meta.INIT]).adapter(0)
    assert not close({k: v.float() for k, v in init.items()}, unified_state(other), 1e-6)


def test_the_adaptation_curve_is_meta_lora_and_unified_at_their_points(ctx):
    """Point 0 of the meta start scores the initialisation, point 0 of the hybrid start the
    unified adapter, and the point at support_size (2) meta_lora's own adapted users: the
    curve measures the strategy, not a look-alike."""
    from personal.eval.metrics import Pair, emb_sim
    from personal.models.lora import spread_sample
    from personal.strategies.common import routed_predictor

    record = ctx.run.read_json(meta.CURVE)
    assert record["points"] == [0, 2, -1] and record["cold_start"]["users"] == 0
    users = sorted(user_groups(ctx, "train"))
    assert record["training"]["users"] == len(users)
    turns = [e for u in users for e in spread_sample(ctx.examples("test", [u]), 3)]

    def score(texts):
        return sum(emb_sim([Pair(t, e.target) for t, e in zip(texts, turns)])) / len(turns)

    adapted = get_strategy(meta.NAME).predictor(ctx, meta.MetaConfig(**OPTIONS))(turns)
    init = routed_predictor(ctx, [ctx.run.path / meta.INIT], lambda e: 0)(turns)
    plain = routed_predictor(ctx, [ctx.run.path / unified.ADAPTER], lambda e: 0)(turns)
    tol = 1e-6  # emb_sim of the same texts, averaged in another order
    assert abs(record["training"]["meta"][1] - score(adapted)) < tol
    assert abs(record["training"]["meta"][0] - score(init)) < tol
    assert abs(record["training"]["hybrid"][0] - score(plain)) < tol
    rows = record["rows"]
    assert rows[0]["check"] == "adaptation curve (training users)" and "all:" in rows[0]["value"]
