"""Render a run's results as `report.md` (the study's table) and `report.html` (tables and
plots embedded as base64 PNG, so the file stands alone).

Inputs are plain dicts, the shapes the runner keeps as JSON/CSV in a run directory:

    summary      {strategy: {metric: macro mean}}                  (metrics.macro_mean)
    per_user     {strategy: {user: {metric: mean}}}                (metrics.per_user_means)
                 ({strategy: {user: score}} also works: the score of `metric`)
    comparisons  {strategy: ComparisonRow or its as_dict()}        (statistics.compare)
    ablations    {name: [(x, value), ...]}                         optional: one curve each
    noise_ceiling {metric: value}                                  optional (alt-text scores)

The reference strategy is taken from the comparison rows (or `reference=`); it is listed
first, every other strategy of `summary` after it in its order.
"""
from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any, Optional, Sequence

from personal.eval.metrics import macro_mean
from personal.eval.statistics import CRITERIA, ComparisonRow, row_from_dict

TABLE_HEADER = ["strategy", "emb sim", "seed sd", "change vs {ref}", "95% CI of change",
                "beats {ref}", "users improved", "device precision", "parameter F1",
                "worst user", "worst change", "p (Holm)", "criteria"]
DETAIL_HEADER = ["strategy", "users", "mean delta", "95% CI of delta", "worst delta (user)",
                 "t", "p (t-test)", "W", "p (Wilcoxon)"]


# --- Formatting -----------------------------------------------------------------------------

def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt(x: Any, digits: int = 4, signed: bool = False) -> str:
    """A number for a table cell; missing or NaN values are an em dash."""
    if _missing(x):
        return "\u2014"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def fmt_p(p: Any) -> str:
    """A p-value: 4 decimals, or `<0.0001` for very small ones."""
    if _missing(p):
        return "\u2014"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def fmt_criteria(criteria: dict[str, bool]) -> str:
    """PASS (4/4), or FAIL (k/4: names of the failed criteria)."""
    if not criteria:
        return "\u2014"
    failed = [name for name, ok in criteria.items() if not ok]
    verdict = "PASS" if not failed else "FAIL"
    detail = f"{len(criteria) - len(failed)}/{len(criteria)}"
    return f"{verdict} ({detail}{': ' + ', '.join(failed) if failed else ''})"


# --- Tables ---------------------------------------------------------------------------------

def _rows(comparisons: dict[str, Any]) -> dict[str, ComparisonRow]:
    return {name: row if isinstance(row, ComparisonRow) else row_from_dict(row)
            for name, row in comparisons.items()}


def _worst_user(per_user: dict[str, Any], strategy: str, metric: str) -> Optional[float]:
    scores = [s for s in _user_scores(per_user.get(strategy, {}), metric).values()
              if not math.isnan(s)]
    return min(scores) if scores else None


def study_table(summary: dict[str, dict[str, float]], per_user: dict[str, Any],
                rows: dict[str, ComparisonRow], reference: str, metric: str = "emb_sim",
                noise_ceiling: Optional[dict[str, float]] = None) -> list[list[str]]:
    """The study's table as rows of cells (header first). `seed sd` is the spread of the
    strategy's mean across seeds (a dash with one seed); `beats` is yes only when the CI of
    the change lies above zero."""
    table = [[h.format(ref=reference) for h in TABLE_HEADER]]
    order = [reference] + [s for s in summary if s != reference]
    ref_spread = next((r.reference_seed_spread for r in rows.values()), None)
    dash = "\u2014"
    for name in order:
        if name not in summary:
            continue
        scores, row = summary[name], rows.get(name)
        worst = row.worst_user_score if row else _worst_user(per_user, name, metric)
        if row:
            change = [fmt(row.seed_spread), fmt(row.mean_delta, signed=True),
                      f"[{fmt(row.ci_low, signed=True)}, {fmt(row.ci_high, signed=True)}]",
                      "yes" if row.beats else "no", f"{100 * row.share_improved:.1f}%"]
        else:
            change = [fmt(ref_spread), "(reference)", dash, dash, dash]
        table.append([
            name, fmt(scores.get(metric))] + change + [
            fmt(scores.get("device_precision"), 3), fmt(scores.get("param_f1"), 3),
            fmt(worst, 3), fmt(row.worst_delta, 3, signed=True) if row else dash,
            fmt_p(row.p_holm) if row else dash,
            fmt_criteria(row.criteria) if row else dash])
    if noise_ceiling:
        table.append(["noise ceiling (alt text)", fmt(noise_ceiling.get(metric))] + [dash] * 5
                     + [fmt(noise_ceiling.get("device_precision"), 3),
                        fmt(noise_ceiling.get("param_f1"), 3)] + [dash] * 4)
    return table


