"""The learning curve: the plan at several training-set sizes per user, one report.

A curve run is a folder holding the resolved config, `curve.json` (the points and their
sub-runs) and one ordinary run per point in `sessions-<n>/`, trained with each user's `n`
most recent training sessions (`data.max_train_sessions`). Validation, test turns and
cold-start users are the same at every point, so the scores are comparable along the curve.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from personal.config import Config, set_dotted
from personal.experiment.runs import CURVE_FILE, run_subruns, subrun_folders


def curve_run_name(n: int) -> str:
    """Sub-run folder of one point (points are checked integers >= 1 by run.curve_sessions)."""
    return f"sessions-{int(n)}"


def run_curve(cfg: Config, run_path: str | Path, strategies: list[str],
              execute: Callable[[Config, Path], Path]) -> Path:
    """Run the plan once per point of `cfg.run.curve_sessions`, then the curve's report."""
    from personal.experiment.reporting import report_from_run

    sizes = sorted(set(cfg.run.curve_sessions))
    points = {curve_run_name(n): set_dotted(cfg, "data.max_train_sessions", n) for n in sizes}
    run_subruns(cfg, run_path, points, CURVE_FILE, {"sessions": sizes}, execute)
    return report_from_run(Path(run_path))


def curve_runs(run_path: str | Path) -> dict[int, Path]:
    """{training sessions per user: sub-run folder} of a curve run, or {}."""
    return subrun_folders(run_path, CURVE_FILE, "sessions", curve_run_name)
