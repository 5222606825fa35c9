"""The whole pipeline on a tiny run: data -> base -> unified adapter -> eval -> report, and
the same command again resumes without redoing finished units."""
import json

import pytest
import torch

from personal.config import load_config
from personal.experiment import pipeline


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("pipe")
    return load_config(None, [
        f"data.path={root}/eval", f"data.background_path={root}/bg", "data.simulate=true",
        "data.users=3",
        "data.sessions=6", "data.background_users=4", "model.hidden_size=32",
        "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64",
        "model.vocab_size=400", f"model.cache_dir={root}/cache", "pretrain.epochs=1",
        "train.epochs=1", "train.batch_size=8", "generation.max_new_tokens=8",
        "eval.bootstrap=50"]), root


def test_run_trains_evaluates_reports_and_resumes(tiny_cfg):
    cfg, root = tiny_cfg
    run = root / "run"
    report = pipeline.run_plan(cfg, run, ["base", "unified_lora"])
    text = report.read_text()
    assert "| unified_lora |" in text and "| base |" in text and "noise ceiling" in text
    assert (run / "report.html").read_text().count("data:image/png;base64") >= 2
    # one prediction record per test turn, for each strategy, with its metrics
    preds = [json.loads(line) for line in (run / "predictions" / "unified_lora.jsonl").open()]
    assert preds and all({"persona_id", "prompt_hash", "prediction", "reference", "emb_sim"}
                         <= set(p) for p in preds)
    assert (run / "adapters" / "unified_lora" / "adapter_config.json").is_file()
    summary = json.loads((run / "metrics" / "unified_lora_summary.json").read_text())
    assert summary["users"] == 3 and summary["examples"] == len(preds)

    finished = {f.name: f.stat().st_mtime_ns for f in (run / "units").glob("*.json")}
    adapter_mtime = (run / "adapters/unified_lora/adapter_model.safetensors").stat().st_mtime_ns
    pipeline.run_plan(cfg, run, ["base", "unified_lora"])          # the same command again
    assert {f.name: f.stat().st_mtime_ns for f in (run / "units").glob("*.json")} == finished
    assert (run / "adapters/unified_lora/adapter_model.safetensors").stat().st_mtime_ns \
        == adapter_mtime

    changed = load_config(None, ["lora.rank=2"]).lora
    cfg2 = type(cfg)(**{**cfg.__dict__, "lora": changed})
    pipeline.run_plan(cfg2, run, ["unified_lora"])                 # changed inputs: re-run
    assert (run / "adapters/unified_lora/adapter_model.safetensors").stat().st_mtime_ns \
        != adapter_mtime
    assert json.loads((run / "adapters/unified_lora/adapter_config.json").read_text())["r"] == 2


def test_a_run_resumes_whether_its_paths_are_relative_or_absolute(tmp_path, monkeypatch):
    """`personal train` keeps paths as written, the Ray executor makes them absolute: the
    unit inputs (and so resuming) must not depend on which."""
    from personal.distributed.runtime import absolute_config

    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    relative = load_config(None, [
        "data.path=eval", "data.background_path=bg", "data.simulate=true",
        "data.users=2", "data.sessions=5",
        "data.background_users=3", "model.hidden_size=32", "model.num_layers=1",
        "model.num_heads=2", "model.intermediate_size=64", "model.vocab_size=400",
        "model.cache_dir=cache", "pretrain.epochs=1", "train.max_steps=2",
        "generation.max_new_tokens=4", "eval.bootstrap=20"])
    pipeline.run_plan(relative, "run", ["base", "unified_lora"])
    finished = {f.name: f.stat().st_mtime_ns for f in (tmp_path / "run" / "units").glob("*.json")}
    pipeline.run_plan(absolute_config(relative), "run", ["base", "unified_lora"])
    assert {f.name: f.stat().st_mtime_ns
            for f in (tmp_path / "run" / "units").glob("*.json")} == finished


