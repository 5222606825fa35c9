"""selective: validation decides per user between unified_lora and the candidate, the test
split is never read to decide, the meta-classifier routes users without a decision, and the
predictor puts every answer back in input order.

The strategies' predictors are replaced by fakes that answer with hand-chosen texts (the
exact reference scores emb_sim 1, an unrelated sentence much less), so no adapter is trained
here; the shared matrix (test_strategies.py) trains and predicts for real."""
import dataclasses
import random

import numpy as np
import pytest

from personal.distributed.smoke import smoke_config
from personal.errors import PersonalError
from personal.experiment.context import Context
from personal.strategies import hybrid, selective, unified
from personal.strategies.selective import DECISIONS, META, SelectiveConfig
from personal.strategies.registry import STRATEGIES

WRONG = "The museum opens at nine and the tickets are sold at the door."


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """4 simulated users, one of them cold-start (no training sessions, no adapter)."""
    return smoke_config(tmp_path_factory.mktemp("selective"), users=4, sessions=6,
                        overrides=["data.cold_start=1"])


@pytest.fixture
def ctx(world, tmp_path):
    return Context.create(world, tmp_path / "run")


def fake(monkeypatch, module, tag, answer, seen):
    """Replace the predictor `module` registered: it answers `answer(e)` and records what it
    was asked."""
    def make(ctx, scfg):
        def predict(examples):
            seen.append((tag, list(examples)))
            return [answer(e) for e in examples]
        return predict
    spec = next(s for s in STRATEGIES.values() if s.module == module.__name__)
    monkeypatch.setattr(spec, "predictor", make)


def decided_users(ctx):
    return [p for p in ctx.training_personas() if ctx.examples("val", [p])]


def cold_user(ctx):
    return next(p for p, sp in ctx.splits.items() if sp.cold_start)


def run_decide(ctx, **options):
    """The decide unit as the pipeline runs it (the last stage of `stages`)."""
    scfg = SelectiveConfig(**options)
    unit = selective.stages(ctx, scfg)[-1][0]
    assert unit.name == "selective/decide"
    unit.fn()
    return ctx.run.read_json(DECISIONS), ctx.run.read_json(META)


def test_validation_picks_the_strategy_that_answers_better(ctx, monkeypatch):
    users = decided_users(ctx)
    winner = users[0]  # the candidate is right for this user only, unified for the others
    seen = []
    fake(monkeypatch, unified, "U", lambda e: WRONG if e.persona_id == winner else e.target, seen)
    fake(monkeypatch, hybrid, "H", lambda e: e.target if e.persona_id == winner else WRONG, seen)
    decisions, _ = run_decide(ctx)
    chosen = {p: decisions["users"][p]["chosen"] for p in users}
    assert chosen == {p: "hybrid_lora" if p == winner else "unified_lora" for p in users}
    record = decisions["users"][winner]
    assert record["source"] == "validation"
    assert record["hybrid_lora"]["emb_sim"] == pytest.approx(1.0, abs=1e-4)
    assert record["unified_lora"]["emb_sim"] < 0.6
    assert {"device_precision", "param_f1"} <= set(record["unified_lora"])
    # both strategies answered every sampled turn in one call each
    assert [tag for tag, _ in seen] == ["U", "H"]

    # a margin the candidate cannot clear keeps everybody on the shared adapter
    decisions, _ = run_decide(ctx, margin=1.5)
    assert {decisions["users"][p]["chosen"] for p in users} == {"unified_lora"}


def test_deciding_never_reads_the_test_split(ctx, monkeypatch):
    seen, asked = [], []
    fake(monkeypatch, unified, "U", lambda e: e.target, seen)
    fake(monkeypatch, hybrid, "H", lambda e: WRONG, seen)
    examples = ctx.examples

    def spy(split, personas=None):
        asked.append(split)
        return examples(split, personas)

    monkeypatch.setattr(ctx, "examples", spy)
    run_decide(ctx, val_turns_per_user=2)
    assert "test" not in asked
    by_id = ctx.dataset.by_id()
    for _, exs in seen:
        for e in exs:
            split = ctx.splits[e.persona_id]
            val_ids = {by_id[e.persona_id].sessions[i].session_id for i in split.val}
            assert e.session_id in val_ids and not split.cold_start
        per_user = {p: sum(e.persona_id == p for e in exs) for p in decided_users(ctx)}
        # the sample bounds the cost: at most 2 turns per user, spread over the user's turns
        assert per_user == {p: min(2, len(ctx.examples("val", [p]))) for p in per_user}


