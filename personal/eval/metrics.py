"""Metrics, registered with their direction and aggregation (lm-evaluation-harness style).

Every metric scores one example: a predicted assistant turn against the reference turn
(and, for the `*_gold` metrics, against the gold actions the simulator knows). A metric is
either per example, `fn(pair) -> float`, or batched, `fn(pairs) -> list[float]` (embedding
similarity encodes all texts in one go).

Action metrics compare the actions the parser (`personal.eval.parser`) reads from the
prediction with those read from the reference (or with gold actions):
- device_precision / recall / f1 over the sets of devices that have a parameter;
- param_precision / recall / f1 over (device, parameter, value) triples: categorical and
  boolean values match exactly, numbers when |pred - ref| <= tolerance (0: exactly);
- numeric_precision (share matching within tolerance) and numeric_mae (mean absolute
  error) over the numeric parameters present in both.

Edge cases (the convention of the study: saying nothing where nothing was to be said is
right):
- prediction and reference both without actions: precision = recall = F1 = 1.0;
- precision is NaN when the prediction has no actions but the reference has (nothing was
  claimed), recall is NaN when the reference has none but the prediction has; F1 is then 0;
- numeric metrics are NaN when no numeric parameter is in both;
- every `*_gold` metric is NaN when the example has no gold actions.
NaN means "undefined for this example": aggregation is NaN-aware (`numpy.nanmean`), so an
average is over the examples where the metric is defined.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, Callable, Optional, Sequence

import numpy as np

from personal.data.embed import cosine_pairs
from personal.data.schema import DEVICES, IntParam
from personal.eval.parser import Actions, clean_actions, parse_actions

NAN = float("nan")


@dataclass(frozen=True)
class Metric:
    """A registered metric: how to compute it, which way is better, how to aggregate it."""

    name: str
    fn: Callable
    higher_is_better: bool = True
    aggregation: str = "mean"
    batched: bool = False


#: name -> Metric, in registration order.
METRICS: dict[str, Metric] = {}

#: NaN-aware aggregations: a NaN example is undefined, not zero.
AGGREGATIONS: dict[str, Callable[[np.ndarray], float]] = {
    "mean": lambda v: _nan_reduce(np.nanmean, v),
    "median": lambda v: _nan_reduce(np.nanmedian, v),
}


def _nan_reduce(fn: Callable, values) -> float:
    values = np.asarray(values, dtype=float)
    if values.size == 0 or np.all(np.isnan(values)):
        return NAN
    return float(fn(values))


def register_metric(name: str, higher_is_better: bool = True, aggregation: str = "mean",
                    batched: bool = False) -> Callable:
    """Decorator: register `fn` as metric `name` (batched: it takes and returns lists)."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"metric {name!r}: unknown aggregation {aggregation!r} "
                         f"(known: {', '.join(AGGREGATIONS)})")

    def decorate(fn: Callable) -> Callable:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is already registered")
        METRICS[name] = Metric(name, fn, higher_is_better, aggregation, batched)
        return fn

    return decorate


@dataclass
class Pair:
    """One example to score; parsed actions are computed once, on first use."""

    prediction: str
    reference: str
    gold: Optional[dict] = None
    tolerance: float = 0.0

    @cached_property
    def predicted_actions(self) -> Actions:
        return parse_actions(self.prediction)

    @cached_property
    def reference_actions(self) -> Actions:
        return parse_actions(self.reference)


# --- Comparing two action dicts -------------------------------------------------------------

def _values_match(a: Any, b: Any, tolerance: float) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, str) or isinstance(b, str):
        return a == b
    return abs(a - b) <= tolerance


def _flat(actions: Optional[dict]) -> dict[tuple[str, str], Any]:
    return {(d, p): v for d, params in clean_actions(actions).items() for p, v in params.items()}


