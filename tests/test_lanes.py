"""The plan as a graph of units run by concurrent lanes: which unit waits for which, which
one a free lane takes first, embeddings shared between lanes, and a plan run in two lanes
computing exactly what it computes in one."""
import json
import re
import shutil
import tempfile
from datetime import datetime

import numpy as np
import pytest
import torch

from personal.config import load_config
from personal.distributed import lanes
from personal.distributed.lanes import Node, critical_paths, plan_graph, ready_units
from personal.errors import PersonalError
from personal.experiment.context import Context
from personal.experiment.pipeline import plans, strategy_units


@pytest.fixture(scope="module")
def phase1_graph(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lanes")
    cfg = load_config(None, [
        f"data.path={root}/eval", f"data.background_path={root}/bg", "data.simulate=true",
        "data.users=3",
        "data.sessions=6", "data.background_users=4", f"model.cache_dir={root}/cache"])
    ctx = Context.create(cfg, root / "run")
    return ctx, plan_graph(ctx, plans()["phase1"], strategy_units)


def test_phase1_graph_orders_what_must_wait_and_frees_the_rest(phase1_graph):
    ctx, graph = phase1_graph
    g = {name: node.needs for name, node in graph.items()}
    base, unified = "base/prepare", "train/unified_lora"
    # MiniLM work on the data alone may run while the base pretrains
    assert g["eval/noise_ceiling"] == set() and g[base] == set()
    assert g["retrieval/index"] == set() and g["assign/cluster_lora"] == set()
    # stages in order, shared units once
    assert g[unified] == {base}
    assert g["train/hybrid_lora"] == {base, unified}
    assert g["train/cluster_lora"] == {base, unified, "assign/cluster_lora"}
    assert g["train/prefix_per_user"] == {base}
    # both retrieval variants write the same index file: one after the other
    assert "retrieval/index" in g["retrieval_trained/index"]
    # an evaluation waits for its units, and for the strategies it routes to
    assert g["eval/base"] == {base}
    assert g["eval/hybrid_lora"] == {base, unified, "train/hybrid_lora", "eval/unified_lora"}
    assert {"selective/decide", "eval/unified_lora", "eval/hybrid_lora"} <= g["eval/selective"]
    assert "eval/per_user_lora" not in g["eval/selective"]
    # every unit of every strategy once, the evaluations, base and noise ceiling: no more
    units = {u.name for s in plans()["phase1"] for st in strategy_units(ctx, s) for u in st}
    assert set(graph) == {base, "eval/noise_ceiling"} | units | {
        f"eval/{s}" for s in plans()["phase1"]}
    assert graph[unified].strategy == "unified_lora" and graph["eval/selective"].kind == "eval"


def test_a_cycle_is_refused_with_its_path():
    graph = {"a": Node("a", "unit", "s", {"b"}), "b": Node("b", "unit", "s", {"a"})}
    with pytest.raises(PersonalError, match="cycle: a -> b -> a"):
        lanes._check_acyclic(graph)


def test_a_free_lane_takes_the_unit_with_the_longest_path_to_the_end():
    # a (10 s) -> c (1 s);  b (1 s) -> d (100 s): b first although a comes first in the plan
    graph = {"a": Node("a", "unit", "s"), "b": Node("b", "unit", "s"),
             "c": Node("c", "unit", "s", {"a"}), "d": Node("d", "unit", "s", {"b"})}
    seconds = {"a": 10.0, "b": 1.0, "c": 1.0, "d": 100.0}
    paths = critical_paths(graph, seconds.__getitem__)
    assert paths == {"a": 11.0, "b": 101.0, "c": 1.0, "d": 100.0}
    assert ready_units(graph, set(), set(), paths) == ["b", "a"]
    assert ready_units(graph, {"b"}, {"a", "b"}, paths) == ["d"]
    assert ready_units(graph, {"a", "b"}, {"a", "b", "d"}, paths) == ["c"]


def test_lanes_share_embeddings_through_shards(tmp_path, monkeypatch):
    """What one process embedded, another takes from the shard instead of encoding again."""
    from personal.data import embed as E

    encoded = []

    class Fake:
        def encode(self, texts, **kw):
            encoded.append(list(texts))
            return np.stack([np.full(384, len(t), dtype=np.float32) for t in texts])

    monkeypatch.setattr(E, "embedding_model", lambda: Fake())
    monkeypatch.setattr(E, "_CACHE", {})
    E.share_embeddings(tmp_path)
    try:
        first = E.embed(["héllo", "a\nb"])
        E._CACHE.clear()                      # another process: nothing in memory
        E.share_embeddings(tmp_path)
        second = E.embed(["a\nb", "new"])
    finally:
        E.share_embeddings(None)
    assert encoded == [["héllo", "a\nb"], ["new"]]
    assert np.array_equal(second[0], first[1]) and second[1][0] == 3.0
    assert len(list(tmp_path.glob("*.npz"))) == 2 and not list(tmp_path.glob(".*tmp"))


def test_a_lane_never_pretrains_a_base_outside_base_prepare(tmp_path):
    cfg = load_config(None, [
        f"data.path={tmp_path}/eval", f"data.background_path={tmp_path}/bg", "data.simulate=true",
        "data.users=3",
        "data.sessions=6", "data.background_users=4", f"model.cache_dir={tmp_path}/cache"])
    ctx = Context.create(cfg, tmp_path / "run")
    ctx.pretrain = False
    with pytest.raises(PersonalError, match="not pretrained yet"):
        lanes.run_node(ctx, "train/unified_lora", "unit", "unified_lora", strategy_units)


LOG_LINE = re.compile(r"^(\S+ \S+) INFO (start|done) (\S+)")


def unit_intervals(run):
    """(start, end) of every unit that ran, from the run's log (lanes write to it too)."""
    times: dict[str, list] = {}
    for line in (run / "logs" / "run.log").read_text().splitlines():
        m = LOG_LINE.match(line)
        if m:
            t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
            times.setdefault(m.group(3), []).append((m.group(2), t))
    return times


@pytest.mark.timeout(600)
def test_two_lanes_compute_what_one_computes_and_overlap(tmp_path, monkeypatch):
    from personal.distributed.executor import run_experiment
    from personal.distributed.smoke import smoke_config

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("PERSONAL_QUIET", "1")
    cfg = smoke_config(tmp_path / "world", users=3, sessions=6)
    plan = ["base", "unified_lora", "prefix_per_user", "retrieval"]
    run_experiment(cfg, tmp_path / "lanes1", plan, use_ray=False)   # one after another
    temp = tempfile.mkdtemp(prefix="pray")  # short: Ray's socket paths are limited
    try:
        run_experiment(cfg, tmp_path / "lanes2", plan, num_cpus=2, temp_dir=temp)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    out = {n: {s: [json.loads(x)["prediction"] for x in
                   (tmp_path / f"lanes{n}" / "predictions" / f"{s}.jsonl").open()] for s in plan}
           for n in (1, 2)}
    assert cfg.ray.lanes == 2 and out[2] == out[1]
    times = unit_intervals(tmp_path / "lanes2")
    assert set(times) >= {"train/unified_lora", "train/prefix_per_user", "retrieval/index",
                          "eval/retrieval"}
    assert all([kind for kind, _ in events] == ["start", "done"] for events in times.values())
    spans = sorted((ev[0][1], ev[1][1]) for ev in times.values())
    assert any(b0 < a1 for (a0, a1), (b0, b1) in zip(spans, spans[1:])), "no two units overlapped"


@pytest.mark.timeout(300)
def test_a_unit_failing_in_a_lane_stops_the_plan_with_its_own_error(tmp_path, monkeypatch):
    from personal.distributed.executor import run_experiment
    from personal.distributed.smoke import smoke_config

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("PERSONAL_QUIET", "1")
    cfg = smoke_config(tmp_path / "world", users=3, sessions=6,
                       overrides=[f"model.base={tmp_path / 'no_such_base'}"])
    temp = tempfile.mkdtemp(prefix="pray")
    try:
        with pytest.raises(PersonalError, match="no_such_base.*not available offline"):
            run_experiment(cfg, tmp_path / "run", ["base", "unified_lora"], num_cpus=2,
                           temp_dir=temp)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.timeout(300)
def test_workers_of_a_local_runtime_take_the_allocator_settings(monkeypatch):
    """glibc reads its malloc settings when a process starts: a local runtime's workers must
    be born with them (a value the user set wins)."""
    import ray

    from personal.distributed.runtime import ALLOCATOR_ENV, allocator_env, ray_runtime

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "12345")
    monkeypatch.delenv("MALLOC_MMAP_MAX_", raising=False)
    assert allocator_env() == {"MALLOC_MMAP_MAX_": ALLOCATOR_ENV["MALLOC_MMAP_MAX_"],
                               "MALLOC_TRIM_THRESHOLD_": "12345"}

    @ray.remote(num_cpus=0)
    def worker_env():
        import os
        return {k: os.environ.get(k) for k in ALLOCATOR_ENV}

    temp = tempfile.mkdtemp(prefix="pray")
    try:
        with ray_runtime(num_cpus=1, temp_dir=temp):
            seen = ray.get(worker_env.remote())
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert seen == {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "12345"}