def test_a_seeds_run_repeats_the_plan_per_seed_and_reports_over_seeds(tiny_cfg):
    from personal.config import set_dotted
    from personal.errors import PersonalError
    from personal.experiment.seeds import run_seeds

    cfg, root = tiny_cfg
    cfg = set_dotted(cfg, "run.seeds", [0, 1])
    plan = ["base", "unified_lora"]
    report = run_seeds(cfg, root / "seeds", plan, lambda c, p: pipeline.run_plan(c, p, plan))
    text = report.read_text()
    assert "(2 seeds)" in text and "2 seeds (0, 1): scores are means over seeds" in text
    a, b = (root / "seeds" / f"seed-{s}" / "adapters/unified_lora/adapter_model.safetensors"
            for s in (0, 1))
    assert a.read_bytes() != b.read_bytes()  # another seed: another initialisation
    seed1 = load_config(root / "seeds" / "seed-1" / "config.yaml")
    assert seed1.train.seed == 1 and seed1.generation.seed == 0 and seed1.run.seeds == []
    # what no seed changes ran once: seed 1 adopted the base's evaluation from seed 0
    base_eval = json.loads((root / "seeds/seed-1/units/eval__base.json").read_text())
    assert base_eval["reused_from"] == "seed-0"
    assert (root / "seeds/seed-1/predictions/base.jsonl").read_bytes() == \
        (root / "seeds/seed-0/predictions/base.jsonl").read_bytes()
    assert "reused_from" not in json.loads(
        (root / "seeds/seed-1/units/train__unified_lora.json").read_text())
    rows = {r["strategy"]: r for r in json.loads((root / "seeds/comparisons.json").read_text())}
    per_seed = [json.loads((root / "seeds" / f"seed-{s}/metrics/unified_lora_summary.json")
                           .read_text())["macro"]["emb_sim"] for s in (0, 1)]
    # the reference's seed spread is the sd of its two seeds' means (all users in both)
    assert abs(rows["base"]["reference_seed_spread"]
               - abs(per_seed[0] - per_seed[1]) / 2 ** 0.5) < 1e-9
    assert rows["base"]["seed_spread"] == 0.0  # the untrained base is the same in every seed
    spread = json.loads((root / "seeds" / "seed_spread.json").read_text())
    assert spread["seeds"] == [0, 1] and "unified_lora" in spread["spread"]
    # a one-seed run beside it quotes that spread; a seeds run refuses a single-seed folder
    single = pipeline.run_plan(tiny_cfg[0], root / "single", ["base", "unified_lora"])
    assert "One seed: the seed spread is unknown" in single.read_text()
    assert "The last measured spread (seeds, seeds 0, 1" in single.read_text()
    with pytest.raises(PersonalError, match="holds a single-seed run"):
        run_seeds(cfg, root / "single", plan, lambda c, p: pipeline.run_plan(c, p, plan))


def test_cold_start_users_train_nothing_are_scored_and_get_their_own_table(tiny_cfg):
    from personal.config import set_dotted
    from personal.errors import PersonalError

    cfg, root = tiny_cfg
    cfg = set_dotted(set_dotted(cfg, "data.path", str(root / "eval_cold")), "data.cold_start", 1)
    cfg = set_dotted(cfg, "data.users", 4)
    run = root / "cold"
    text = pipeline.run_plan(cfg, run, ["base", "unified_lora"]).read_text()
    splits = json.loads((root / "eval_cold" / "splits.json").read_text())
    cold = [pid for pid, sp in splits.items() if sp.get("cold_start")]
    assert len(cold) == 1 and splits[cold[0]]["train"] == []
    # nothing the strategies train or early-stop on comes from the cold-start user
    from personal.experiment.context import Context
    ctx = Context.create(cfg, root / "cold_ctx")
    assert cold[0] not in ctx.training_personas() and len(ctx.training_personas()) == 3
    assert not [e for e in ctx.examples("train") if e.persona_id == cold[0]]
    assert [e for e in ctx.examples("test") if e.persona_id == cold[0]]
    preds = [json.loads(line) for line in (run / "predictions" / "unified_lora.jsonl").open()]
    assert any(p["persona_id"] == cold[0] for p in preds)  # scored
    summary = json.loads((run / "metrics" / "unified_lora_summary.json").read_text())
    assert summary["cold_start_users"] == cold
    assert "## Cold-start users" in text and "| unified_lora | the unified adapter" in text
    assert "On the 1 cold-start users (no training data) the best is" in text
    comparisons = json.loads((run / "comparisons.json").read_text())
    assert comparisons[0]["n_users"] == 3  # the study's table compares the training users
    # the splits file next to the data follows the config: another count is refused
    with pytest.raises(PersonalError, match="holds 1 cold-start users, but data.cold_start"):
        pipeline.run_plan(set_dotted(cfg, "data.cold_start", 2), run, ["base"])


def test_cost_figures_are_positive_and_add_up(tiny_cfg):
    from safetensors.torch import load_file

    from personal.experiment.cost import safetensors_parameters

    cfg, root = tiny_cfg
    run = root / "run"
    pipeline.run_plan(cfg, run, ["base", "unified_lora"])  # resumes the first test's run
    cost = json.loads((run / "metrics" / "unified_lora_cost.json").read_text())
    adapter = run / "adapters" / "unified_lora"
    files = [f for f in adapter.rglob("*") if f.is_file()]
    assert cost["stored_bytes"] == sum(f.stat().st_size for f in files) > 0
    tensors = load_file(adapter / "adapter_model.safetensors")
    assert cost["parameters"] == sum(t.numel() for t in tensors.values()) > 0
    assert safetensors_parameters(adapter / "adapter_model.safetensors") == cost["parameters"]
    assert cost["parameters_per_user"] == cost["parameters"] / 3  # 3 training users
    unit = json.loads((run / "units" / "train__unified_lora.json").read_text())
    assert cost["train_lane_seconds"] == unit["seconds"] > 0
    summary = json.loads((run / "metrics" / "unified_lora_summary.json").read_text())
    assert cost["generation_seconds_per_1000"] == pytest.approx(
        1000 * summary["generation_seconds"] / summary["examples"])
    base = json.loads((run / "metrics" / "base_cost.json").read_text())
    assert base["parameters"] == 0 and base["stored_bytes"] == 0
    text = (run / "report.md").read_text()
    assert "## Cost" in text and "| unified_lora | " in text.split("## Cost")[1]