def prf(matched: int, n_pred: int, n_ref: int) -> tuple[float, float, float]:
    """Precision, recall, F1 from counts, with this module's edge-case convention."""
    if n_pred == 0 and n_ref == 0:
        return 1.0, 1.0, 1.0
    precision = matched / n_pred if n_pred else NAN
    recall = matched / n_ref if n_ref else NAN
    return precision, recall, 2 * matched / (n_pred + n_ref)


def device_scores(pred: Optional[dict], ref: Optional[dict]) -> tuple[float, float, float]:
    """(precision, recall, F1) of the set of devices set in `pred` against `ref`."""
    p, r = set(clean_actions(pred)), set(clean_actions(ref))
    return prf(len(p & r), len(p), len(r))


def param_scores(pred: Optional[dict], ref: Optional[dict],
                 tolerance: float = 0.0) -> tuple[float, float, float]:
    """(precision, recall, F1) over (device, parameter, value) triples."""
    p, r = _flat(pred), _flat(ref)
    matched = sum(1 for k in p.keys() & r.keys() if _values_match(p[k], r[k], tolerance))
    return prf(matched, len(p), len(r))


def numeric_scores(pred: Optional[dict], ref: Optional[dict],
                   tolerance: float = 0.0) -> tuple[float, float]:
    """(share within tolerance, mean absolute error) over numeric parameters set in both."""
    p, r = _flat(pred), _flat(ref)
    common = [k for k in p.keys() & r.keys() if isinstance(DEVICES[k[0]].get(k[1]), IntParam)]
    if not common:
        return NAN, NAN
    errors = [abs(p[k] - r[k]) for k in common]
    return sum(e <= tolerance for e in errors) / len(errors), float(np.mean(errors))


# --- The registered metrics -----------------------------------------------------------------

@register_metric("emb_sim", batched=True)
def emb_sim(pairs: Sequence[Pair]) -> list[float]:
    """Cosine similarity of all-MiniLM-L6-v2 embeddings (one encoder call for the batch)."""
    return [float(x) for x in cosine_pairs([p.prediction for p in pairs],
                                           [p.reference for p in pairs])]


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer  # heavy (nltk, ~1 s): loaded on first use only

    return rouge_scorer.RougeScorer(["rougeL"])


@register_metric("rouge_l")
def rouge_l(pair: Pair) -> float:
    """ROUGE-L F-measure (rouge-score library, its default tokenizer, no stemming)."""
    return float(_rouge().score(pair.reference, pair.prediction)["rougeL"].fmeasure)


def _register_action_metrics(suffix: str, target: Callable[[Pair], Optional[dict]]) -> None:
    """device_* / param_* / numeric_* against the parsed reference or the gold actions."""
    def against(scores: Callable, index: int, tolerant: bool) -> Callable[[Pair], float]:
        def metric(pair: Pair) -> float:
            ref = target(pair)
            if ref is None:
                return NAN
            args = (pair.predicted_actions, ref) + ((pair.tolerance,) if tolerant else ())
            return float(scores(*args)[index])
        return metric

    for i, part in enumerate(("precision", "recall", "f1")):
        register_metric(f"device_{part}{suffix}")(against(device_scores, i, False))
        register_metric(f"param_{part}{suffix}")(against(param_scores, i, True))
    register_metric(f"numeric_precision{suffix}")(against(numeric_scores, 0, True))
    register_metric(f"numeric_mae{suffix}", higher_is_better=False)(
        against(numeric_scores, 1, True))


_register_action_metrics("", lambda pair: pair.reference_actions)
_register_action_metrics("_gold", lambda pair: pair.gold)


# --- Scoring and aggregating ----------------------------------------------------------------

def _check_names(metrics: Optional[Sequence[str]]) -> list[str]:
    names = list(METRICS) if metrics is None else list(metrics)
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)} (known: {', '.join(METRICS)})")
    return names


