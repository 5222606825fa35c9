"""Turn a run directory's metrics files into the study report (report.md + report.html)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np

from personal.config import Config, load_config
from personal.errors import PersonalError
from personal.eval.metrics import macro_mean
from personal.eval.report import (changed_share_bars, cold_start_table, cost_table,
                                  write_curve_report, write_report)
from personal.eval.statistics import compare, compare_seeds, rows_as_records
from personal.experiment.cost import served_p50_ms
from personal.experiment.curve import curve_runs
from personal.experiment.progress import format_seconds
from personal.experiment.runs import Run
from personal.experiment.seeds import seed_runs

SPREAD_FILE = "seed_spread.json"
#: `personal eval RUN --data DIR` writes it (experiment.new_data.RECORD): report that kind.
NEW_DATA_RECORD = "new_data.json"


def collect_metrics(run: Run) -> tuple[dict, dict, set[str]]:
    """{strategy: macro means}, {strategy: {user: {metric: mean}}} of every evaluated
    strategy, in the order they were trained, and the users the run held out of training
    (cold-start users, recorded by each evaluation)."""
    order = run.read_json("strategies.json") or []
    found = sorted(p.name[: -len("_summary.json")] for p in (run.path / "metrics").glob(
        "*_summary.json"))
    names = [n for n in order if n in found] + [n for n in found if n not in order]
    summary, per_user, cold = {}, {}, set()
    for name in names:
        record = run.read_json(f"metrics/{name}_summary.json")
        summary[name] = record["macro"]
        cold |= set(record.get("cold_start_users", []))
        per_user[name] = run.read_json(f"metrics/{name}_per_user.json")
    return summary, per_user, cold


def split_cold(per_user: dict, cold: set[str]) -> tuple[dict, dict, dict]:
    """(macro means over training users, their per-user scores, cold-start users' scores),
    each {strategy: ...}: the study's table compares training users; cold-start users, who
    take each strategy's rule for a new user, get their own table."""
    warm = {n: {u: v for u, v in users.items() if u not in cold} for n, users in per_user.items()}
    coldp = {n: {u: v for u, v in users.items() if u in cold} for n, users in per_user.items()}
    return {n: macro_mean(users) for n, users in warm.items()}, warm, coldp


def _cold_section(cold_per_user: dict, reference: str) -> tuple[list, list[str]]:
    """The cold-start table (as an extra section) and its summary sentence."""
    from personal.strategies.registry import STRATEGIES, load_strategies  # rules, by name

    if not any(cold_per_user.values()):
        return [], ["No cold-start users in this run (data.cold_start=0)."]
    load_strategies()
    rules = {n: STRATEGIES[n].cold_start for n in cold_per_user if n in STRATEGIES}
    table = cold_start_table(cold_per_user, reference, rules)
    means = {name: float(np.nanmean([v["emb_sim"] for v in users.values()]))
             for name, users in cold_per_user.items() if users}
    best = max(means, key=means.get)
    n = len(cold_per_user[best])
    caption = ("Users held out of every training split, scored on their test sessions; each "
               "strategy answers them by its documented rule.")
    sentence = (f"On the {n} cold-start users (no training data) the best is {best} "
                f"({means[best]:.4f} emb sim")
    if reference in means and best != reference:
        sentence += f", {means[best] - means[reference]:+.4f} against {reference}"
    sentence += ")."
    return [("Cold-start users", table, caption)], [sentence]


def collect_costs(run: Run, names: list[str]) -> dict[str, dict]:
    """{strategy: cost record} of the strategies whose evaluation measured one, with the
    served p50 latency added where the strategy was served in this run."""
    out = {}
    for name in names:
        record = run.read_json(f"metrics/{name}_cost.json")
        if record:
            out[name] = {**record, "served_p50_ms": served_p50_ms(run.path, name)}
    return out


COST_CAPTION = ("Measured in this run. Parameters and stored bytes are what the strategy's "
                "units wrote (adapters; stored bytes also count indexes and decisions), shared "
                "ones included, divided by its training users; training lane-seconds add up "
                "its units' wall time, each on one lane.")


def _cost_section(costs: dict[str, dict]) -> list:
    return [("Cost", cost_table(costs), COST_CAPTION)] if costs else []


CHECKS_CAPTION = ("Checks a strategy runs on itself (`diagnostics/<strategy>.json`): that the "
                  "part it personalises is used, what it learned.")


def _diagnostics(run: Run) -> list[tuple[str, dict]]:
    """(strategy, record) of each check the run recorded under diagnostics/, by file name."""
    folder = run.path / "diagnostics"
    paths = sorted(folder.glob("*.json")) if folder.is_dir() else []
    records = [(p.stem, run.read_json(f"diagnostics/{p.name}") or {}) for p in paths]
    return [(rec.get("strategy", stem), rec) for stem, rec in records]


def _checks_section(run: Run, caption: str = CHECKS_CAPTION) -> list:
    """One row per strategy check the run recorded, e.g. the share of turns whose output
    changes when users' prompts are swapped (a prompt the model ignores changes nothing)."""
    rows = [["strategy", "check", "value", "turns", "what it means"]]
    for name, rec in _diagnostics(run):
        for row in rec.get("rows", []):  # a strategy that words its own rows
            rows.append([name, row["check"], row["value"],
                         str(row.get("turns", "")), row.get("meaning", "")])
        if "rows" in rec:
            continue
        value = rec.get("changed_share")
        rows.append([name, rec.get("check", ""),
                     "\u2014" if value is None else f"{value:.1%} changed",
                     str(rec.get("swap_turns", "")), rec.get("meaning") or rec.get("reason", "")])
    return [("Strategy checks", rows, caption)] if len(rows) > 1 else []


SWAP_PLOT = "Swap checks: share of test turns whose output changes"


def swap_shares(runs: list[Run]) -> dict[str, list[float]]:
    """{"strategy: check": [changed share in each run that measured it]} over the runs (a
    seeds run's seeds): the swap checks (users' prompts or vectors exchanged at test time)."""
    shares: dict[str, list[float]] = {}
    for run in runs:
        for name, rec in _diagnostics(run):
            if rec.get("changed_share") is not None:
                label = f"{name}: {rec.get('check', 'swap')}"
                shares.setdefault(label, []).append(float(rec["changed_share"]))
    return shares


def _swap_plots(runs: list[Run]) -> list[tuple[str, str]]:
    shares = swap_shares(runs)
    return [(SWAP_PLOT, changed_share_bars(shares))] if shares else []


def _reference(cfg: Config, summary: dict) -> str:
    return cfg.eval.reference if cfg.eval.reference in summary else next(iter(summary))


def _compare_options(cfg: Config) -> dict:
    e = cfg.eval
    return {"metric": "emb_sim", "n_boot": e.bootstrap, "seed": cfg.train.seed,
            "alpha": e.alpha, "min_user_score": e.min_user_score,
            "worst_delta_bound": e.worst_delta_bound, "worst_criterion": e.worst_criterion}


def _report_options(cfg: Config) -> dict:
    e = cfg.eval
    return {"min_user_score": e.min_user_score, "alpha": e.alpha,
            "worst_delta_bound": e.worst_delta_bound, "worst_criterion": e.worst_criterion}


def report_from_run(run_path: Path) -> Path:
    """Compare every strategy with the reference (eval.reference, else the first one),
    write comparisons.json/csv and the report; returns the path of report.md. A seeds run
    (`seeds.json`) is compared over its seeds and users."""
    run = Run(run_path)
    cfg = load_config(run.path / "config.yaml")
    new_data = run.read_json(NEW_DATA_RECORD)
    if new_data:
        return _report_new_data(run, cfg, new_data)
    subs = seed_runs(run.path)
    if subs:
        return _report_seeds(run, cfg, subs)
    points = curve_runs(run.path)
    if points:
        return _report_curve(run, cfg, points)
    summary, per_user, cold_users = collect_metrics(run)
    if not summary:
        raise PersonalError(f"{run.path}: no evaluated strategy (run `personal eval` first)")
    reference = _reference(cfg, summary)
    summary, per_user, cold = split_cold(per_user, cold_users)
    rows = compare(per_user, reference, **_compare_options(cfg))
    run.write_json("comparisons.json", rows_as_records(rows))
    ceiling = run.read_json("metrics/noise_ceiling.json")
    extra, cold_note = _cold_section(cold, reference)
    costs = collect_costs(run, list(summary))
    extra += _cost_section(costs) + _checks_section(run)
    md, _ = write_report(summary, per_user, rows, run.path, noise_ceiling=ceiling, costs=costs,
                         reference=reference, title=f"Personalization results: {run.path.name}",
                         notes=cold_note + [single_seed_note(run.path, reference)],
                         extra_tables=extra, extra_plots=_swap_plots([run]),
                         **_report_options(cfg))
    # a fleet also records each of its adapters (train/adapters/...): part of the fleet's time
    timings = {u: s for u, s in run.unit_seconds().items() if not u.startswith("train/adapters/")}
    if timings:
        lines = ["", "## Wall time per unit", "", "| unit | seconds |", "|---|---|"]
        lines += [f"| {u} | {s:.1f} |" for u, s in timings.items()]
        lines += plan_time_lines(run.read_json("timings.json"))
        md.write_text(md.read_text(encoding="utf-8") + "\n".join(lines) + "\n", encoding="utf-8")
    return md


def _report_new_data(run: Run, cfg: Config, record: dict) -> Path:
    """The report of `personal eval RUN --data DIR`: every user is new to the run, so every
    row is a cold-start row; the table of users says so, user by user."""
    summary, per_user, cold_users = collect_metrics(run)
    if not summary:
        raise PersonalError(f"{run.path}: no strategy evaluated on the new data yet")
    reference = _reference(cfg, summary)
    rows = compare(per_user, reference, **_compare_options(cfg))
    run.write_json("comparisons.json", rows_as_records(rows))
    extra, _ = _cold_section(per_user, reference)
    extra.append(("Users", users_table(record["users"], per_user[reference]),
                  f"Every user of {record['data']}, as named there and here (ids the run "
                  "also uses are renamed); a user without test turns is not scored."))
    costs = collect_costs(run, list(summary))
    extra += _cost_section(costs)
    users = record["users"].values()
    note = (f"{sum(u['cold_start'] for u in users)} of the {len(users)} users of "
            f"{record['data']} are new to the run {record['run']} (cold-start: all of them, "
            "by design): no strategy trained on them, each answered them by its rule for a "
            f"new user; {len(cold_users)} have test turns and are scored.")
    md, _ = write_report(summary, per_user, rows, run.path, costs=costs, reference=reference,
                         title=f"{Path(record['run']).name} on new data: "
                               f"{Path(record['data']).name}",
                         notes=[note], extra_tables=extra, **_report_options(cfg))
    return md


def users_table(users: dict[str, dict], reference_scores: dict,
                metric: str = "emb_sim") -> list[list[str]]:
    """One row per user of the new data: its id there and here, cold-start or not, its
    scored turns and the reference's score on it."""
    table = [["user in the data", "user here", "cold-start", "test turns",
              f"reference {metric}"]]
    for original, u in users.items():
        score = reference_scores.get(u["id"], {}).get(metric)
        table.append([original, u["id"], "yes" if u["cold_start"] else "no",
                      str(u["test_turns"]), "\u2014" if score is None else f"{score:.4f}"])
    return table


def _report_seeds(run: Run, cfg: Config, subs: dict[int, Path]) -> Path:
    """The report of a seeds run: strategies evaluated in every seed, compared over seeds
    and users; writes comparisons.json and seed_spread.json beside it."""
    per_seed, summaries, colds = {}, {}, {}
    for seed, path in subs.items():
        summary, per_user, cold_users = collect_metrics(Run(path))
        if not summary:
            raise PersonalError(f"{path}: seed {seed} has no evaluated strategy yet "
                                f"(rerun `personal run --seeds ...` into {run.path})")
        summary, per_user, colds[seed] = split_cold(per_user, cold_users)
        per_seed[seed], summaries[seed] = per_user, summary
    names = [n for n in summaries[next(iter(subs))] if all(n in s for s in summaries.values())]
    missing = sorted({n for s in summaries.values() for n in s} - set(names))
    if missing:
        raise PersonalError(f"{run.path}: {', '.join(missing)} not evaluated in every seed "
                            "(rerun the seeds run to finish them)")
    per_seed = {s: {n: per_seed[s][n] for n in names} for s in per_seed}
    summary = {n: _mean_dicts([summaries[s][n] for s in subs]) for n in names}
    per_user = {n: _seed_mean_per_user([per_seed[s][n] for s in subs]) for n in names}
    cold = {n: _seed_mean_per_user([colds[s][n] for s in subs]) for n in names}
    reference = _reference(cfg, summary)
    rows = compare_seeds(per_seed, reference, **_compare_options(cfg))
    run.write_json("comparisons.json", rows_as_records(rows))
    spread = {n: r.seed_spread for n, r in rows.items()}
    spread[reference] = next((r.reference_seed_spread for r in rows.values()), float("nan"))
    run.write_json(SPREAD_FILE, {"seeds": sorted(subs), "metric": "emb_sim",
                                 "spread": spread, "written": time.strftime("%Y-%m-%d %H:%M")})
    ceiling = Run(next(iter(subs.values()))).read_json("metrics/noise_ceiling.json")
    note = (f"{len(subs)} seeds ({', '.join(map(str, sorted(subs)))}): scores are means over "
            f"seeds; the seed spread of {reference} is {spread[reference]:.4f} emb sim.")
    extra, cold_note = _cold_section(cold, reference)
    per_seed_costs = [collect_costs(Run(p), names) for p in subs.values()]
    costs = {n: {**_mean_dicts([c[n] for c in per_seed_costs]),
                 "served_p50_ms": per_seed_costs[0][n].get("served_p50_ms")}
             for n in names if all(n in c for c in per_seed_costs)}
    first = min(subs)
    extra += _cost_section(costs) + _checks_section(
        Run(subs[first]), CHECKS_CAPTION + f" Those of seed {first}; every seed's are in "
        "seed-<k>/diagnostics, and the swap figure shows all seeds.")
    md, _ = write_report(summary, per_user, rows, run.path, noise_ceiling=ceiling, costs=costs,
                         reference=reference, notes=cold_note + [note], extra_tables=extra,
                         title=f"Personalization results: {run.path.name} ({len(subs)} seeds)",
                         extra_plots=_swap_plots([Run(subs[s]) for s in sorted(subs)]),
                         **_report_options(cfg))
    return md


def _report_curve(run: Run, cfg: Config, points: dict[int, Path]) -> Path:
    """The learning curve's report: each point's macro scores over its training users."""
    curves: dict[str, dict[int, dict]] = {}
    for n, path in sorted(points.items()):
        summary, per_user, cold_users = collect_metrics(Run(path))
        if not summary:
            raise PersonalError(f"{path}: the {n}-session point has no evaluated strategy yet "
                                f"(rerun `personal run --plan curve` into {run.path})")
        macro, _, _ = split_cold(per_user, cold_users)  # over the point's training users
        for name, scores in macro.items():
            curves.setdefault(name, {})[n] = scores
    run.write_json("curve_scores.json", curves)
    reference = _reference(cfg, curves)
    md, _ = write_curve_report(curves, run.path, reference,
                               title=f"Learning curve: {run.path.name}")
    return md


def _mean_dicts(dicts: list[dict]) -> dict:
    """Key-wise mean of the numeric values of dicts (keys all of them have as numbers)."""
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    keys = [k for k in dicts[0] if all(k in d and number(d[k]) for d in dicts)]
    return {k: float(np.mean([d[k] for d in dicts])) for k in keys}


def _seed_mean_per_user(per_seed: list[dict]) -> dict:
    """{user: {metric: mean over seeds}} for the users every seed scored."""
    users = [u for u in per_seed[0] if all(u in d for d in per_seed)]
    return {u: _mean_dicts([d[u] for d in per_seed]) for u in users}


def single_seed_note(run_path: Path, reference: str) -> str:
    """What a one-seed report says about seed noise: unknown, and the last spread measured
    by a seeds run in this run folder or beside it (the newest `seed_spread.json`)."""
    found = [p for p in [run_path / SPREAD_FILE, *run_path.parent.glob(f"*/{SPREAD_FILE}")]
             if p.is_file()]
    text = ("One seed: the seed spread is unknown, so a change smaller than a few hundredths "
            "may be seed noise (run `personal run --seeds 0,1,2` to measure it).")
    if not found:
        return text
    newest = max(found, key=lambda p: p.stat().st_mtime)
    record = Run(newest.parent).read_json(SPREAD_FILE)
    spread = record.get("spread", {})
    if reference in spread:
        largest = max(spread, key=lambda n: spread[n])
        text += (f" The last measured spread ({newest.parent.name}, seeds "
                 f"{', '.join(map(str, record.get('seeds', [])))}, {record.get('written')}): "
                 f"{reference} {spread[reference]:.4f}, largest {largest} "
                 f"{spread[largest]:.4f} emb sim.")
    return text


def plan_time_lines(plan: Optional[dict]) -> list[str]:
    """The last `personal run`'s wall time; in lanes, units ran side by side, so it is less
    than the sum of its units' times."""
    if not plan or "total_seconds" not in plan:
        return []
    lanes, units = plan.get("lanes", 1), sum(plan.get("units", {}).values())
    side = (f" in {lanes} lanes (its units' times add up to {format_seconds(units)})"
            if lanes > 1 else "")
    return ["", f"The last `personal run` took {format_seconds(plan['total_seconds'])}{side}."]