COLD_HEADER = ["strategy", "rule for a new user", "users", "emb sim", "change vs {ref}",
               "users improved", "device precision", "parameter F1"]


def cold_start_table(per_user: dict[str, Any], reference: str, rules: dict[str, str],
                     metric: str = "emb_sim") -> list[list[str]]:
    """Scores on the cold-start users (no training data), with each strategy's documented
    rule for them; a strategy without a rule says it cannot answer a new user."""
    table = [[h.format(ref=reference) for h in COLD_HEADER]]
    ref = _user_scores(per_user.get(reference, {}), metric)
    for name, users in per_user.items():
        scores = _user_scores(users, metric)
        common = [u for u in scores if u in ref and not math.isnan(scores[u] - ref[u])]
        deltas = [scores[u] - ref[u] for u in common]
        macro = macro_mean(users) if users else {}
        table.append([
            name, rules.get(name) or "cannot answer a new user", str(len(scores)),
            fmt(macro.get(metric), 4),
            "(reference)" if name == reference else fmt(_mean(deltas), signed=True),
            "\u2014" if name == reference or not deltas
            else f"{100 * sum(d > 0 for d in deltas) / len(deltas):.1f}%",
            fmt(macro.get("device_precision"), 3), fmt(macro.get("param_f1"), 3)])
    return table


COST_HEADER = ["strategy", "parameters per user", "stored KB per user", "training lane-s",
               "generation s per 1,000 turns", "served p50 ms"]


def cost_table(costs: dict[str, dict[str, Any]]) -> list[list[str]]:
    """The measured cost of each strategy (records of `personal.experiment.cost`)."""
    table = [list(COST_HEADER)]
    for name, c in costs.items():
        p50 = c.get("served_p50_ms")
        table.append([name, f"{c['parameters_per_user']:,.0f}",
                      f"{c['stored_bytes_per_user'] / 1024:,.1f}",
                      f"{c['train_lane_seconds']:,.0f}",
                      f"{c['generation_seconds_per_1000']:,.1f}",
                      "\u2014" if _missing(p50) else f"{p50:.0f}"])
    return table


def _mean(values: Sequence[Any]) -> float:
    kept = [float(v) for v in values if not _missing(v)]
    return sum(kept) / len(kept) if kept else math.nan


def detail_table(rows: dict[str, ComparisonRow]) -> list[list[str]]:
    """Per-strategy statistics behind the study's table (header first)."""
    table = [list(DETAIL_HEADER)]
    for name, r in rows.items():
        table.append([name, str(r.n_users), fmt(r.mean_delta, signed=True),
                      f"[{fmt(r.ci_low, signed=True)}, {fmt(r.ci_high, signed=True)}]",
                      f"{fmt(r.worst_delta, signed=True)} ({r.worst_delta_user})",
                      fmt(r.t_statistic, 3), fmt_p(r.p_ttest), fmt(r.wilcoxon_statistic, 1),
                      fmt_p(r.p_wilcoxon)])
    return table


