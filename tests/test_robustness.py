"""`personal robustness`: a strategy's verdict against the reference on several runs."""
import json

import pytest

from personal.cli import main
from personal.errors import PersonalError
from personal.experiment.robustness import robustness, robustness_markdown, verdict


def _run(path, rows, reference="unified_lora"):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text("{}\n")
    (path / "comparisons.json").write_text(json.dumps([
        {"strategy": s, "reference": reference, "mean_delta": d, "ci_low": lo, "ci_high": hi,
         "n_users": 20} for s, d, lo, hi in rows]))
    return path


def test_verdicts_come_from_the_ci_of_the_change():
    assert verdict({"ci_low": 0.001, "ci_high": 0.01}) == "beats"
    assert verdict({"ci_low": -0.01, "ci_high": -0.001}) == "worse"
    assert verdict({"ci_low": -0.01, "ci_high": 0.01}) == "no difference"
    assert verdict({"ci_low": 0.0, "ci_high": 0.01}) == "no difference"  # touching zero
    assert verdict({"ci_low": float("nan"), "ci_high": float("nan")}) == "no difference"


def test_a_verdict_holds_only_when_every_run_agrees(tmp_path):
    a = _run(tmp_path / "main", [("cluster_lora", 0.007, 0.004, 0.009),
                                 ("per_user_lora", -0.05, -0.056, -0.048),
                                 ("hybrid_lora", 0.0002, -0.001, 0.002),
                                 ("only_here", 0.1, 0.05, 0.2)])
    b = _run(tmp_path / "second", [("cluster_lora", 0.001, -0.004, 0.006),
                                   ("per_user_lora", -0.03, -0.04, -0.02),
                                   ("hybrid_lora", 0.004, 0.001, 0.007)])
    result = robustness([a, b])
    holds = {r["strategy"]: r["holds"] for r in result["rows"]}
    assert holds == {"cluster_lora": False, "per_user_lora": True, "hybrid_lora": False}
    assert result["missing"] == ["only_here"]
    text = robustness_markdown(result)
    assert "holds on every population for 1 of 3 strategies; it changes for cluster_lora, " \
           "hybrid_lora." in text
    assert "| cluster_lora | +0.0070 [+0.0040, +0.0090], beats | +0.0010 [-0.0040, +0.0060], " \
           "no difference | **no** |" in text


def test_bad_runs_are_refused_naming_them(tmp_path, capsys):
    a = _run(tmp_path / "a", [("x", 0.1, 0.05, 0.2)])
    b = _run(tmp_path / "b", [("x", 0.1, 0.05, 0.2)], reference="base")
    with pytest.raises(PersonalError, match="different references"):
        robustness([a, b])
    with pytest.raises(PersonalError, match="at least two runs"):
        robustness([a])
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.yaml").write_text("{}\n")
    with pytest.raises(PersonalError, match="no comparisons.json"):
        robustness([a, tmp_path / "c"])
    out = tmp_path / "table.md"
    out.write_text("mine")
    with pytest.raises(SystemExit) as exc:
        main(["robustness", str(a), str(a), "--out", str(out)])
    assert exc.value.code == 2 and "exists: pass --force" in capsys.readouterr().err
    assert out.read_text() == "mine"  # untouched
    with pytest.raises(SystemExit) as exc:
        main(["robustness", str(a), str(tmp_path / "nope")])
    assert exc.value.code == 2 and "not a run directory" in capsys.readouterr().err