@pytest.mark.parametrize("winner", ["hybrid_lora", "unified_lora"])
def test_cold_start_user_is_routed_by_the_meta_classifier(ctx, monkeypatch, winner):
    seen = []
    right, wrong = (lambda e: e.target), (lambda e: WRONG)
    fake(monkeypatch, unified, "U", wrong if winner == "hybrid_lora" else right, seen)
    fake(monkeypatch, hybrid, "H", right if winner == "hybrid_lora" else wrong, seen)
    decisions, meta = run_decide(ctx)
    cold = cold_user(ctx)
    assert cold not in {e.persona_id for _, exs in seen for e in exs}
    # every decided user chose `winner`: one class, so the classifier is that constant
    assert meta["model"] == "constant" and meta["reason"] == "only one class"
    assert meta["constant"] == int(winner == "hybrid_lora") and meta["cv"] is None
    assert decisions["users"][cold] == {"chosen": winner, "source": "meta_classifier",
                                        "probability": float(winner == "hybrid_lora"),
                                        "cold_start": True}
    assert meta["predictions"] == {cold: winner}

    seen.clear()
    tests = ctx.examples("test", [cold])
    answers = selective.predictor(ctx, SelectiveConfig())(tests)
    tag = "H" if winner == "hybrid_lora" else "U"
    assert [t for t, _ in seen] == [tag] and seen[0][1] == tests
    assert answers == [e.target for e in tests]  # the winner's fake answers right


def test_two_classes_fit_a_classifier_and_route_the_rest(ctx, monkeypatch):
    winner = decided_users(ctx)[0]
    fake(monkeypatch, unified, "U", lambda e: WRONG if e.persona_id == winner else e.target, [])
    fake(monkeypatch, hybrid, "H", lambda e: e.target if e.persona_id == winner else WRONG, [])
    decisions, meta = run_decide(ctx)
    assert meta["model"] == "logistic" and meta["class_counts"] == {"0": 2, "1": 1}
    # one user in the smaller class: no stratified fold can hold it out, and it says so
    assert meta["cv"] == {"folds": 0, "skipped": "the smaller class has fewer than 2 users"}
    assert meta["majority_baseline"]["accuracy"] == pytest.approx(2 / 3)
    record = decisions["users"][cold_user(ctx)]
    assert record["source"] == "meta_classifier" and 0.0 < record["probability"] < 1.0
    assert record["chosen"] == ("hybrid_lora" if record["probability"] > 0.5 else "unified_lora")


def test_meta_choices_refit_at_predict_time_repeat_the_recorded_ones(ctx, monkeypatch):
    """Users without a decision (a new population, `personal eval --data`) are routed by the
    meta-classifier fitted again on the run's validation decisions: on the run's own
    cold-start user it repeats what the decide unit recorded."""
    winner = decided_users(ctx)[0]
    fake(monkeypatch, unified, "U", lambda e: WRONG if e.persona_id == winner else e.target, [])
    fake(monkeypatch, hybrid, "H", lambda e: e.target if e.persona_id == winner else WRONG, [])
    decisions, meta = run_decide(ctx)
    cold = cold_user(ctx)
    assert selective.meta_choices(ctx, SelectiveConfig(), [cold]) == {
        cold: decisions["users"][cold]["chosen"]}
    _, probs = selective.meta_route(ctx, SelectiveConfig(), {
        p: u["chosen"] == "hybrid_lora" for p, u in decisions["users"].items()
        if u["source"] == "validation"}, [cold])
    assert probs[cold] == decisions["users"][cold]["probability"]


@pytest.mark.parametrize("model", ["logistic", "gradient_boosting"])
def test_meta_classifier_cross_validation_against_the_majority_baseline(model):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 6)) * [1, 50, 1, 1, 1, 1]  # scales differ: standardized
    labels = (features[:, 0] > 0.3).astype(int)  # learnable from one feature
    scfg = SelectiveConfig(meta_model=model, cv_folds=4)
    report, predict = selective.fit_meta_classifier(features, labels, scfg)
    majority = max(labels.mean(), 1 - labels.mean())
    assert report["majority_baseline"] == {"label": int(labels.mean() > 0.5),
                                           "accuracy": pytest.approx(majority),
                                           "balanced_accuracy": 0.5, "roc_auc": 0.5}
    cv = report["cv"]
    assert cv["folds"] == 4 and cv["accuracy"] > majority + 0.1
    assert cv["balanced_accuracy"] > 0.75 and cv["roc_auc"] > 0.85
    assert ((predict(features) > 0.5) == labels).mean() > 0.9
    again, _ = selective.fit_meta_classifier(features, labels, scfg)
    assert again == report  # seeded folds and model

    # shuffled labels carry nothing: cross-validation must not find much either
    noise = np.random.default_rng(1).permutation(labels)
    assert selective.fit_meta_classifier(features, noise, scfg)[0]["cv"]["roc_auc"] < 0.75


def test_one_class_or_no_decisions_give_the_constant_classifier():
    features = np.random.default_rng(0).normal(size=(5, 3))
    report, predict = selective.fit_meta_classifier(features, np.ones(5, int), SelectiveConfig())
    assert (report["model"], report["constant"], report["reason"]) == ("constant", 1,
                                                                       "only one class")
    assert report["cv"] is None and report["majority_baseline"]["accuracy"] == 1.0
    assert predict(features[:2]).tolist() == [1.0, 1.0]
    report, predict = selective.fit_meta_classifier(np.zeros((0, 3)), np.zeros(0, int),
                                                    SelectiveConfig())
    assert (report["constant"], report["reason"]) == (0, "no validation decisions")
    assert predict(features).tolist() == [0.0] * 5


