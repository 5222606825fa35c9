"""Turn a run directory's metrics files into the study report (report.md + report.html)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from personal.config import load_config
from personal.errors import PersonalError
from personal.eval.report import write_report
from personal.eval.statistics import compare, rows_as_records
from personal.experiment.progress import format_seconds
from personal.experiment.runs import Run


def collect_metrics(run: Run) -> tuple[dict, dict]:
    """{strategy: macro means} and {strategy: {user: {metric: mean}}} of every evaluated
    strategy, in the order they were trained."""
    order = run.read_json("strategies.json") or []
    found = sorted(p.name[: -len("_summary.json")] for p in (run.path / "metrics").glob(
        "*_summary.json"))
    names = [n for n in order if n in found] + [n for n in found if n not in order]
    summary, per_user = {}, {}
    for name in names:
        summary[name] = run.read_json(f"metrics/{name}_summary.json")["macro"]
        per_user[name] = run.read_json(f"metrics/{name}_per_user.json")
    return summary, per_user


def report_from_run(run_path: Path) -> Path:
    """Compare every strategy with the reference (eval.reference, else the first one),
    write comparisons.json/csv and the report; returns the path of report.md."""
    run = Run(run_path)
    cfg = load_config(run.path / "config.yaml")
    summary, per_user = collect_metrics(run)
    if not summary:
        raise PersonalError(f"{run.path}: no evaluated strategy (run `personal eval` first)")
    reference = cfg.eval.reference if cfg.eval.reference in summary else next(iter(summary))
    rows = compare(per_user, reference, metric="emb_sim", n_boot=cfg.eval.bootstrap,
                   seed=cfg.train.seed, alpha=cfg.eval.alpha,
                   min_user_score=cfg.eval.min_user_score)
    run.write_json("comparisons.json", rows_as_records(rows))
    ceiling = run.read_json("metrics/noise_ceiling.json")
    md, _ = write_report(summary, per_user, rows, run.path, noise_ceiling=ceiling,
                         reference=reference, min_user_score=cfg.eval.min_user_score,
                         alpha=cfg.eval.alpha, title=f"Personalization results: {run.path.name}")
    # a fleet also records each of its adapters (train/adapters/...): part of the fleet's time
    timings = {u: s for u, s in run.unit_seconds().items() if not u.startswith("train/adapters/")}
    if timings:
        lines = ["", "## Wall time per unit", "", "| unit | seconds |", "|---|---|"]
        lines += [f"| {u} | {s:.1f} |" for u, s in timings.items()]
        lines += plan_time_lines(run.read_json("timings.json"))
        md.write_text(md.read_text(encoding="utf-8") + "\n".join(lines) + "\n", encoding="utf-8")
    return md


def plan_time_lines(plan: Optional[dict]) -> list[str]:
    """The last `personal run`'s wall time; in lanes, units ran side by side, so it is less
    than the sum of its units' times."""
    if not plan or "total_seconds" not in plan:
        return []
    lanes, units = plan.get("lanes", 1), sum(plan.get("units", {}).values())
    side = (f" in {lanes} lanes (its units' times add up to {format_seconds(units)})"
            if lanes > 1 else "")
    return ["", f"The last `personal run` took {format_seconds(plan['total_seconds'])}{side}."]
