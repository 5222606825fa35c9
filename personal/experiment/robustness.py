"""Do the verdicts survive a change of data? The same plan's runs on two (or more)
populations, strategy by strategy.

A strategy's verdict in one run is read from its comparison with the reference
(`comparisons.json`, written with every report): `beats` when the 95% CI of the change lies
above zero (over users, and over seeds in a seeds run), `worse` when it lies below, `no
difference` otherwise. It *holds* when every run gives the same verdict.

    personal data synth --users 40 --sessions 20 --seed 1 --out data/second
    personal run --data data/second --run runs/second
    personal robustness runs/main runs/second
"""
from __future__ import annotations

import math
from pathlib import Path

from personal.errors import PersonalError
from personal.experiment.runs import Run

VERDICTS = ("beats", "worse", "no difference")


def verdict(row: dict) -> str:
    """`beats`, `worse` or `no difference` from one comparison row's CI of the change."""
    low, high = row.get("ci_low", math.nan), row.get("ci_high", math.nan)
    if low is not None and not math.isnan(low) and low > 0:
        return "beats"
    if high is not None and not math.isnan(high) and high < 0:
        return "worse"
    return "no difference"


def _comparisons(path: Path) -> list[dict]:
    rows = Run(path).read_json("comparisons.json")
    if rows is None:
        raise PersonalError(f"{path}: no comparisons.json (not a reported run: run "
                            f"`personal report {path}` first)")
    if not rows:
        raise PersonalError(f"{path}: its report compares no strategy with a reference")
    return rows


def robustness(runs: list[Path]) -> dict:
    """{"reference", "runs", "rows": [{strategy, per_run: [{change, ci, verdict, users}],
    holds}]} over the strategies every run compared; an error names a run without a report
    or runs with different references."""
    if len(runs) < 2:
        raise PersonalError("robustness needs at least two runs (the same plan on two "
                            "populations)")
    tables = {p: {r["strategy"]: r for r in _comparisons(p)} for p in runs}
    refs = {p: next(iter(t.values()))["reference"] for p, t in tables.items()}
    if len(set(refs.values())) > 1:
        raise PersonalError("the runs compare against different references: "
                            + ", ".join(f"{p} {r}" for p, r in refs.items()))
    names = [n for n in tables[runs[0]] if all(n in t for t in tables.values())]
    rows = []
    for name in names:
        per_run = [{"run": str(p), "change": tables[p][name]["mean_delta"],
                    "ci": [tables[p][name]["ci_low"], tables[p][name]["ci_high"]],
                    "users": tables[p][name]["n_users"], "seeds": tables[p][name].get("seeds", 1),
                    "verdict": verdict(tables[p][name])} for p in runs]
        rows.append({"strategy": name, "per_run": per_run,
                     "holds": len({r["verdict"] for r in per_run}) == 1})
    missing = sorted({n for t in tables.values() for n in t} - set(names))
    return {"reference": refs[runs[0]], "runs": [str(p) for p in runs], "rows": rows,
            "missing": missing}


def robustness_markdown(result: dict) -> str:
    """The robustness table as Markdown, with a sentence on which verdicts hold."""
    runs = result["runs"]
    head = ["strategy"] + [f"{Path(r).name}: change [95% CI], verdict" for r in runs] + ["holds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        cells = [row["strategy"]] + [
            f"{r['change']:+.4f} [{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}], {r['verdict']}"
            for r in row["per_run"]] + ["yes" if row["holds"] else "**no**"]
        lines.append("| " + " | ".join(cells) + " |")
    held = [r["strategy"] for r in result["rows"] if r["holds"]]
    flipped = [r["strategy"] for r in result["rows"] if not r["holds"]]
    users = ", ".join(f"{Path(r['run']).name} {r['users']} users x {r['seeds']} seed(s)"
                      for r in result["rows"][0]["per_run"]) if result["rows"] else ""
    text = [f"Against {result['reference']} ({users}): the verdict holds on every "
            f"population for {len(held)} of {len(result['rows'])} strategies"
            + (f"; it changes for {', '.join(flipped)}." if flipped else "."), ""]
    if result["missing"]:
        text += [f"Not in every run (left out): {', '.join(result['missing'])}.", ""]
    return "\n".join(text + lines) + "\n"
