"""Adapter fleets: one engine call per shard, adapters independent of the sharding, finished
adapters never retrained, and a fleet worker killed mid-training on Ray is restarted with every
adapter present and equal to a run without the kill."""

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from personal.distributed.fleet import per_user_groups, train_fleet, train_shard
from personal.distributed.smoke import smoke_config
from personal.experiment.context import Context
from personal.models.core import PARITY_RTOL, lora_products, relative_difference

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return smoke_config(tmp_path_factory.mktemp("world"), users=4, sessions=6,
                        overrides=["train.epochs=2", "train.max_steps=4", "train.eval_every=2",
                                   "train.batch_size=2"])


def weights(run, name):
    return load_file(str(run / "adapters" / name / "adapter_model.safetensors"))


def same(a, b):
    """The same training up to float summation order (padding widths differ between one
    engine call for all adapters and one per adapter): the adapters' weight changes B @ A
    (zero at the start, so the comparison is relative to the trained update) agree within
    the training core's derived PARITY_RTOL; an elementwise atol does not hold, since Adam
    gives elements whose gradient is at the rounding level an O(lr) step either way."""
    return a.keys() == b.keys() and relative_difference(lora_products(a), lora_products(b)) <= PARITY_RTOL


def fleet_of(ctx):
    return per_user_groups(ctx), per_user_groups(ctx, split="val")


def test_adapters_do_not_depend_on_sharding_and_load_in_peft(cfg, tmp_path):
    one = Context.create(cfg, tmp_path / "one_call")
    groups, vals = fleet_of(one)
    assert len(groups) == 4
    records = train_fleet(one, groups, vals, use_ray=False)
    assert set(records) == set(groups)
    for name, rec in records.items():
        assert rec["steps"] == 4 and rec["best_val_loss"] is not None
    split = Context.create(cfg, tmp_path / "sharded")
    for rank in range(2):  # two workers, one adapter per engine call
        train_shard(split, groups, vals, rank=rank, world=2, adapters_per_call=1)
    for name in groups:
        assert same(weights(one.run.path, name), weights(split.run.path, name))
    model = PeftModel.from_pretrained(one.base[0], str(one.run.path / "adapters" / sorted(groups)[0]))
    assert any("lora_B" in k and float(v.abs().sum()) > 0 for k, v in model.named_parameters())


def test_finished_adapters_are_skipped(cfg, tmp_path):
    ctx = Context.create(cfg, tmp_path / "run")
    groups, vals = fleet_of(ctx)
    first = train_shard(ctx, groups, vals)
    assert set(first) == set(groups)
    assert train_shard(ctx, groups, vals) == {}  # all recorded with the same inputs
    changed = {**groups, sorted(groups)[0]: groups[sorted(groups)[0]][:-1]}
    assert set(train_shard(ctx, changed, vals)) == {sorted(groups)[0]}


@pytest.mark.parametrize("active, workers, address, expected", [
    (False, 2, None, False),           # no Ray runtime up: always here
    (True, 1, None, False),            # one local worker: Ray Train start-up for nothing
    (True, 2, None, True),             # two local workers train shards in parallel
    (True, 1, "ray://head:10001", True),   # a cluster: its workers, not the driver
])
def test_fleets_go_to_ray_train_only_where_it_buys_parallelism(cfg, monkeypatch, active,
                                                                workers, address, expected):
    import dataclasses

    from personal.distributed import fleet, runtime

    monkeypatch.setattr(runtime, "ray_active", lambda: active)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    c = dataclasses.replace(cfg, ray=dataclasses.replace(cfg.ray, address=address))
    assert fleet.ray_buys_parallelism(c, workers) is expected


@pytest.mark.slow
def test_killed_fleet_worker_is_restarted_and_nothing_is_lost(cfg, tmp_path, ray_local):
    import dataclasses

    two = dataclasses.replace(cfg, ray=dataclasses.replace(cfg.ray, num_workers=2))
    ctx = Context.create(two, tmp_path / "ray_run")
    groups, vals = fleet_of(ctx)
    flag = tmp_path / "killed.flag"
    train_fleet(ctx, groups, vals, adapters_per_call=1, max_failures=2,
                fault={"rank": 0, "kill_after": 1, "flag": str(flag)})
    assert flag.is_file()  # the worker really died once
    killed_at = flag.stat().st_mtime
    first = sorted(groups)[0]  # rank 0's first adapter, finished before the kill
    record = ctx.run.path / "units" / f"train__adapters__{first}.json"
    assert record.stat().st_mtime <= killed_at  # not retrained after the restart

    ref = Context.create(cfg, tmp_path / "no_kill")
    train_fleet(ref, groups, vals, use_ray=False)
    for name in groups:
        assert same(weights(ctx.run.path, name), weights(ref.run.path, name)), name
