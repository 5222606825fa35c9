"""The `personal` command: exit codes, messages that name the problem, no tracebacks."""
import json
import subprocess
import sys

import pytest

from personal.cli import main


def run_cli(capsys, *args):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main(list(args) if args else [])
        raise SystemExit(0)
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "eval"
    main_args = ["data", "synth", "--out", str(path), "--users", "6", "--sessions", "10"]
    with pytest.raises(SystemExit) as exc:
        main(main_args)
        raise SystemExit(0)
    assert (exc.value.code or 0) == 0
    return path


def test_every_command_has_help_with_an_example(capsys):
    for cmd in (["data", "synth"], ["data", "validate"], ["data", "import"], ["data", "split"],
                ["data", "stats"], ["base", "pretrain"], ["train"], ["eval"], ["report"],
                ["run"], ["tune"], ["serve"], ["robustness"]):
        code, out, _ = run_cli(capsys, *cmd, "--help")
        assert code == 0 and "Example: personal " + cmd[0] in out, cmd


def test_synth_validate_split_stats(capsys, small_data, tmp_path):
    code, out, err = run_cli(capsys, "data", "validate", str(small_data))
    assert code == 0 and "6 users, 60 sessions" in out
    code, out, _ = run_cli(capsys, "data", "split", str(small_data), "--cold-start", "2")
    assert code == 0 and "(2 cold-start)" in out
    splits = json.loads((small_data / "splits.json").read_text())
    assert sum(1 for s in splits.values() if s.get("cold_start")) == 2
    code, out, _ = run_cli(capsys, "data", "stats", str(small_data), "--json",
                           "--max-ceiling-turns", "20")
    stats = json.loads(out)
    assert code == 0 and stats["users"] == 6 and stats["sessions"] == 60
    assert stats["splits"]["test"]["sessions"] == 12  # the last 2 of 10 sessions, 6 users
    assert stats["identifiability"]["chance"] == pytest.approx(1 / 4)  # 2 users are cold-start
    assert stats["noise_ceiling"]["pairs"] <= 20
    # the reply baseline reads the middle session's first 5 messages of all 6 users
    assert stats["reply_baseline"]["users"] == 6 and 0 < stats["reply_baseline"]["reply_baseline"] <= 1
    assert stats["reply_baseline"]["turns"] == 12  # two exchanges in 5 messages


def test_bad_data_exits_2_with_file_line_and_field(capsys, small_data, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("characters.jsonl", "routines.jsonl", "sessions.jsonl"):
        (bad / name).write_text((small_data / name).read_text())
    lines = (bad / "sessions.jsonl").read_text().splitlines()
    lines[2] = lines[2].replace('"temperature": ', '"temperature": 35, "x": ', 1) \
        if '"temperature": ' in lines[2] else lines[2].replace('"role": "user"', '"role": "bot"', 1)
    lines[4] = "{not json"
    (bad / "sessions.jsonl").write_text("\n".join(lines) + "\n")
    code, out, err = run_cli(capsys, "data", "validate", str(bad))
    assert code == 2
    assert "sessions.jsonl:5" in err and "sessions.jsonl:3" in err   # both problems listed
    assert "Traceback" not in err
    code, out, err = run_cli(capsys, "data", "validate", str(bad), "--lenient")
    assert code == 0 and "dropped" in err and "persona_004" in err


def test_unknown_config_key_exits_2_naming_it(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "unified", "--run", str(tmp_path / "r"),
                           "--data", str(tmp_path / "missing"), "train.lrr=1")
    assert code == 2 and "train.lrr" in err


@pytest.mark.parametrize("args, named", [
    (["--seeds", "0,x"], "--seeds '0,x'"), (["--seeds", ""], "--seeds ''"),
    (["--seeds", "1,1"], "run.seeds has a seed twice"),
    (["run.seeds=[-1]"], "run.seeds must be a list of integers >= 0"),
    (["eval.worst_criterion=floor"], "eval.worst_criterion must be one of worst, worst_delta"),
    (["eval.worst_delta_bound=0.1"], "eval.worst_delta_bound must be in [-2, 0]"),
    (["strategy.cluster_lora.min_sampels=2"], "strategy.cluster_lora.min_sampels")])
def test_bad_seeds_and_criteria_exit_2_before_any_work(capsys, tmp_path, args, named):
    run = tmp_path / "r"
    code, _, err = run_cli(capsys, "run", "--no-ray", "--run", str(run), "--data",
                           str(tmp_path / "missing"), *args)
    assert code == 2 and named in err and "Traceback" not in err
    assert not run.exists()  # nothing was written


def test_missing_folder_and_unknown_strategy_exit_2(capsys, tmp_path):
    code, _, err = run_cli(capsys, "data", "validate", str(tmp_path / "nope"))
    assert code == 2 and "nope" in err
    code, _, err = run_cli(capsys, "report", str(tmp_path))
    assert code == 2 and "not a run directory" in err


def test_console_script_exit_code_and_no_traceback(tmp_path):
    """The real entry point, in a subprocess: usage errors are exit 2 without a traceback."""
    proc = subprocess.run([sys.executable, "-m", "personal.cli", "data", "validate",
                           str(tmp_path / "absent")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "absent" in proc.stderr
