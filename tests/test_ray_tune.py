"""Ray Tune ablations: grids over dotted keys are checked, trial resources follow the config,
and a smoke sweep (3 ranks x 2 learning rates on 5 users) gives one table row per trial, an
ablation plot, and resumes without re-running finished trials."""
import csv
import dataclasses
import json

import pytest
import torch

from personal.config import Config, ConfigError
from personal.distributed.smoke import smoke_config
from personal.distributed.tune import (ablation_points, grid_size, parse_grid, run_sweep,
                                       trial_config, trial_resources, write_results)

torch.set_num_threads(1)


def test_parse_grid_reads_lists_and_names_bad_keys():
    grid = parse_grid(["lora.rank=[2,4,8]", "train.lr=[1e-3, 1e-2]"])
    assert grid == {"lora.rank": [2, 4, 8], "train.lr": [1e-3, 1e-2]}
    assert grid_size(grid) == 6
    with pytest.raises(ConfigError, match="lora.rnak"):
        parse_grid(["lora.rnak=[2]"])
    with pytest.raises(ConfigError, match="non-empty list"):
        parse_grid(["lora.rank=4"])
    with pytest.raises(ConfigError, match="lora.rank"):
        parse_grid(["lora.rank=[2, two]"])


def test_trial_config_and_resources():
    cfg = trial_config(Config(), {"lora.rank": 2, "train.lr": 0.01})
    assert (cfg.lora.rank, cfg.train.lr, cfg.eval.split) == (2, 0.01, "val")
    one = Config()
    assert trial_resources(one) == {"CPU": 1.0}
    gpu = dataclasses.replace(one, ray=dataclasses.replace(one.ray, use_gpu=True))
    assert trial_resources(gpu, gpu_per_trial=0.25) == {"CPU": 1.0, "GPU": 0.25}
    wraps = dataclasses.replace(one, ray=dataclasses.replace(one.ray, num_workers=2))
    assert trial_resources(wraps) == {"CPU": 0.0}  # its TorchTrainer workers hold the CPUs


def test_results_table_and_ablation_points(tmp_path):
    rows = [{"lora.rank": r, "train.lr": lr, "trial": f"{r},{lr}", "emb_sim": r / 10 + lr}
            for r in (2, 4) for lr in (0.1, 0.3)]
    assert ablation_points(rows, ["lora.rank", "train.lr"], "emb_sim") == {
        "lora.rank": [(2, pytest.approx(0.4)), (4, pytest.approx(0.6))],
        "train.lr": [(0.1, pytest.approx(0.4)), (0.3, pytest.approx(0.6))]}
    paths = write_results(tmp_path, rows, ["lora.rank", "train.lr"], "emb_sim")
    with open(paths["table"], newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4 and table[0]["lora.rank"] == "2"
    assert "Ablations" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_smoke_sweep_one_row_per_trial_and_resume(tmp_path, ray_local):
    cfg = smoke_config(tmp_path / "world", users=5, sessions=6,
                       overrides=["train.max_steps=2", "generation.max_new_tokens=6"])
    grid = parse_grid(["lora.rank=[2,4,8]", "train.lr=[1e-3,1e-2]"], cfg)
    out = run_sweep(cfg, tmp_path / "run", grid)
    rows = out["rows"]
    assert len(rows) == 6 and not [r for r in rows if "error" in r]
    assert {(r["lora.rank"], r["train.lr"]) for r in rows} == {
        (a, b) for a in (2, 4, 8) for b in (1e-3, 1e-2)}
    assert all(0.0 <= r["emb_sim"] <= 1.0 for r in rows)
    saved = json.loads((tmp_path / "run" / "sweep" / "results.json").read_text())
    assert len(saved) == 6
    assert "data:image/png;base64" in (tmp_path / "run" / "sweep" / "report.html").read_text()
    units = sorted((tmp_path / "run" / "trials").glob("*/units/train__unified_lora.json"))
    assert len(units) == 6
    stamps = [u.stat().st_mtime for u in units]
    again = run_sweep(cfg, tmp_path / "run", grid)  # restored: finished trials are not rerun
    assert [r["emb_sim"] for r in again["rows"]] == [r["emb_sim"] for r in rows]
    assert [u.stat().st_mtime for u in units] == stamps


def test_units_every_trial_shares_are_trained_once(tmp_path):
    """A hybrid sweep over its own learning rate: the unified adapter it starts from is the
    same for every trial, so it is trained once and copied; the hybrid fleets are not."""
    from personal.distributed.tune import share_upstream, trial_run

    cfg = smoke_config(tmp_path / "world", users=3, sessions=6)
    grid = parse_grid(["strategy.hybrid_lora.lr=[0.001,0.01]"], cfg)
    shared = share_upstream(cfg, tmp_path / "sweep", grid, "hybrid_lora")
    assert shared == ["train/unified_lora"]
    runs = [trial_run(tmp_path / "sweep", {"strategy.hybrid_lora.lr": lr}) for lr in (0.001, 0.01)]
    records = [json.loads((r / "units/train__unified_lora.json").read_text()) for r in runs]
    assert records[0] == records[1]  # one training, its record copied
    weights = [(r / "adapters/unified_lora/adapter_model.safetensors").read_bytes() for r in runs]
    assert weights[0] == weights[1]
    assert not list(runs[1].glob("adapters/hybrid_lora/*"))  # not shared: each trial's own
