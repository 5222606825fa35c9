"""cluster_lora: users clustered by their training data, one adapter per cluster, routing.

The pure parts (representation, silhouette choice, nearest centroid) run on hand-made data
and the styled two-archetype dataset; the strategy and its scripts on a 6-user smoke world
with one cold-start user."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from personal.config import save_config
from personal.data.schema import Split
from personal.data.splits import make_splits
from personal.distributed.smoke import smoke_config
from personal.errors import PersonalError
from personal.experiment.context import Context
from personal.experiment.pipeline import train_strategy
from personal.strategies import cluster
from personal.strategies.cluster import (METHODS, ClusterConfig, assign_clusters, candidate_ks,
                                         choose_clusters, nearest_centroid, routing_table)
from personal.strategies.registry import get_strategy, strategy_config

ROOT = Path(__file__).resolve().parents[1]


def archetypes_of(ds, record):
    """Each cluster's set of archetypes."""
    arch = {p.persona_id: p.archetype for p in ds.personas}
    return [{arch[p] for p in members} for members in record["clusters"].values()]


# --- The assignment --------------------------------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_users_of_one_archetype_share_a_cluster(make_styled_dataset, method):
    ds = make_styled_dataset(users_per_archetype=3, sessions=10)
    record = assign_clusters(ds, make_splits(ds), ClusterConfig(method=method,
                                                                k_candidates=[2, 3, 4]))
    assert record["k"] == 2
    assert sorted(map(sorted, archetypes_of(ds, record))) == [["early_riser"], ["night_owl"]]
    assert sorted(record["assignment"]) == [p.persona_id for p in ds.personas]


def separated_blobs(per_blob=5):
    """4 tight blobs of `per_blob` points, 10 apart: the matrix implies k = 4."""
    rng = np.random.default_rng(0)
    centers = [[10.0, 0, 0], [0, 10.0, 0], [0, 0, 10.0], [0, 0, 0]]
    return np.vstack([np.array(c) + rng.normal(0, 0.3, (per_blob, 3)) for c in centers])


