"""Statistics of strategies against a reference strategy (default: the unified adapter).

The unit of analysis is the user: each strategy is compared with the reference on the
per-user scores of one metric, paired on the users both have. For every strategy:
per-user deltas, their mean, the share of users improved (delta > 0), the worst user (the
lowest per-user score) and the worst delta, a paired t-test and a Wilcoxon signed-rank test
(two-sided, scipy), a seeded percentile-bootstrap CI of the mean delta, and Holm's
correction across all strategies of one comparison.

The study's four success criteria, each pass/fail:
  improved   more than 60% of users improved;
  mean       the strategy's mean score is above the reference's (on the common users);
  worst      no user of the strategy scores below `min_user_score` (0.70);
  p          the Holm-corrected p-value (two-sided) is below `alpha` (0.05) and the mean
             delta is positive: a significant *improvement*.
Beside the absolute floor (set for a 0.82-level base, so it fails on any small base) the
relative form `worst_delta` is computed too: the worst user's delta against the reference is
not below `worst_delta_bound` (default -0.02). `worst_criterion` says which of the two counts
in the verdict; the other is shown beside it.

Seeds (`compare_seeds`): each strategy trained once per seed. The tests run on the users'
seed-averaged scores; the seed spread is the standard deviation across seeds of the
strategy's mean; the CI of the mean delta is a two-level bootstrap that resamples seeds and
users, so it carries both sources of noise. A strategy *beats* the reference only if that CI
lies above zero.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy import stats

#: Short names and descriptions of the study's success criteria, in display order.
CRITERIA = {
    "improved": "more than 60% of users improved",
    "mean": "mean above the reference's",
    "worst": "no user below the minimum score",
    "p": "significant improvement: Holm-corrected p below alpha, mean delta > 0",
}
#: The relative form of the worst-user criterion (any base), shown beside `worst`.
WORST_DELTA = "worst_delta"
WORST_CRITERIA = ("worst", WORST_DELTA)
SHARE_IMPROVED_NEEDED = 0.60


@dataclass
class ComparisonRow:
    """One strategy against the reference on one metric (plain values: CSV/JSON-able)."""

    strategy: str
    reference: str
    metric: str
    n_users: int  # users both strategies have
    mean: float  # the strategy's mean per-user score on the common users
    reference_mean: float
    mean_delta: float
    share_improved: float  # share of common users with delta > 0
    worst_user: str  # the strategy's user with the lowest score (over all its users)
    worst_user_score: float
    worst_delta_user: str
    worst_delta: float
    t_statistic: float
    p_ttest: float
    wilcoxon_statistic: float
    p_wilcoxon: float
    ci_low: float  # bootstrap CI of the mean delta
    ci_high: float
    test: str = "ttest"  # which test's p-value is Holm-corrected for the criterion
    p_holm: float = float("nan")
    criteria: dict[str, bool] = field(default_factory=dict)
    seeds: int = 1  # seeds the scores were averaged over
    seed_spread: float = float("nan")  # sd across seeds of the strategy's mean (NaN: 1 seed)
    reference_seed_spread: float = float("nan")
    worst_delta_ok: bool = False  # the relative worst-user criterion (see module docstring)
    worst_criterion: str = "worst"  # which worst-user criterion counts in `criteria`

    @property
    def beats(self) -> bool:
        """Beats the reference beyond noise: the CI of the mean delta lies above zero (with
        seeds, the two-level bootstrap over seeds and users)."""
        return not math.isnan(self.ci_low) and self.ci_low > 0

    @property
    def passed(self) -> bool:
        """All four success criteria pass."""
        return bool(self.criteria) and all(self.criteria.values())

    def as_dict(self) -> dict[str, Any]:
        """Flat dict for CSV/JSON (criteria as `criterion_<name>` columns, plus `passed`)."""
        out = asdict(self)
        out.update({f"criterion_{k}": v for k, v in out.pop("criteria").items()})
        out["passed"] = self.passed
        out["beats"] = self.beats
        return out


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order.

    Sorted ascending, the i-th smallest (0-based) of m is multiplied by (m - i), made
    non-decreasing by a running maximum and capped at 1. A NaN p-value counts as 1.
    """
    p = np.array([1.0 if (v is None or math.isnan(v)) else float(v) for v in p_values])
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, (m - rank) * p[idx])
        adjusted[idx] = min(1.0, running)
    return adjusted.tolist()


