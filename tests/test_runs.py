"""Run directories: provenance is recorded, finished units are skipped, changed ones re-run."""
import logging

import yaml

from personal.config import load_config
from personal.experiment.runs import Run, stable_hash


def _open(tmp_path, **kw):
    return Run.open(tmp_path / "run", load_config(None, ["lora.rank=2"]), "fp123")


def test_run_records_config_and_provenance(tmp_path):
    run = _open(tmp_path)
    assert yaml.safe_load((run.path / "config.yaml").read_text())["lora"]["rank"] == 2
    info = run.read_json("run.json")
    assert info["data_fingerprint"] == "fp123"
    assert info["packages"]["torch"] != "not installed"
    assert info["git_revision"]


def test_finished_unit_is_skipped_and_changed_inputs_rerun(tmp_path):
    run = _open(tmp_path)
    calls = []

    def work():
        calls.append(1)
        (run.path / "adapters" / "a.txt").write_text("x")
        return {"loss": 0.5}

    assert run.run_unit("train/a", "h1", work, ["adapters/a.txt"]) == {"loss": 0.5}
    assert run.run_unit("train/a", "h1", work, ["adapters/a.txt"]) == {"loss": 0.5}
    assert len(calls) == 1                      # same inputs: skipped, result read back
    run2 = _open(tmp_path)                      # the same command again resumes
    run2.run_unit("train/a", "h1", work, ["adapters/a.txt"])
    assert len(calls) == 1
    run2.run_unit("train/a", "h2", work, ["adapters/a.txt"])
    assert len(calls) == 2                      # changed inputs: re-run
    (run.path / "adapters" / "a.txt").unlink()
    run2.run_unit("train/a", "h2", work, ["adapters/a.txt"])
    assert len(calls) == 3                      # lost outputs: re-run
    assert set(run2.unit_seconds()) == {"train/a"}


def test_stable_hash_ignores_key_order_but_not_values():
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_plan_progress_counts_concurrent_units_and_shares_the_eta_among_lanes():
    from personal.experiment.progress import DEFAULT_SECONDS, PlanProgress

    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage().split(" · ")[0])
    log = logging.getLogger("personal")
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        progress = PlanProgress(["x/a", "x/b", "x/c"], lanes=2)   # 60 s expected each
        assert progress.eta() == 3 * DEFAULT_SECONDS / 2
        progress.begin("x/a")
        progress.begin("x/b")                  # both running at once
        progress.end("x/b", 120.0, skipped=False)
        progress.begin("x/c")
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert lines == ["[1/3] x/a", "[2/3] x/b", "[3/3] x/c"]
    # x/b took twice its expected time: the two units left are expected to take 2 x 60 s
    # each, shared between two lanes
    assert progress.speed() == 2.0 and progress.eta() == 2.0 * 2 * DEFAULT_SECONDS / 2
