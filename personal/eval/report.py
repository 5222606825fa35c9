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

from personal.eval.statistics import CRITERIA, ComparisonRow, row_from_dict

TABLE_HEADER = ["strategy", "emb sim", "change vs {ref}", "users improved", "device precision",
                "parameter F1", "worst user", "p (Holm)", "criteria"]
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
    """The study's table as rows of cells (header first)."""
    table = [[h.format(ref=reference) for h in TABLE_HEADER]]
    order = [reference] + [s for s in summary if s != reference]
    for name in order:
        if name not in summary:
            continue
        scores, row = summary[name], rows.get(name)
        worst = row.worst_user_score if row else _worst_user(per_user, name, metric)
        table.append([
            name, fmt(scores.get(metric)),
            fmt(row.mean_delta, signed=True) if row else "(reference)",
            f"{100 * row.share_improved:.1f}%" if row else "\u2014",
            fmt(scores.get("device_precision"), 3), fmt(scores.get("param_f1"), 3),
            fmt(worst, 3), fmt_p(row.p_holm) if row else "\u2014",
            fmt_criteria(row.criteria) if row else "\u2014"])
    if noise_ceiling:
        table.append(["noise ceiling (alt text)", fmt(noise_ceiling.get(metric)), "\u2014",
                      "\u2014", fmt(noise_ceiling.get("device_precision"), 3),
                      fmt(noise_ceiling.get("param_f1"), 3), "\u2014", "\u2014", "\u2014"])
    return table


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


# --- Writing --------------------------------------------------------------------------------

def _legend(min_user_score: float, alpha: float) -> str:
    text = {"improved": CRITERIA["improved"], "mean": CRITERIA["mean"],
            "worst": f"no user below {min_user_score:.2f}", "p": f"Holm-corrected p < {alpha} with a positive mean delta"}
    return "; ".join(f"**{k}**: {v}" for k, v in text.items())


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
                 title: str = "Personalization results") -> tuple[Path, Path]:
    """Write `report.md` and `report.html` into `out_dir`; returns their paths.

    Shapes of the inputs: see the module docstring. `metric` is the metric of the study
    table's first column and of the plots (the one the comparisons were made on).
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
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(_markdown(title, table, details, _legend(min_user_score, alpha), plots),
                       encoding="utf-8")
    html_path.write_text(_html(title, table, details, _legend(min_user_score, alpha), plots),
                         encoding="utf-8")
    return md_path, html_path


def _markdown(title: str, table, details, legend: str, plots) -> str:
    parts = [f"# {title}", "", markdown_table(table), "", f"Criteria: {legend}.", ""]
    if len(details) > 1:
        parts += ["## Statistics against the reference", "", markdown_table(details), ""]
    if plots:
        parts += ["Plots: see report.html (" + ", ".join(name for name, _ in plots) + ").", ""]
    return "\n".join(parts)


_CSS = ("body{font-family:sans-serif;margin:2em;max-width:75em}"
        "table{border-collapse:collapse;margin:1em 0}"
        "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th:first-child,td:first-child{text-align:left}")


def _html(title: str, table, details, legend: str, plots) -> str:
    legend_html = html.escape(legend).replace("**", "")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             html_table(table), f"<p>Criteria: {legend_html}.</p>"]
    if len(details) > 1:
        parts += ["<h2>Statistics against the reference</h2>", html_table(details)]
    for name, png in plots:
        parts += [f"<h2>{html.escape(name)}</h2>",
                  f'<img alt="{html.escape(name)}" src="data:image/png;base64,{png}">']
    return "\n".join(parts + ["</body></html>"])