def paired_tests(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, float]:
    """(t statistic, p, Wilcoxon statistic, p) of paired scores a vs b, two-sided (scipy).

    All-zero differences give p = 1 for both (no difference at all; scipy would fail or
    return NaN); fewer than two users give NaN.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2:
        return math.nan, math.nan, math.nan, math.nan
    if np.all(a - b == 0):
        return 0.0, 1.0, 0.0, 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant deltas: t is infinite
        t = stats.ttest_rel(a, b)
        w = stats.wilcoxon(a, b)
    return float(t.statistic), float(t.pvalue), float(w.statistic), float(w.pvalue)


def bootstrap_ci(deltas: np.ndarray, n_boot: int = 2000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) CI of the mean, resampling users with `seed`."""
    if len(deltas) == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = deltas[rng.integers(0, len(deltas), size=(n_boot, len(deltas)))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def two_level_bootstrap_ci(deltas: np.ndarray, n_boot: int = 2000, seed: int = 0,
                           alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of a (seeds x users) delta matrix, resampling
    seeds and users independently with replacement (`seed` seeds the resampling): the
    interval holds the user-to-user and the seed-to-seed variation. One seed row reduces to
    `bootstrap_ci` over users."""
    deltas = np.asarray(deltas, dtype=float)
    if deltas.ndim != 2 or deltas.size == 0:
        return math.nan, math.nan
    n_seeds, n_users = deltas.shape
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for b in range(n_boot):
        rows = rng.integers(0, n_seeds, size=n_seeds)
        cols = rng.integers(0, n_users, size=n_users)
        means[b] = deltas[np.ix_(rows, cols)].mean()
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _scores(per_user: dict[str, Any], metric: str, strategy: str) -> dict[str, float]:
    """{user: score}: values are scores, or {metric: score} dicts (per_user_means output)."""
    out = {}
    for user, value in per_user.items():
        if isinstance(value, dict):
            if metric not in value:
                raise ValueError(f"compare: strategy {strategy!r}, user {user!r} has no "
                                 f"{metric!r} score (has: {', '.join(value)})")
            value = value[metric]
        out[str(user)] = float(value)
    return out


def _row(strategy: str, scores: dict[str, float], ref: dict[str, float], reference: str,
         metric: str, n_boot: int, seed: int, alpha: float) -> ComparisonRow:
    users = [u for u in scores if u in ref and not (math.isnan(scores[u]) or math.isnan(ref[u]))]
    if not users:
        raise ValueError(f"compare: strategy {strategy!r} has no user in common with "
                         f"the reference {reference!r}")
    a = np.array([scores[u] for u in users])
    b = np.array([ref[u] for u in users])
    deltas = a - b
    valid = {u: s for u, s in scores.items() if not math.isnan(s)}
    worst_user = min(valid, key=valid.get)
    t, p_t, w, p_w = paired_tests(a, b)
    low, high = bootstrap_ci(deltas, n_boot, seed, alpha)
    k = int(np.argmin(deltas))
    return ComparisonRow(
        strategy=strategy, reference=reference, metric=metric, n_users=len(users),
        mean=float(a.mean()), reference_mean=float(b.mean()), mean_delta=float(deltas.mean()),
        share_improved=float(np.mean(deltas > 0)), worst_user=worst_user,
        worst_user_score=valid[worst_user], worst_delta_user=users[k],
        worst_delta=float(deltas[k]), t_statistic=t, p_ttest=p_t, wilcoxon_statistic=w,
        p_wilcoxon=p_w, ci_low=low, ci_high=high)


def compare(per_user_scores: dict[str, dict[str, Any]], reference: str,
            metric: str = "emb_sim", n_boot: int = 2000, seed: int = 0, alpha: float = 0.05,
            min_user_score: float = 0.70, test: str = "ttest",
            worst_delta_bound: float = -0.02,
            worst_criterion: str = "worst") -> dict[str, ComparisonRow]:
    """Compare every strategy with `reference` on `metric`, per user.

    `per_user_scores` is {strategy: {user: score}} or {strategy: {user: {metric: score}}}
    (the output of `personal.eval.metrics.per_user_means` per strategy). Returns
    {strategy: ComparisonRow} for every strategy but the reference, with Holm's correction
    over all of them applied to the p-values of `test` ("ttest" or "wilcoxon").
    `worst_criterion` ("worst": no user below `min_user_score`; "worst_delta": no user's
    delta below `worst_delta_bound`) is the worst-user criterion the verdict applies.
    """
    if worst_criterion not in WORST_CRITERIA:
        raise ValueError(f"compare: worst_criterion must be one of {WORST_CRITERIA}, got "
                         f"{worst_criterion!r}")
    if reference not in per_user_scores:
        raise ValueError(f"compare: reference strategy {reference!r} not among "
                         f"{', '.join(per_user_scores) or 'no strategies'}")
    if test not in ("ttest", "wilcoxon"):
        raise ValueError(f"compare: test must be 'ttest' or 'wilcoxon', got {test!r}")
    ref = _scores(per_user_scores[reference], metric, reference)
    rows = {name: _row(name, _scores(users, metric, name), ref, reference, metric,
                       n_boot, seed, alpha)
            for name, users in per_user_scores.items() if name != reference}
    adjusted = holm([getattr(r, f"p_{test}") for r in rows.values()])
    for row, p in zip(rows.values(), adjusted):
        row.test, row.p_holm = test, p
        row.worst_delta_ok = row.worst_delta >= worst_delta_bound
        row.worst_criterion = worst_criterion
        row.criteria = criteria(row, alpha, min_user_score, worst_criterion)
    return rows


def seed_average(per_user_scores: dict[str, dict[str, Any]], metric: str = "emb_sim"
                 ) -> dict[str, float]:
    """{user: score} of one strategy averaged over seeds, from {seed: {user: score or
    {metric: score}}}; only users scored (not NaN) in every seed are kept."""
    per_seed = [_scores(users, metric, f"seed {s}") for s, users in per_user_scores.items()]
    common = [u for u in per_seed[0] if all(u in d and not math.isnan(d[u]) for d in per_seed)]
    return {u: float(np.mean([d[u] for d in per_seed])) for u in common}


def seed_spread(macro_by_seed: Sequence[float]) -> float:
    """Standard deviation (ddof 1) across seeds of a strategy's mean; NaN with one seed."""
    values = [float(v) for v in macro_by_seed]
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def compare_seeds(per_seed: dict[Any, dict[str, dict[str, Any]]], reference: str,
                  metric: str = "emb_sim", n_boot: int = 2000, seed: int = 0,
                  alpha: float = 0.05, min_user_score: float = 0.70, test: str = "ttest",
                  worst_delta_bound: float = -0.02,
                  worst_criterion: str = "worst") -> dict[str, ComparisonRow]:
    """`compare` over several seeds: {seed: {strategy: {user: score}}} in, one row per
    strategy out. Per-user scores are averaged over the seeds (users scored in every seed);
    the paired tests, Holm, deltas and criteria run on those averages; the CI is the
    two-level bootstrap over (seeds x users) of the per-seed deltas; `seed_spread` is the sd
    across seeds of the strategy's mean over the common users. A strategy missing from a
    seed is an error (its seeds would not be paired with the reference's)."""
    seeds = list(per_seed)
    if not seeds:
        raise ValueError("compare_seeds: no seeds")
    names = list(per_seed[seeds[0]])
    for s in seeds:
        if set(per_seed[s]) != set(names):
            raise ValueError(f"compare_seeds: seed {s} has strategies "
                             f"{sorted(per_seed[s])}, seed {seeds[0]} has {sorted(names)}")
    averaged = {n: seed_average({s: per_seed[s][n] for s in seeds}, metric) for n in names}
    rows = compare(averaged, reference, metric, n_boot, seed, alpha, min_user_score, test,
                   worst_delta_bound, worst_criterion)
    ref_spread = _spread(per_seed, reference, averaged[reference], metric)
    for name, row in rows.items():
        users = [u for u in averaged[name] if u in averaged[reference]]
        deltas = np.array([[_scores(per_seed[s][name], metric, name)[u]
                            - _scores(per_seed[s][reference], metric, reference)[u]
                            for u in users] for s in seeds])
        row.ci_low, row.ci_high = two_level_bootstrap_ci(deltas, n_boot, seed, alpha)
        row.seeds, row.reference_seed_spread = len(seeds), ref_spread
        row.seed_spread = _spread(per_seed, name, averaged[name], metric)
    return rows


def _spread(per_seed: dict, name: str, users: dict[str, float], metric: str) -> float:
    """Seed spread of `name`'s mean over `users` (the users every seed scored)."""
    means = [np.mean([_scores(per_seed[s][name], metric, name)[u] for u in users])
             for s in per_seed]
    return seed_spread(means)


def criteria(row: ComparisonRow, alpha: float = 0.05, min_user_score: float = 0.70,
             worst_criterion: str = "worst") -> dict[str, bool]:
    """The study's four success criteria for one comparison row (see CRITERIA); the
    worst-user one is `worst` (absolute floor) or `worst_delta` (relative bound)."""
    worst = (row.worst_user_score >= min_user_score if worst_criterion == "worst"
             else row.worst_delta_ok)
    return {
        "improved": row.share_improved > SHARE_IMPROVED_NEEDED,
        "mean": row.mean > row.reference_mean,
        worst_criterion: worst,
        # a significant difference counts only in the direction of improvement
        "p": (not math.isnan(row.p_holm)) and row.p_holm < alpha and row.mean_delta > 0,
    }


def rows_as_records(rows: dict[str, ComparisonRow]) -> list[dict[str, Any]]:
    """Comparison rows as flat dicts, one per strategy (for CSV / JSON)."""
    return [row.as_dict() for row in rows.values()]


def row_from_dict(values: dict[str, Any]) -> ComparisonRow:
    """Rebuild a ComparisonRow from `as_dict()` output (e.g. read back from JSON)."""
    values = dict(values)
    values.pop("passed", None)
    values.pop("beats", None)
    crit = {k[len("criterion_"):]: bool(values.pop(k)) for k in list(values)
            if k.startswith("criterion_")}
    if isinstance(values.get("criteria"), dict):
        crit = values.pop("criteria")
    return ComparisonRow(**values, criteria=crit)