def test_predictor_reassembles_answers_in_input_order(ctx, monkeypatch):
    users = sorted(ctx.splits)
    choice = {p: ("hybrid_lora" if k % 2 else "unified_lora") for k, p in enumerate(users)}
    ctx.run.write_json(DECISIONS, {"users": {p: {"chosen": c} for p, c in choice.items()}})
    seen = []
    key = lambda e: f"{e.persona_id}/{e.session_id}/{e.turn_index}"  # noqa: E731
    fake(monkeypatch, unified, "U", lambda e: "U " + key(e), seen)
    fake(monkeypatch, hybrid, "H", lambda e: "H " + key(e), seen)
    examples = ctx.examples("test")
    random.Random(0).shuffle(examples)
    answers = selective.predictor(ctx, SelectiveConfig())(examples)
    tag = {"unified_lora": "U", "hybrid_lora": "H"}
    assert answers == [f"{tag[choice[e.persona_id]]} {key(e)}" for e in examples]
    assert sorted(t for t, _ in seen) == ["H", "U"]  # one call per strategy

    stranger = dataclasses.replace(examples[0], persona_id="persona_999")
    with pytest.raises(PersonalError, match="no decision for user persona_999"):
        selective.predictor(ctx, SelectiveConfig())([stranger])


def test_predictor_takes_a_finished_evaluations_predictions_and_only_those(ctx, monkeypatch):
    """Users routed to unified_lora get unified's recorded test predictions (no generation);
    a stale record (other generation settings, or another prompt) is never used."""
    from personal.experiment import pipeline

    users = sorted(ctx.splits)
    ctx.run.write_json(DECISIONS, {"users": {p: {"chosen": "unified_lora"} for p in users}})
    key = lambda e: f"{e.persona_id}/{e.session_id}/{e.turn_index}"  # noqa: E731
    seen = []
    fake(monkeypatch, unified, "U", lambda e: "recorded " + key(e), seen)
    pipeline.evaluate_strategy(ctx, "unified_lora", pipeline.trained_hash(ctx, "unified_lora"))
    assert len(seen) == 1
    fake(monkeypatch, unified, "U", lambda e: "generated " + key(e), seen)
    examples = ctx.examples("test")
    random.Random(1).shuffle(examples)
    answers = selective.predictor(ctx, SelectiveConfig())(examples)
    assert answers == ["recorded " + key(e) for e in examples] and len(seen) == 1

    tampered = dataclasses.replace(examples[0], meta={**examples[0].meta, "time": "midnight"})
    assert selective.predictor(ctx, SelectiveConfig())([tampered]) == ["generated " + key(tampered)]
    # the recorded evaluation is now stale (monkeypatch: the config is the module's)
    monkeypatch.setattr(ctx.cfg.generation, "max_new_tokens", ctx.cfg.generation.max_new_tokens + 1)
    answers = selective.predictor(ctx, SelectiveConfig())(examples)
    assert answers == ["generated " + key(e) for e in examples]


def test_predictor_before_training_names_the_missing_decisions(ctx):
    with pytest.raises(PersonalError, match="decisions.json not found"):
        selective.predictor(ctx, SelectiveConfig())


def test_stages_share_the_trained_units_and_add_the_decision(ctx):
    stages = selective.stages(ctx, SelectiveConfig())
    names = [u.name for stage in stages for u in stage]
    assert len(names) == len(set(names)) and names[-1] == "selective/decide"
    own = {u.name: u.inputs for stage in hybrid.stages(ctx, hybrid.HybridConfig())
           for u in stage}
    mine = {u.name: u.inputs for stage in stages for u in stage}
    assert {n: mine[n] for n in own} == own  # identical units: trained once for both
    assert stages[-1] == [stages[-1][0]]
    other = selective.stages(ctx, SelectiveConfig(margin=0.05))[-1][0]
    assert other.inputs != stages[-1][0].inputs


def test_spread_takes_evenly_spaced_turns():
    assert selective.spread(list(range(10)), 3) == [1, 5, 8]
    assert selective.spread(list(range(3)), 12) == [0, 1, 2]


@pytest.mark.parametrize("options, message", [
    ({"candidate": "selective"}, "candidate must be a personalized adapter strategy"),
    ({"candidate": "unified_lora"}, "candidate must be a personalized adapter strategy"),
    ({"candidate": "nope"}, "unknown strategy 'nope'"),
    ({"val_turns_per_user": 0}, "val_turns_per_user must be >= 1"),
    ({"meta_model": "svm"}, "meta_model must be one of"),
    ({"cv_folds": 1}, "cv_folds must be >= 2"),
])
def test_bad_options_are_named(ctx, options, message):
    with pytest.raises(PersonalError, match=message):
        selective.stages(ctx, SelectiveConfig(**options))