def score_examples(predictions: Sequence[str], references: Sequence[str],
                   golds: Optional[Sequence[Optional[dict]]] = None, tolerance: float = 0.0,
                   metrics: Optional[Sequence[str]] = None) -> list[dict[str, float]]:
    """Per-example scores: one {metric: value} dict per (prediction, reference) pair.

    `golds[i]` is the gold actions of example i or None (its `*_gold` metrics are NaN);
    `tolerance` is the absolute tolerance for numeric parameters; `metrics` limits the
    metrics computed (default: all registered).
    """
    if len(predictions) != len(references):
        raise ValueError(f"score_examples: {len(predictions)} predictions vs "
                         f"{len(references)} references")
    if golds is not None and len(golds) != len(references):
        raise ValueError(f"score_examples: {len(golds)} gold actions vs "
                         f"{len(references)} references")
    if tolerance < 0:
        raise ValueError(f"score_examples: tolerance must be >= 0, got {tolerance}")
    names = _check_names(metrics)
    golds = golds if golds is not None else [None] * len(references)
    pairs = [Pair(p, r, g, tolerance) for p, r, g in zip(predictions, references, golds)]
    records: list[dict[str, float]] = [{} for _ in pairs]
    for name in names:
        metric = METRICS[name]
        values = metric.fn(pairs) if metric.batched else [metric.fn(p) for p in pairs]
        for record, value in zip(records, values):
            record[name] = float(value)
    return records


def per_user_means(records: Sequence[dict[str, Any]],
                   key: str = "persona_id") -> dict[str, dict[str, float]]:
    """{user: {metric: aggregate over the user's examples}} for the registered metrics found
    in `records` (other fields, e.g. texts, are ignored); users in first-seen order."""
    by_user: dict[str, list[dict[str, Any]]] = {}
    for i, record in enumerate(records):
        if key not in record:
            raise ValueError(f"per_user_means: record {i} has no {key!r} field")
        by_user.setdefault(str(record[key]), []).append(record)
    names = [m for m in METRICS if any(m in r for r in records)]
    return {user: {m: _aggregate(m, [r.get(m, NAN) for r in rows]) for m in names}
            for user, rows in by_user.items()}


def macro_mean(per_user: dict[str, dict[str, float]]) -> dict[str, float]:
    """{metric: aggregate over users} of per-user scores: every user counts once."""
    names = list(dict.fromkeys(m for scores in per_user.values() for m in scores))
    return {m: _aggregate(m, [scores.get(m, NAN) for scores in per_user.values()])
            for m in names}


def _aggregate(name: str, values: Sequence[float]) -> float:
    how = METRICS[name].aggregation if name in METRICS else "mean"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return AGGREGATIONS[how](np.asarray(values, dtype=float))


def noise_ceiling(references: Sequence[str], alt_texts: Sequence[Optional[str]],
                  users: Optional[Sequence[str]] = None,
                  golds: Optional[Sequence[Optional[dict]]] = None, tolerance: float = 0.0,
                  metrics: Optional[Sequence[str]] = None) -> dict[str, float]:
    """The same metrics with an independent re-phrasing (`alt_text`) as the prediction: the
    best score a perfect model could expect. Examples without an alt text are left out;
    with `users`, per-user means are macro-averaged like the strategies' scores."""
    if len(alt_texts) != len(references):
        raise ValueError(f"noise_ceiling: {len(alt_texts)} alt texts vs "
                         f"{len(references)} references")
    keep = [i for i, alt in enumerate(alt_texts) if alt is not None]
    if not keep:
        return {m: NAN for m in _check_names(metrics)}
    records = score_examples([alt_texts[i] for i in keep], [references[i] for i in keep],
                             [golds[i] for i in keep] if golds is not None else None,
                             tolerance, metrics)
    if users is None:
        return {m: _aggregate(m, [r[m] for r in records]) for m in records[0]}
    for i, record in zip(keep, records):
        record["_user"] = users[i]
    return macro_mean(per_user_means(records, key="_user"))


def is_better(name: str, a: float, b: float) -> bool:
    """Whether score `a` beats `b` on metric `name` (False when either is NaN)."""
    if math.isnan(a) or math.isnan(b):
        return False
    return a > b if METRICS[name].higher_is_better else a < b
