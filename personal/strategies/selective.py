"""selective: per user, the unified adapter or a personalized candidate (default hybrid_lora),
whichever answers the user's validation turns better; users without a validation decision
are routed by a meta-classifier on their training-only features.

Stages: the unified adapter's and the candidate's (the same unit names and inputs, so units
another strategy already trained are skipped), then one `selective/decide` unit:
1) both strategies answer an evenly spread sample of each training user's validation turns
   (`val_turns_per_user`: the sample bounds what deciding costs, 2 x users x sample turns);
2) per user, the candidate is chosen when its mean emb_sim beats unified's by more than
   `margin` (device precision and param F1 are kept alongside);
3) a scikit-learn meta-classifier learns "benefits from personalization" (label: the
   validation decision) from `personal.data.features`, is scored by stratified
   cross-validation against the majority-class baseline, and routes the users without a
   decision (cold-start users, users with no validation turns).
It writes `selective/decisions.json` (persona -> chosen strategy, both scores, where the
choice came from) and `selective/meta_classifier.json`. The test split is never read here.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from personal.config import generation_settings, to_dict
from personal.data.features import user_features
from personal.data.schema import Example
from personal.errors import PersonalError
from personal.eval.metrics import per_user_means, score_examples
from personal.hashing import stable_hash
from personal.strategies.registry import (Unit, get_strategy, register_strategy, servable,
                                          strategy_config)
from personal.strategies.routes import UNIFIED, Route, RouteTable

log = logging.getLogger("personal")

REFERENCE = "unified_lora"
DECISIONS = "selective/decisions.json"
META = "selective/meta_classifier.json"
METRIC = "emb_sim"
#: Validation scores kept per user and strategy (the decision uses METRIC only).
SCORES = (METRIC, "device_precision", "param_f1")
META_MODELS = ("logistic", "gradient_boosting")
#: Candidates that cannot stand against the unified adapter.
NOT_CANDIDATES = ("selective", REFERENCE, "base")


@dataclass
class SelectiveConfig:
    """Per-user choice between unified_lora and a candidate, decided on validation turns."""

    candidate: str = "hybrid_lora"
    """The personalized strategy weighed against unified_lora: any registered adapter
    strategy (its own options come from its `strategy.<name>` section)."""
    val_turns_per_user: int = 12
    """Validation turns per user, evenly spread, that both strategies answer to decide:
    bounds the cost of deciding (2 x users x this many generations)."""
    margin: float = 0.0
    """The candidate is chosen when its mean emb_sim beats unified's by more than this
    (ties keep the shared adapter)."""
    meta_model: str = "logistic"
    """Meta-classifier: `logistic` (logistic regression) or `gradient_boosting`; features
    are standardized inside every fit, so cross-validation folds leak no statistics."""
    cv_folds: int = 5
    """Stratified cross-validation folds (fewer when the smaller class has fewer users)."""
    seed: int = 0
    """Seed of the meta-classifier and of its cross-validation folds."""


def check_config(scfg: SelectiveConfig) -> None:
    """PersonalError naming the bad option; an unknown candidate lists the known ones."""
    where = "strategy.selective"
    if scfg.candidate in NOT_CANDIDATES:
        raise PersonalError(f"{where}.candidate must be a personalized adapter strategy, "
                            f"not {scfg.candidate!r}")
    get_strategy(scfg.candidate)
    if scfg.val_turns_per_user < 1:
        raise PersonalError(f"{where}.val_turns_per_user must be >= 1, "
                            f"got {scfg.val_turns_per_user}")
    if scfg.meta_model not in META_MODELS:
        raise PersonalError(f"{where}.meta_model must be one of {', '.join(META_MODELS)}, "
                            f"got {scfg.meta_model!r}")
    if scfg.cv_folds < 2:
        raise PersonalError(f"{where}.cv_folds must be >= 2, got {scfg.cv_folds}")
    if not math.isfinite(scfg.margin):
        raise PersonalError(f"{where}.margin must be a finite number, got {scfg.margin}")


def _options(ctx, name: str):
    spec = get_strategy(name)
    return spec, strategy_config(spec, ctx.cfg.strategy.get(name))


def strategy_predictor(ctx, name: str) -> Callable[[list[Example]], list[str]]:
    """The registered strategy's own predictor, with its options from the run's config."""
    spec, options = _options(ctx, name)
    return spec.predictor(ctx, options)


# --- Stages -------------------------------------------------------------------------------

def merge_stages(*stage_lists: list[list[Unit]]) -> list[list[Unit]]:
    """Stages of several strategies in order, each unit once (the first occurrence): a unit
    named twice must have the same inputs, or the strategies disagree on what it is."""
    seen: dict[str, str] = {}
    out = []
    for stages in stage_lists:
        for stage in stages:
            fresh = []
            for unit in stage:
                if unit.name in seen:
                    if seen[unit.name] != unit.inputs:
                        raise PersonalError(f"unit {unit.name} is declared twice with "
                                            f"different inputs")
                    continue
                seen[unit.name] = unit.inputs
                fresh.append(unit)
            if fresh:
                out.append(fresh)
    return out


def stages(ctx, scfg: SelectiveConfig) -> list[list[Unit]]:
    check_config(scfg)
    trained = merge_stages(*[spec.stages(ctx, options) for spec, options in
                             (_options(ctx, REFERENCE), _options(ctx, scfg.candidate))])
    upstream = [u.inputs for stage in trained for u in stage]
    return trained + [[decide_unit(ctx, scfg, upstream)]]


def decide_unit(ctx, scfg: SelectiveConfig, upstream: list[str]) -> Unit:
    """The `selective/decide` unit; its inputs cover the adapters it compares (`upstream`),
    the validation sample, both strategies' options and generation."""
    sample = validation_sample(ctx, scfg.val_turns_per_user)
    keys = {p: [(e.session_id, e.turn_index) for e in exs] for p, exs in sample.items()}
    d = to_dict(ctx.cfg)
    inputs = stable_hash("selective/decide", ctx.fingerprint, upstream, keys,
                         dataclasses.asdict(scfg), d["strategy"].get(scfg.candidate),
                         generation_settings(ctx.cfg), d["eval"]["numeric_tolerance"],
                         ctx.eval_personas())
    return Unit("selective/decide", inputs, lambda: decide(ctx, scfg), [DECISIONS, META])