def test_a_learning_curve_trains_on_the_most_recent_sessions_and_plots_them(tiny_cfg):
    from personal.config import set_dotted
    from personal.experiment.context import Context
    from personal.experiment.curve import run_curve

    cfg, root = tiny_cfg
    cfg = set_dotted(cfg, "run.curve_sessions", [3, 1])
    plan = ["base", "unified_lora"]
    report = run_curve(cfg, root / "curve", plan, lambda c, p: pipeline.run_plan(c, p, plan))
    one = Context.create(load_config(root / "curve" / "sessions-1" / "config.yaml"),
                         root / "curve_ctx")
    full = Context.create(tiny_cfg[0], root / "curve_ctx_full")
    for pid, sp in one.splits.items():  # the last training session, val and test unchanged
        assert sp.train == full.splits[pid].train[-1:] and sp.test == full.splits[pid].test
    sessions = {(e.persona_id, e.session_id) for e in one.examples("train")}
    assert len(sessions) == 3 and one.fingerprint != full.fingerprint
    text = report.read_text()
    assert "| strategy | 1 sessions | 3 sessions |" in text
    scores = json.loads((root / "curve" / "curve_scores.json").read_text())
    unified_1 = json.loads((root / "curve/sessions-1/metrics/unified_lora_summary.json")
                           .read_text())["macro"]["emb_sim"]
    assert abs(scores["unified_lora"]["1"]["emb_sim"] - unified_1) < 1e-12  # 3 warm users
    html = (root / "curve" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 1


def test_a_finished_run_is_scored_on_new_users_from_an_imported_file(tiny_cfg, capsys):
    """`personal eval RUN --data DIR`: the hand-written cleaned-dialogue file's users are
    all new to the run; each strategy answers them by its cold-start rule (per-user
    adapters' fallback, the nearest cluster, retrieval over their own sessions), and the
    report's tables mark every user as cold-start."""
    from pathlib import Path

    from personal.cli import main
    from personal.data.importer import write_import

    cfg, root = tiny_cfg
    run = root / "newdata"
    names = ["base", "unified_lora", "per_user_lora", "cluster_lora", "retrieval"]
    pipeline.run_plan(cfg, run, names)
    assets = Path(__file__).parent / "assets" / "cleaned"
    data = root / "imported"
    write_import(assets / "dialogues.jsonl", assets / "splits.json", data)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}

    def cli(*args):
        with pytest.raises(SystemExit) as exc:
            main(["eval", str(run), *args, "--quiet"])
        return exc.value.code, capsys.readouterr().err

    code, _ = cli("--data", str(data))
    assert code == 0
    out = run / "evals" / "imported"
    record = json.loads((out / "new_data.json").read_text())
    # the run's users are persona_000..002 too: DIR's users are renamed, never matched
    assert {u["id"] for u in record["users"].values()} == {
        "new_persona_000", "new_persona_001", "new_persona_002"}
    assert all(u["cold_start"] for u in record["users"].values())
    for name in names:
        summary = json.loads((out / "metrics" / f"{name}_summary.json").read_text())
        # persona_002 has no test session: the other two are scored, both cold-start
        assert summary["cold_start_users"] == ["new_persona_000", "new_persona_001"]
        assert summary["users"] == 2 and summary["examples"] > 0
    preds = [json.loads(x) for x in (out / "predictions" / "retrieval.jsonl").open()]
    assert {p["persona_id"] for p in preds} == {"new_persona_000", "new_persona_001"}
    text = (out / "report.md").read_text()
    assert "| persona_000 | new_persona_000 | yes |" in text
    assert "| persona_002 | new_persona_002 | yes | 0 |" in text
    assert "3 of the 3 users" in text and "Cold-start users" in text
    # the run itself is only read: no file of it changed (the log this process attached to
    # it earlier and the retrieval cache of the new users' memory aside)
    after = {p: p.stat().st_mtime_ns for p in run.rglob("*")
             if p.is_file() and p.relative_to(run).parts[0] not in ("evals", "retrieval", "logs")}
    assert {p: t for p, t in before.items() if p in after} == after

    code, err = cli("--data", str(data))                       # again: refused
    assert code == 2 and "exists: pass --force" in err
    code, err = cli("--data", str(root / "nowhere"))
    assert code == 2 and "not a dataset folder" in err
    code, err = cli("--data", str(data), "--strategy", "hybrid_lora", "--out",
                    str(root / "other"))
    assert code == 2 and "hybrid_lora (unfinished" in err and not (root / "other").exists()
    code, err = cli("--out", str(root / "x"))
    assert code == 2 and "--out and --force go with --data" in err