@pytest.mark.parametrize("method", METHODS)
def test_silhouette_picks_the_number_of_blobs(method):
    x = separated_blobs()
    labels, candidates = choose_clusters(x, ClusterConfig(method=method,
                                                          k_candidates=[2, 3, 4, 5, 6]))
    assert labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5
    chosen = [c for c in candidates if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["k"] == 4
    others = [c["silhouette"] for c in candidates if c["k"] != 4 and c["silhouette"]]
    assert all(chosen[0]["silhouette"] > s for s in others)
    if method != "dbscan":
        assert [c["k"] for c in candidates] == [2, 3, 4, 5, 6]


def test_a_fixed_number_of_clusters_is_used_and_clamped():
    x = separated_blobs()
    labels, candidates = choose_clusters(x, ClusterConfig(n_clusters=2))
    assert [c["k"] for c in candidates] == [2] and labels.max() == 1
    labels, _ = choose_clusters(x[:3], ClusterConfig(n_clusters=10))
    assert labels.max() + 1 == 2  # 3 users: at most 2 clusters


def test_candidates_are_clamped_below_the_number_of_users():
    assert candidate_ks([5, 10, 15, 20, 25], 200) == [5, 10, 15, 20, 25]
    assert candidate_ks([5, 10, 15, 20, 25], 12) == [5, 10, 11]
    assert candidate_ks([5, 10, 15, 20, 25], 3) == [2]
    assert candidate_ks([5, 10, 15, 20, 25], 2) == [1]


def test_nearest_centroid():
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    rows = np.array([[9.0, 1.0], [1.0, -1.0], [4.0, 6.0]])
    assert nearest_centroid(rows, centers).tolist() == [1, 0, 2]


def test_cold_start_users_join_the_nearest_cluster(make_styled_dataset):
    ds = make_styled_dataset(users_per_archetype=3, sessions=10)
    splits = make_splits(ds)
    for pid in ("persona_001", "persona_004"):  # one of each archetype, seen only in val
        splits[pid] = Split(train=[], val=list(range(8)), test=[8, 9], cold_start=True)
    record = assign_clusters(ds, splits, ClusterConfig(n_clusters=2))
    members = [p for m in record["clusters"].values() for p in m]
    assert "persona_001" not in members and "persona_004" not in members
    assert record["placed"] == {"persona_001": record["assignment"]["persona_000"],
                                "persona_004": record["assignment"]["persona_003"]}
    assert record["assignment"]["persona_001"] != record["assignment"]["persona_004"]


def test_users_placed_at_predict_time_land_where_the_assignment_placed_them(
        make_styled_dataset):
    """`place_users` (a new population's users, `personal eval --data`) applies the
    assignment's own cold-start rule: on the run's cold-start users it gives `placed`."""
    ds = make_styled_dataset(users_per_archetype=3, sessions=10)
    splits = make_splits(ds)
    for pid in ("persona_001", "persona_004"):
        splits[pid] = Split(train=[], val=list(range(8)), test=[8, 9], cold_start=True)
    scfg = ClusterConfig(n_clusters=2)
    record = assign_clusters(ds, splits, scfg)
    again = cluster.place_users(ds, splits, scfg, record, ["persona_004", "persona_001"])
    assert again == record["placed"] and len(set(again.values())) == 2


def test_cold_start_users_do_not_move_the_clusters(make_styled_dataset):
    ds = make_styled_dataset(users_per_archetype=3, sessions=10)
    splits = make_splits(ds)
    splits["persona_002"] = Split(train=[], val=list(range(8)), test=[8, 9], cold_start=True)
    scfg = ClusterConfig(n_clusters=2, embedding_weight=0.0)
    before = assign_clusters(ds, splits, scfg)
    ds.personas[2].sessions[0].messages[0].text = "yo tv on netflix " * 20  # its val data
    after = assign_clusters(ds, splits, scfg)
    assert after["clusters"] == before["clusters"]
    assert after["candidates"] == before["candidates"]


@pytest.mark.parametrize("bad, word", [({"method": "spectral"}, "method"),
                                       ({"method": "dbscan", "n_clusters": 3}, "dbscan"),
                                       ({"init": "hybrid"}, "init"),
                                       ({"k_candidates": []}, "k_candidates"),
                                       ({"feature_weight": 0.0, "embedding_weight": 0.0},
                                        "weight")])
def test_bad_settings_name_the_problem(make_styled_dataset, bad, word):
    ds = make_styled_dataset(users_per_archetype=2, sessions=4)
    with pytest.raises(PersonalError, match=word):
        assign_clusters(ds, make_splits(ds), ClusterConfig(**bad))


def test_routing_table_prefers_a_users_delta():
    record = {"clusters": {"cluster_00": ["a", "b"], "cluster_01": ["c"]},
              "assignment": {"a": "cluster_00", "b": "cluster_00", "c": "cluster_01",
                             "cold": "cluster_01"}}
    folders, slot = routing_table(record, {})
    assert {p: folders[s] for p, s in slot.items()} == {
        "a": f"{cluster.FOLDER}/cluster_00", "b": f"{cluster.FOLDER}/cluster_00",
        "c": f"{cluster.FOLDER}/cluster_01", "cold": f"{cluster.FOLDER}/cluster_01"}
    folders, slot = routing_table(record, {"cluster_00": ["a"], "cluster_01": ["c"]})
    assert folders[slot["a"]] == f"{cluster.USERS_FOLDER}/cluster_00/a"
    assert folders[slot["b"]] == f"{cluster.FOLDER}/cluster_00"
    assert folders[slot["cold"]] == f"{cluster.FOLDER}/cluster_01"


# --- The strategy on a smoke world -----------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 6-user smoke world, one user cold-start, a config file for the scripts."""
    root = tmp_path_factory.mktemp("cluster_world")
    cfg = smoke_config(root, users=6, sessions=6,
                       overrides=["data.cold_start=1", "train.max_steps=3", "train.lr=3e-2",
                                  "generation.max_new_tokens=4"])
    save_config(cfg, root / "config.yaml")
    return cfg, root


def with_options(cfg, **options):
    import dataclasses

    return dataclasses.replace(cfg, strategy={"cluster_lora": options})


def strategy_cfg(ctx):
    spec = get_strategy("cluster_lora")
    return strategy_config(spec, ctx.cfg.strategy.get("cluster_lora"))


@pytest.fixture(scope="module")
def trained_world(world):
    """cluster_lora with per-user deltas, trained once on the smoke world."""
    cfg, root = world
    # 3 delta epochs: a one-step run would not move (its only step is at warmup lr 0)
    ctx = Context.create(with_options(cfg, n_clusters=2, user_deltas=True, delta_epochs=3.0),
                         root / "run")
    train_strategy(ctx, "cluster_lora")
    return ctx


def test_assignment_is_written_into_the_run(trained_world):
    ctx = trained_world
    record = json.loads((ctx.run.path / cluster.ASSIGNMENT).read_text())
    cold = [p for p, sp in ctx.splits.items() if sp.cold_start]
    assert len(cold) == 1 and list(record["placed"]) == cold
    assert sorted(record["assignment"]) == sorted(ctx.splits)
    assert record["k"] == 2 and record["chosen_by"] == "fixed"
    assert [c["k"] for c in record["candidates"]] == [2]
    assert isinstance(record["candidates"][0]["silhouette"], float)
    assert sorted(p for m in record["clusters"].values() for p in m) == \
        sorted(ctx.training_personas())


def test_one_adapter_per_cluster_and_one_delta_per_training_user(trained_world):
    ctx = trained_world
    record = cluster.read_assignment(ctx, strategy_cfg(ctx))
    run = ctx.run.path
    for name, members in record["clusters"].items():
        base = load_file(str(run / cluster.FOLDER / name / "adapter_model.safetensors"))
        for pid in members:
            delta = load_file(str(run / cluster.USERS_FOLDER / name / pid /
                                  "adapter_model.safetensors"))
            assert any(not torch.equal(base[k], delta[k]) for k in base), pid
    cold = next(iter(record["placed"]))
    assert not list((run / cluster.USERS_FOLDER).rglob(cold))


def captured_routes(monkeypatch, ctx, scfg):
    """{persona: adapter folder} that the predictor routes each test turn to."""
    seen = {}

    def fake_routed(ctx_, folders, route, fmt=None):
        seen["folders"], seen["route"] = folders, route
        return lambda examples: ["" for _ in examples]

    monkeypatch.setattr(cluster, "routed_predictor", fake_routed)
    cluster.predictor(ctx, scfg)
    examples = ctx.examples("test")
    return {e.persona_id: seen["folders"][seen["route"](e)].relative_to(ctx.run.path).as_posix()
            for e in examples}


def test_each_user_is_routed_to_their_adapter(trained_world, monkeypatch):
    ctx = trained_world
    scfg = strategy_cfg(ctx)
    record = cluster.read_assignment(ctx, scfg)
    routes = captured_routes(monkeypatch, ctx, scfg)
    assert set(routes) == set(ctx.splits)
    for pid, folder in routes.items():
        c = record["assignment"][pid]
        expected = f"{cluster.FOLDER}/{c}" if pid in record["placed"] \
            else f"{cluster.USERS_FOLDER}/{c}/{pid}"
        assert folder == expected

    no_deltas = Context.create(with_options(ctx.cfg, n_clusters=2), ctx.run.path)
    routes = captured_routes(monkeypatch, no_deltas, strategy_cfg(no_deltas))
    assert routes == {pid: f"{cluster.FOLDER}/{c}" for pid, c in record["assignment"].items()}


def test_predictions_come_from_the_routed_stack(trained_world):
    ctx = trained_world
    examples = ctx.examples("test")[:4]
    texts = cluster.predictor(ctx, strategy_cfg(ctx))(examples)
    assert len(texts) == 4 and all(isinstance(t, str) for t in texts)


def test_retraining_with_the_same_settings_reuses_every_unit(trained_world):
    ctx = trained_world
    units = sorted((ctx.run.path / "units").glob("*.json"))
    stamps = {f.name: f.stat().st_mtime_ns for f in units}
    again = Context.create(ctx.cfg, ctx.run.path)
    train_strategy(again, "cluster_lora")
    assert {f.name: f.stat().st_mtime_ns for f in units} == stamps


def test_a_stale_assignment_is_refused(trained_world):
    ctx = trained_world
    other = Context.create(with_options(ctx.cfg, n_clusters=3), ctx.run.path)
    with pytest.raises(PersonalError, match="other data or clustering settings"):
        cluster.predictor(other, strategy_cfg(other))


# --- Scripts ---------------------------------------------------------------------------------

SCRIPTS = ("cluster_personas.py", "train_cluster_lora.py", "train_cluster_plus_user.py")


def script(name, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PERSONAL_QUIET": "1"}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_help(name):
    out = script(name, "--help")
    assert out.returncode == 0, out.stderr
    assert "--n_clusters" in out.stdout and "--method" in out.stdout and "Exit codes" in out.stdout


def test_scripts_reject_bad_input_with_exit_2(world):
    _, root = world
    out = script("train_cluster_lora.py", "--n_clusters", "ten")
    assert out.returncode == 2 and "--n_clusters" in out.stderr
    out = script("cluster_personas.py", "--config", root / "config.yaml", "--run",
                 root / "bad_run", "--method", "spectral")
    assert out.returncode == 2 and "method must be one of" in out.stderr
    assert "Traceback" not in out.stderr


def test_scripts_run_end_to_end(world):
    _, root = world
    run = root / "script_run"
    common = ["--config", root / "config.yaml", "--run", run, "--n_clusters", "2",
              "strategy.cluster_lora.embedding_weight=0"]
    out = script("cluster_personas.py", *common)
    assert out.returncode == 0, out.stderr
    assert "k=2 (fixed)" in out.stdout and "cluster_01" in out.stdout
    assignment = run / cluster.ASSIGNMENT
    made = assignment.stat().st_mtime_ns

    out = script("train_cluster_lora.py", *common, "--quiet")
    assert out.returncode == 0, out.stderr
    assert "cluster_lora on 6 users" in out.stdout and "emb_sim=" in out.stdout
    assert assignment.stat().st_mtime_ns == made  # the assignment unit was reused
    assert (run / cluster.FOLDER / "cluster_01" / "adapter_config.json").is_file()

    out = script("train_cluster_plus_user.py", *common, "--quiet")
    assert out.returncode == 0, out.stderr
    assert "per-user deltas" in out.stdout
    assert len(list((run / cluster.USERS_FOLDER).rglob("adapter_config.json"))) == 5
    summary = json.loads((run / "metrics" / "cluster_lora_summary.json").read_text())
    assert summary["users"] == 6


def test_sweep_file_is_a_valid_grid():
    from personal.distributed.tune import grid_size, parse_grid
    from ray_jobs.sweep import read_sweep_file

    spec = read_sweep_file(str(ROOT / "configs" / "sweep_cluster.yaml"))
    grid = parse_grid(spec["grid"])
    assert spec["strategy"] == "cluster_lora"
    assert grid["strategy.cluster_lora.user_deltas"] == [False, True]
    assert grid_size(grid) == 16
    for n in grid["strategy.cluster_lora.n_clusters"]:  # every value a valid setting
        for m in grid["strategy.cluster_lora.method"]:
            cluster.check_config(ClusterConfig(n_clusters=n, method=m))