# --- Deciding on validation ---------------------------------------------------------------

def spread(items: list, k: int) -> list:
    """At most `k` items evenly spread over `items` (the middle of k equal parts), in order."""
    n = len(items)
    if n <= k:
        return list(items)
    return [items[(2 * i + 1) * n // (2 * k)] for i in range(k)]


def validation_sample(ctx, k: int) -> dict[str, list[Example]]:
    """Up to `k` validation turns of every evaluated training user that has some (cold-start
    users' validation sessions place them, they never decide: no adapter of theirs exists)."""
    personas = [p for p in ctx.eval_personas()
                if p in ctx.splits and not ctx.splits[p].cold_start]
    by_user: dict[str, list[Example]] = {p: [] for p in personas}
    for e in ctx.examples("val", personas):
        by_user[e.persona_id].append(e)
    return {p: spread(exs, k) for p, exs in by_user.items() if exs}


def validation_scores(ctx, name: str, examples: list[Example]) -> dict[str, dict[str, float]]:
    """{user: {metric: mean}} of strategy `name` on `examples` (one predictor call)."""
    texts = strategy_predictor(ctx, name)(examples)
    scores = score_examples(texts, [e.target for e in examples], [e.actions for e in examples],
                            tolerance=ctx.cfg.eval.numeric_tolerance, metrics=list(SCORES))
    return per_user_means([{"persona_id": e.persona_id, **s} for e, s in zip(examples, scores)])


def choose(reference: float, candidate: float, margin: float) -> bool:
    """True when the candidate beats the reference by more than `margin` (NaN never wins)."""
    return bool(candidate - reference > margin)


def decide(ctx, scfg: SelectiveConfig) -> dict:
    """The decide unit's work: validation decisions, the meta-classifier, both JSON files."""
    sample = validation_sample(ctx, scfg.val_turns_per_user)
    examples = [e for exs in sample.values() for e in exs]
    ref = validation_scores(ctx, REFERENCE, examples) if examples else {}
    cand = validation_scores(ctx, scfg.candidate, examples) if examples else {}
    users = {}
    for p, exs in sample.items():
        won = choose(ref[p][METRIC], cand[p][METRIC], scfg.margin)
        users[p] = {"chosen": scfg.candidate if won else REFERENCE, "source": "validation",
                    "val_turns": len(exs), REFERENCE: _clean(ref[p]),
                    scfg.candidate: _clean(cand[p])}
    meta = route_undecided(ctx, scfg, users)
    ctx.run.write_json(DECISIONS, {"reference": REFERENCE, "candidate": scfg.candidate,
                                   "metric": METRIC, "margin": scfg.margin,
                                   "val_turns_per_user": scfg.val_turns_per_user,
                                   "users": users})
    ctx.run.write_json(META, meta)
    summary = {"decided": len(sample), "val_examples": len(examples),
               "chose_candidate": sum(u["chosen"] == scfg.candidate for u in users.values()),
               "meta_routed": len(meta["predictions"]), "meta_model": meta["model"],
               "cv": meta["cv"]}
    log.info("selective: %s", summary)
    return summary


def _clean(scores: dict[str, float]) -> dict[str, Optional[float]]:
    """NaN (undefined, e.g. precision with no predicted actions) as null: valid JSON."""
    return {m: (None if math.isnan(v) else v) for m, v in scores.items()}


def route_undecided(ctx, scfg: SelectiveConfig, users: dict[str, dict]) -> dict:
    """Fit the meta-classifier on the decided users' features and add a `meta_classifier`
    entry to `users` for every other user in the splits; returns the classifier report."""
    decided = {p: u["chosen"] == scfg.candidate for p, u in users.items()}
    others = [p for p in ctx.splits if p not in users]
    report, probs = meta_route(ctx, scfg, decided, others)
    for p, prob in probs.items():
        users[p] = {"chosen": scfg.candidate if prob > 0.5 else REFERENCE,
                    "source": "meta_classifier", "probability": prob,
                    "cold_start": bool(ctx.splits[p].cold_start)}
    report["predictions"] = {p: users[p]["chosen"] for p in probs}
    report["labels"] = {"0": REFERENCE, "1": scfg.candidate}
    return report


def meta_route(ctx, scfg: SelectiveConfig, decided: dict[str, bool], others: list[str]
               ) -> tuple[dict, dict[str, float]]:
    """(classifier report, {user: P(candidate)} for `others`): the meta-classifier fitted on
    the features of the users decided on validation (`decided`: user -> candidate won).
    Deterministic for the same users and seed, so it can be fitted again at predict time for
    users the decide unit never saw (a new population joined by `personal eval --data`)."""
    feats = user_features(ctx.dataset, ctx.splits)
    rows = [i for i, p in enumerate(feats.persona_ids) if p in decided]
    labels = np.array([decided[feats.persona_ids[i]] for i in rows], dtype=int)
    report, predict = fit_meta_classifier(feats.matrix[rows], labels, scfg)
    order = [p for p in feats.persona_ids if p in set(others)]
    probs = predict(feats.matrix[[feats.persona_ids.index(p) for p in order]])
    return report, {p: float(prob) for p, prob in zip(order, probs)}


# --- The meta-classifier ------------------------------------------------------------------

def _model(scfg: SelectiveConfig):
    # sklearn (heavy, ~1 s) loads only when the meta-classifier is fitted, here and below
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if scfg.meta_model == "gradient_boosting":
        clf = GradientBoostingClassifier(random_state=scfg.seed)
    else:
        clf = LogisticRegression(max_iter=1000, random_state=scfg.seed)
    return make_pipeline(StandardScaler(), clf)


def majority_baseline(labels: np.ndarray) -> dict:
    """Always predicting the larger class (ties: 0, the shared adapter)."""
    counts = np.bincount(labels, minlength=2)
    return {"label": int(np.argmax(counts)), "accuracy": float(counts.max() / counts.sum()),
            "balanced_accuracy": 0.5, "roc_auc": 0.5}


def cross_validate(scfg: SelectiveConfig, features: np.ndarray, labels: np.ndarray) -> dict:
    """Out-of-fold accuracy, balanced accuracy and ROC AUC by stratified k-fold (both classes
    present); skipped, with the reason, when the smaller class has fewer than 2 users."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    folds = int(min(scfg.cv_folds, np.bincount(labels, minlength=2).min()))
    if folds < 2:
        return {"folds": 0, "skipped": "the smaller class has fewer than 2 users"}
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=scfg.seed)
    prob = cross_val_predict(_model(scfg), features, labels, cv=cv,
                             method="predict_proba")[:, 1]
    pred = (prob > 0.5).astype(int)
    return {"folds": folds, "accuracy": float(accuracy_score(labels, pred)),
            "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
            "roc_auc": float(roc_auc_score(labels, prob))}


def fit_meta_classifier(features: np.ndarray, labels: np.ndarray, scfg: SelectiveConfig
                        ) -> tuple[dict, Callable[[np.ndarray], np.ndarray]]:
    """(report, predict) where predict(rows) is P(candidate) per row. With one class (or no
    decided users) the classifier is that constant, and the report says so."""
    labels = np.asarray(labels, dtype=int)
    counts = np.bincount(labels, minlength=2)
    report = {"users": int(len(labels)), "features": int(features.shape[1]),
              "class_counts": {"0": int(counts[0]), "1": int(counts[1])}}
    if len(labels) == 0 or counts.min() == 0:
        constant = int(counts[1] > 0)
        reason = "no validation decisions" if len(labels) == 0 else "only one class"
        report.update(model="constant", constant=constant, reason=reason, cv=None,
                      majority_baseline=majority_baseline(labels) if len(labels) else None)
        return report, lambda rows: np.full(len(rows), float(constant))
    report.update(model=scfg.meta_model, seed=scfg.seed,
                  cv=cross_validate(scfg, features, labels),
                  majority_baseline=majority_baseline(labels))
    model = _model(scfg).fit(features, labels)
    return report, lambda rows: (model.predict_proba(rows)[:, 1] if len(rows)
                                 else np.zeros(0))


# --- Predicting -----------------------------------------------------------------------------

def load_routes(ctx) -> dict[str, str]:
    """persona -> chosen strategy, from the run's decisions."""
    decisions = ctx.run.read_json(DECISIONS)
    if decisions is None:
        raise PersonalError(f"{ctx.run.path / DECISIONS} not found; run "
                            f"`personal train selective` first")
    return {p: u["chosen"] for p, u in decisions["users"].items()}


def meta_choices(ctx, scfg: SelectiveConfig, personas: list[str]) -> dict[str, str]:
    """persona -> chosen strategy for users without a decision, by the meta-classifier
    refitted on the run's validation decisions (the decide unit's rule for cold-start
    users)."""
    decisions = ctx.run.read_json(DECISIONS)
    decided = {p: u["chosen"] == decisions["candidate"] for p, u in decisions["users"].items()
               if u["source"] == "validation"}
    _, probs = meta_route(ctx, scfg, decided, personas)
    return {p: decisions["candidate"] if prob > 0.5 else REFERENCE for p, prob in probs.items()}


def predictor(ctx, scfg: SelectiveConfig):
    """Each example answered by its user's chosen strategy: examples grouped by choice, each
    group taken from that strategy's own finished evaluation in this run when it holds them
    (`ctx.recorded_predictions`, which the experiment layer provides), else its predictor
    called once on the group (built on first use); then put back in input order."""
    check_config(scfg)
    routes = load_routes(ctx)
    unseen = [p for p in ctx.eval_personas() if p not in routes]
    if unseen:  # a new population (`personal eval --data`): routed as cold-start users are
        routes.update(meta_choices(ctx, scfg, unseen))
    predictors: dict[str, Callable] = {}

    def route(e: Example) -> str:
        if e.persona_id not in routes:
            raise PersonalError(f"selective: no decision for user {e.persona_id}")
        return routes[e.persona_id]

    def predict(examples: list[Example]) -> list[str]:
        groups: dict[str, list[int]] = {}
        for i, e in enumerate(examples):
            groups.setdefault(route(e), []).append(i)
        out: list[Optional[str]] = [None] * len(examples)
        for name in sorted(groups):
            group = [examples[i] for i in groups[name]]
            texts = ctx.recorded_predictions(name, group)
            if texts is None:
                if name not in predictors:
                    predictors[name] = strategy_predictor(ctx, name)
                texts = predictors[name](group)
            if len(texts) != len(groups[name]):
                raise PersonalError(f"selective: {name} answered {len(texts)} of "
                                    f"{len(groups[name])} examples")
            for i, text in zip(groups[name], texts):
                out[i] = text
        return out

    return predict


def routes(ctx, scfg: SelectiveConfig) -> RouteTable:
    """The unified adapter or the candidate's route, per the run's validation decisions."""
    check_config(scfg)
    spec, options = _options(ctx, scfg.candidate)
    candidate = spec.serving.routes(ctx, options) if spec.serving.servable else None
    if candidate is None or candidate.kind != "lora":
        raise PersonalError(f"selective with candidate {scfg.candidate!r} cannot be served: "
                            "one stack holds the unified LoRA and LoRA candidates only")
    unified = Route.one(UNIFIED)
    users = {p: unified if choice == REFERENCE else candidate.route(p)
             for p, choice in load_routes(ctx).items()}
    return RouteTable("selective", users, unified)


register_strategy("selective", config=SelectiveConfig, stages=stages, predictor=predictor,
                  serving=servable(routes), plans=("phase1",), position=80,
                  expected_seconds={"selective/": 75.0, "eval/selective": 5.0},
                  cold_start="the meta-classifier's choice from the features of the "
                             "sessions the user has")