def markdown_table(table: list[list[str]]) -> str:
    """Cells as a GitHub-flavoured Markdown table."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(table[0]), line(["---"] * len(table[0]))] + [line(r) for r in table[1:]])


def html_table(table: list[list[str]]) -> str:
    """Cells as an HTML table (escaped)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for r in table[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# --- Plots ----------------------------------------------------------------------------------

def _user_scores(users: dict[str, Any], metric: str) -> dict[str, float]:
    return {u: float(v[metric] if isinstance(v, dict) else v) for u, v in users.items()
            if not isinstance(v, dict) or metric in v}


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _grid(n: int, width: float = 4.0, height: float = 3.2):
    # matplotlib (heavy) loads only when a report is drawn; no pyplot: no global backend or state
    from matplotlib.figure import Figure

    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    return fig, [fig.add_subplot(rows, cols, i + 1) for i in range(n)]


def _paired(per_user: dict[str, Any], strategy: str, reference: str, metric: str):
    ref = _user_scores(per_user.get(reference, {}), metric)
    mine = _user_scores(per_user.get(strategy, {}), metric)
    users = [u for u in mine if u in ref and not (math.isnan(mine[u]) or math.isnan(ref[u]))]
    return [ref[u] for u in users], [mine[u] for u in users]


def delta_histograms(per_user: dict[str, Any], strategies: list[str], reference: str,
                     metric: str) -> str:
    """Base64 PNG: per-user delta distribution vs the reference, one panel per strategy."""
    fig, axes = _grid(len(strategies))
    for ax, name in zip(axes, strategies):
        ref, mine = _paired(per_user, name, reference, metric)
        deltas = [m - r for m, r in zip(mine, ref)]
        lo, hi = (min(deltas), max(deltas)) if deltas else (0.0, 0.0)
        if hi - lo < 1e-6:  # (nearly) equal deltas: give the bins a visible width
            lo, hi = lo - 0.01, hi + 0.01
        ax.hist(deltas, bins=20, range=(lo, hi), color="#4C72B0")
        ax.axvline(0.0, color="black", linewidth=1)
        ax.set_title(name)
        ax.set_xlabel(f"{metric} delta vs {reference}")
        ax.set_ylabel("users")
    return _png(fig)


def user_scatter(per_user: dict[str, Any], strategies: list[str], reference: str, metric: str,
                 min_user_score: float) -> str:
    """Base64 PNG: per-user score of each strategy against the reference's (y = x dashed)."""
    fig, axes = _grid(len(strategies), width=3.6, height=3.6)
    for ax, name in zip(axes, strategies):
        ref, mine = _paired(per_user, name, reference, metric)
        ax.scatter(ref, mine, s=10, alpha=0.7, color="#DD8452")
        lo = min(ref + mine + [min_user_score]) - 0.02
        hi = max(ref + mine + [min_user_score]) + 0.02
        ax.plot([lo, hi], [lo, hi], "k--", linewidth=1)
        ax.axhline(min_user_score, color="red", linewidth=0.8, linestyle=":")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_title(name)
        ax.set_xlabel(f"{reference} ({metric})")
        ax.set_ylabel(f"{name} ({metric})")
    return _png(fig)


def ablation_curves(ablations: dict[str, Sequence[tuple[float, float]]], metric: str) -> str:
    """Base64 PNG: one curve per ablation, value against the varied setting."""
    fig, axes = _grid(len(ablations))
    for ax, (name, points) in zip(axes, ablations.items()):
        points = sorted((float(x), float(y)) for x, y in points)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
        ax.set_title(name)
        ax.set_xlabel(name)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    return _png(fig)


def marginal_bars(marginals: dict[str, Sequence[tuple[Any, float]]], metric: str) -> str:
    """Base64 PNG: one panel per ablated setting, the mean `metric` at each of its values
    (over every combination of the others), numeric or not; the panels share a y range so
    their effects compare at a glance."""
    fig, axes = _grid(len(marginals))
    values = [v for points in marginals.values() for _, v in points]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    pad = max((hi - lo) * 0.15, 1e-3)
    for ax, (name, points) in zip(axes, marginals.items()):
        labels = [str(x) for x, _ in points]
        ax.bar(range(len(points)), [v for _, v in points], color="#4C72B0")
        ax.set_xticks(range(len(points)), labels, rotation=30 if len(labels) > 4 else 0)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_title(name.rsplit(".", 1)[-1])
        ax.set_ylabel(f"mean {metric}")
        ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def changed_share_bars(shares: dict[str, Sequence[float]]) -> str:
    """Base64 PNG: one horizontal bar per check (label -> its changed share in each seed),
    the bar at the mean and a dot per seed, so a check that changes nothing reads as no bar."""
    fig, (ax,) = _grid(1, width=6.0, height=0.5 + 0.45 * max(len(shares), 1))
    labels = list(shares)
    ax.barh(range(len(labels)), [_mean(v) for v in shares.values()], color="#4C72B0")
    for i, values in enumerate(shares.values()):
        ax.scatter(values, [i] * len(values), color="black", s=12, zorder=3)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlim(0.0, 1.0)
    ax.invert_yaxis()  # first check on top, as in the table
    ax.set_xlabel("share of test turns whose output changes")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def curve_plot(curves: dict[str, Sequence[tuple[float, float]]], metric: str,
               xlabel: str = "training sessions per user") -> str:
    """Base64 PNG: one line per strategy, score against the varied size (one panel)."""
    fig, (ax,) = _grid(1, width=6.0, height=4.0)
    for name, points in curves.items():
        points = sorted((float(x), float(y)) for x, y in points)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def write_curve_report(curves: dict[str, dict[int, dict[str, float]]], out_dir: str | Path,
                       reference: str, metric: str = "emb_sim",
                       title: str = "Learning curve") -> tuple[Path, Path]:
    """report.md / report.html of a learning curve: {strategy: {n: {metric: score}}} as a
    table (one column per n, the change against `reference` beside each score) and a plot."""
    sizes = sorted({n for points in curves.values() for n in points})
    table = [["strategy"] + [f"{n} sessions" for n in sizes]]
    ref = curves.get(reference, {})
    for name, points in curves.items():
        cells = [name]
        for n in sizes:
            score = points.get(n, {}).get(metric)
            change = "" if name == reference or n not in ref or _missing(score) else \
                f" ({fmt(score - ref[n][metric], signed=True)})"
            cells.append(fmt(score) + change)
        table.append(cells)
    png = curve_plot({name: [(n, p[metric]) for n, p in points.items() if metric in p]
                      for name, points in curves.items()}, metric)
    caption = (f"Mean {metric} over training users at each size (in brackets: the change "
               f"against {reference} at the same size); each size is one run of the plan.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    page = {"title": title, "summary": [caption], "table": table, "details": [[]],
            "extra": [], "plots": [("Learning curve", png)], "legend": ""}
    md, page_html = out / "report.md", out / "report.html"
    md.write_text(_markdown(**page), encoding="utf-8")
    page_html.write_text(_html(**page), encoding="utf-8")
    return md, page_html


# --- Writing --------------------------------------------------------------------------------

def _legend(min_user_score: float, alpha: float, worst_delta_bound: float = -0.02,
            worst_criterion: str = "worst") -> str:
    text = {"improved": CRITERIA["improved"], "mean": CRITERIA["mean"],
            "worst": f"no user below {min_user_score:.2f}",
            "worst_delta": f"no user's change below {worst_delta_bound:+.2f}",
            "p": f"Holm-corrected p < {alpha} with a positive mean delta"}
    applied = {"worst": "worst_delta", "worst_delta": "worst"}[worst_criterion]
    text.pop(applied)
    other = ({"worst_delta": f"no user's change below {worst_delta_bound:+.2f}",
              "worst": f"no user below {min_user_score:.2f}"}[applied])
    return ("; ".join(f"**{k}**: {v}" for k, v in text.items())
            + f" (the worst-user criterion applied is `{worst_criterion}`; the other form, "
            f"{other}, is the `worst change` / `worst user` column). **beats**: the 95% CI of "
            "the change (bootstrap over users, and over seeds when there are several) lies "
            "above zero")


def summary_sentences(rows: dict[str, ComparisonRow], reference: str, metric: str = "emb_sim",
                      notes: Sequence[str] = (),
                      costs: Optional[dict[str, dict[str, Any]]] = None) -> list[str]:
    """The plain-language summary at the top of a report, built from the comparison rows:
    who beats the reference beyond noise (for how many users), who is worse beyond noise,
    who passes every criterion, and what is known about seed noise."""
    rows = _rows(rows)
    if not rows:
        return [f"Only the reference ({reference}) was evaluated: nothing to compare."]
    better = sorted((r for r in rows.values() if r.beats), key=lambda r: -r.mean_delta)
    worse = sorted((r for r in rows.values() if not math.isnan(r.ci_high) and r.ci_high < 0),
                   key=lambda r: r.mean_delta)
    noise = "seeds and users" if any(r.seeds > 1 for r in rows.values()) else "users"

    costs = costs or {}

    def price(name: str) -> str:
        mine, ref = costs.get(name), costs.get(reference)
        if not mine:
            return ""
        text = f", {mine['parameters_per_user']:,.0f} parameters per user"
        if ref and ref.get("train_lane_seconds"):
            text += (f", {mine['train_lane_seconds'] / ref['train_lane_seconds']:.1f}x "
                     f"{reference}'s training time")
        return text

    def item(r: ComparisonRow) -> str:
        return (f"{r.strategy} ({fmt(r.mean_delta, signed=True)} {metric}, CI "
                f"[{fmt(r.ci_low, signed=True)}, {fmt(r.ci_high, signed=True)}], "
                f"{100 * r.share_improved:.0f}% of {r.n_users} users improved"
                f"{price(r.strategy)})")

    out = [(f"Beyond noise (the 95% CI of the change over {noise} above zero), "
            f"{len(better)} of {len(rows)} strategies beat {reference}: "
            + "; ".join(item(r) for r in better) + ".") if better else
           (f"No strategy beats {reference} beyond noise: for none of {len(rows)} does the "
            f"95% CI of the change over {noise} lie above zero.")]
    if worse:
        out.append(f"Worse than {reference} beyond noise: " + ", ".join(
            f"{r.strategy} ({fmt(r.mean_delta, signed=True)})" for r in worse) + ".")
    passed = [r.strategy for r in rows.values() if r.passed]
    out.append("Passing all four criteria: " + (", ".join(passed) if passed else "none") + ".")
    return out + [n for n in notes if n]


def _reference(rows: dict[str, ComparisonRow], summary: dict, reference: Optional[str]) -> str:
    if reference:
        return reference
    refs = {r.reference for r in rows.values()}
    if len(refs) > 1:
        raise ValueError(f"write_report: comparisons use several references: {sorted(refs)}")
    if refs:
        return refs.pop()
    if not summary:
        raise ValueError("write_report: no strategies in the summary")
    return next(iter(summary))


def write_report(summary: dict[str, dict[str, float]], per_user: dict[str, Any],
                 comparisons: dict[str, Any], out_dir: str | Path,
                 ablations: Optional[dict[str, Sequence[tuple[float, float]]]] = None,
                 noise_ceiling: Optional[dict[str, float]] = None,
                 reference: Optional[str] = None, metric: str = "emb_sim",
                 min_user_score: float = 0.70, alpha: float = 0.05,
                 title: str = "Personalization results", worst_delta_bound: float = -0.02,
                 worst_criterion: str = "worst", notes: Sequence[str] = (),
                 extra_tables: Sequence[tuple[str, list[list[str]], str]] = (),
                 costs: Optional[dict[str, dict[str, Any]]] = None,
                 summarize: bool = True,
                 extra_plots: Sequence[tuple[str, str]] = ()) -> tuple[Path, Path]:
    """Write `report.md` and `report.html` into `out_dir`; returns their paths.

    Shapes of the inputs: see the module docstring. `metric` is the metric of the study
    table's first column and of the plots (the one the comparisons were made on).
    `notes` end the summary at the top (seed noise, cold-start users); `extra_tables`
    are (title, cells, caption) sections after the study table (cold-start users, cost);
    `costs` ({strategy: cost record}) price the summary's strategies that beat the reference;
    `summarize=False` leaves the summary out (a sweep's table compares no strategies);
    `extra_plots` are (title, base64 PNG) figures after the standard ones (the swap checks).
    """
    rows = _rows(comparisons)
    ref = _reference(rows, summary, reference)
    table = study_table(summary, per_user, rows, ref, metric, noise_ceiling)
    details = detail_table(rows)
    others = [s for s in rows if s in per_user and ref in per_user]
    plots = []
    if others:
        plots.append(("Per-user delta distribution",
                      delta_histograms(per_user, others, ref, metric)))
        plots.append((f"Per-user {metric} against {ref}",
                      user_scatter(per_user, others, ref, metric, min_user_score)))
    if ablations:
        plots.append(("Ablations", ablation_curves(ablations, metric)))
    plots += list(extra_plots)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md_path, html_path = out / "report.md", out / "report.html"
    summary_lines = summary_sentences(rows, ref, metric, notes, costs) if summarize else []
    page = {"title": title, "summary": summary_lines,
            "table": table, "details": details, "extra": list(extra_tables), "plots": plots,
            "legend": _legend(min_user_score, alpha, worst_delta_bound, worst_criterion)}
    md_path.write_text(_markdown(**page), encoding="utf-8")
    html_path.write_text(_html(**page), encoding="utf-8")
    return md_path, html_path


def _markdown(title: str, summary, table, details, extra, legend: str, plots) -> str:
    parts = [f"# {title}", ""] + [f"- {line}" for line in summary] + \
        ([""] if summary else []) + [markdown_table(table), ""]
    parts += [f"Criteria: {legend}.", ""] if legend else []
    for name, cells, caption in extra:
        parts += [f"## {name}", "", markdown_table(cells), ""] + ([caption, ""] if caption else [])
    if len(details) > 1:
        parts += ["## Statistics against the reference", "", markdown_table(details), ""]
    if plots:
        parts += ["Plots: see report.html (" + ", ".join(name for name, _ in plots) + ").", ""]
    return "\n".join(parts)


_CSS = ("body{font-family:sans-serif;margin:2em;max-width:75em}"
        "table{border-collapse:collapse;margin:1em 0}"
        "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th:first-child,td:first-child{text-align:left}")


def _html(title: str, summary, table, details, extra, legend: str, plots) -> str:
    legend_html = html.escape(legend).replace("**", "").replace("`", "")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             ("<ul class='summary'>" + "".join(f"<li>{html.escape(line)}</li>"
                                               for line in summary) + "</ul>") if summary else "",
             html_table(table)] + ([f"<p>Criteria: {legend_html}.</p>"] if legend else [])
    for name, cells, caption in extra:
        parts += [f"<h2>{html.escape(name)}</h2>", html_table(cells)]
        parts += [f"<p>{html.escape(caption)}</p>"] if caption else []
    if len(details) > 1:
        parts += ["<h2>Statistics against the reference</h2>", html_table(details)]
    for name, png in plots:
        parts += [f"<h2>{html.escape(name)}</h2>",
                  f'<img alt="{html.escape(name)}" src="data:image/png;base64,{png}">']
    return "\n".join(parts + ["</body></html>"])
