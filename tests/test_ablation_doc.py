"""The ablation study's committed record: means per setting computed by hand, the best trial
named, failed trials listed (not averaged as zero), the plot decodes, and the script refuses
bad input and an existing record before any work."""
import subprocess
import sys
from pathlib import Path

from personal.distributed.tune import marginal_means, write_ablation_doc

ROOT = Path(__file__).resolve().parent.parent
ROWS = [{"k": 1, "method": "a", "emb_sim": 0.50}, {"k": 1, "method": "b", "emb_sim": 0.60},
        {"k": 3, "method": "a", "emb_sim": 0.70}, {"k": 3, "method": "b", "error": "boom"}]


def test_marginal_means_by_hand():
    means = marginal_means(ROWS, ["k", "method"], "emb_sim")
    assert means["k"] == [(1, 0.55), (3, 0.70)]          # the failed trial is left out
    assert means["method"] == [("a", 0.60), ("b", 0.60)]
    rows = [{"k": 10, "emb_sim": 0.1}, {"k": 3, "emb_sim": 0.3}, {"k": None, "emb_sim": 0.2}]
    assert [v for v, _ in marginal_means(rows[:2], ["k"], "emb_sim")["k"]] == [3, 10]
    assert [v for v, _ in marginal_means(rows, ["k"], "emb_sim")["k"]] == [3, 10, None]


def test_record_names_the_best_trial_and_the_failed_one(tmp_path):
    files = write_ablation_doc(tmp_path / "x", ROWS, ["k", "method"], "emb_sim", title="T",
                               command="python scripts/ablation_study.py --sweeps=x",
                               setup="Tiny.")
    text = (tmp_path / "x" / "README.md").read_text()
    assert "Best of 3 trials: `k=3`, `method=a` (emb_sim 0.7000" in text
    assert "| 3 | b | failed: boom |" in text
    assert "`k`: 1 → 0.5500, 3 → 0.7000" in text
    png = (tmp_path / "x" / "ablations.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert [f.name for f in files] == ["README.md", "ablations.png", "results.csv"]


def run_script(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "ablation_study.py"), *args],
                          capture_output=True, text=True, cwd=ROOT)


def test_script_refuses_bad_input_and_an_existing_record(tmp_path):
    out = tmp_path / "docs"
    (out / "cluster").mkdir(parents=True)
    (out / "cluster" / "README.md").write_text("kept\n")
    r = run_script("--sweeps", "cluster", "--out", str(out), "--work", str(tmp_path / "w"))
    assert r.returncode == 2 and "already holds a record; --force" in r.stderr
    assert (out / "cluster" / "README.md").read_text() == "kept\n"
    assert not (tmp_path / "w").exists()                    # nothing simulated or trained
    r = run_script("--sweeps", "nope", "--work", str(tmp_path / "w"))
    assert r.returncode == 2 and "unknown sweep nope" in r.stderr and "Traceback" not in r.stderr
