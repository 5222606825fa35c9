"""Metrics match hand-computed values, including tolerance and the edge-case convention."""
import math

import pytest

from personal.eval.metrics import (METRICS, is_better, macro_mean, noise_ceiling,
                                   per_user_means, register_metric, score_examples)

ACTION_METRICS = [m for m in METRICS if m not in ("emb_sim",)]

PRED = "I've set the AC to 22 degrees with fan speed 2 and the lights to 40%."
REF = "The AC is at 23 degrees with fan speed 2, and the TV is on Netflix."
GOLD = {"ac": {"temperature": 22, "fan_speed": 2}, "lights": None}


def one(pred, ref, gold=None, tolerance=0.0):
    return score_examples([pred], [ref], [gold], tolerance, metrics=ACTION_METRICS)[0]


def test_registry_has_direction_and_aggregation():
    assert METRICS["emb_sim"].batched and METRICS["emb_sim"].higher_is_better
    assert not METRICS["numeric_mae"].higher_is_better
    assert not METRICS["numeric_mae_gold"].higher_is_better
    for base in ("device_precision", "device_recall", "device_f1", "param_precision",
                 "param_recall", "param_f1", "numeric_precision", "numeric_mae"):
        assert base in METRICS and base + "_gold" in METRICS
    assert is_better("numeric_mae", 0.5, 1.0) and is_better("param_f1", 0.9, 0.8)
    assert not is_better("param_f1", float("nan"), 0.8)


def test_device_and_param_scores_exact():
    s = one(PRED, REF)
    # devices: {ac, lights} vs {ac, tv}
    assert s["device_precision"] == 0.5 and s["device_recall"] == 0.5 and s["device_f1"] == 0.5
    # triples: only (ac, fan_speed, 2) of 3 vs 3 match
    assert math.isclose(s["param_precision"], 1 / 3) and math.isclose(s["param_recall"], 1 / 3)
    assert math.isclose(s["param_f1"], 1 / 3)
    # numeric params in both: temperature (22 vs 23), fan speed (2 vs 2)
    assert s["numeric_precision"] == 0.5 and s["numeric_mae"] == 0.5


def test_tolerance_lets_close_numbers_match():
    s = one(PRED, REF, tolerance=1.0)
    assert math.isclose(s["param_f1"], 2 / 3) and s["numeric_precision"] == 1.0
    assert s["numeric_mae"] == 0.5  # the error itself does not depend on the tolerance


def test_categorical_values_never_use_tolerance():
    s = one("The TV is on HDMI1.", "The TV is on HDMI2.", tolerance=5.0)
    assert s["param_f1"] == 0.0 and s["device_f1"] == 1.0
    assert math.isnan(s["numeric_precision"]) and math.isnan(s["numeric_mae"])


def test_gold_metrics_compare_prediction_with_gold_actions():
    s = one(PRED, REF, GOLD)
    # devices {ac, lights} vs gold {ac} (a null device is untouched)
    assert s["device_precision_gold"] == 0.5 and s["device_recall_gold"] == 1.0
    assert math.isclose(s["device_f1_gold"], 2 / 3)
    assert math.isclose(s["param_precision_gold"], 2 / 3) and s["param_recall_gold"] == 1.0
    assert math.isclose(s["param_f1_gold"], 0.8)
    assert s["numeric_precision_gold"] == 1.0 and s["numeric_mae_gold"] == 0.0


def test_gold_metrics_are_nan_without_gold():
    s = one(PRED, REF, None)
    assert all(math.isnan(s[m]) for m in s if m.endswith("_gold"))


def test_edge_case_convention():
    both_empty = one("Good night, Anna!", "Sleep well!")
    for m in ("device_precision", "device_recall", "device_f1", "param_precision",
              "param_recall", "param_f1"):
        assert both_empty[m] == 1.0
    assert math.isnan(both_empty["numeric_precision"])
    silent = one("Okay!", "Lights at 40%.")  # nothing claimed: precision undefined
    assert math.isnan(silent["device_precision"]) and silent["device_recall"] == 0.0
    assert silent["device_f1"] == 0.0 and math.isnan(silent["param_precision"])
    chatty = one("Lights at 40%.", "Okay!")  # nothing expected: recall undefined
    assert chatty["param_precision"] == 0.0 and math.isnan(chatty["param_recall"])
    assert chatty["param_f1"] == 0.0


def test_rouge_l_hand_value():
    s = score_examples(["the cat sat"], ["the cat sat down"], metrics=["rouge_l"])[0]
    assert math.isclose(s["rouge_l"], 2 * 1.0 * 0.75 / 1.75)  # LCS 3: P = 3/3, R = 3/4


def test_emb_sim_of_identical_strings_is_one():
    s = score_examples(["I've set the AC to 22 degrees.", "Lights at 40%."],
                       ["I've set the AC to 22 degrees.", "Enjoy your movie night!"],
                       metrics=["emb_sim"])
    assert abs(s[0]["emb_sim"] - 1.0) < 1e-5
    assert s[1]["emb_sim"] < 0.9


def test_a_registered_batched_metric_is_scored():
    @register_metric("test_len_ratio", batched=True)
    def len_ratio(pairs):
        return [len(p.prediction) / len(p.reference) for p in pairs]

    try:
        out = score_examples(["ab", "abcd"], ["abcd", "ab"], metrics=["test_len_ratio"])
        assert [r["test_len_ratio"] for r in out] == [0.5, 2.0]
        with pytest.raises(ValueError, match="already registered"):
            register_metric("test_len_ratio")(len_ratio)
    finally:
        METRICS.pop("test_len_ratio")


def test_per_user_means_and_macro_mean_ignore_nan():
    nan = float("nan")
    records = [{"persona_id": "a", "emb_sim": 0.5, "param_f1": nan, "prediction": "x"},
               {"persona_id": "a", "emb_sim": 0.7, "param_f1": 1.0, "prediction": "y"},
               {"persona_id": "b", "emb_sim": 0.9, "param_f1": 0.0, "prediction": "z"}]
    per_user = per_user_means(records)
    assert list(per_user) == ["a", "b"] and set(per_user["a"]) == {"emb_sim", "param_f1"}
    assert math.isclose(per_user["a"]["emb_sim"], 0.6) and per_user["a"]["param_f1"] == 1.0
    macro = macro_mean(per_user)
    assert math.isclose(macro["emb_sim"], 0.75) and macro["param_f1"] == 0.5
    assert math.isnan(macro_mean({"a": {"param_f1": nan}})["param_f1"])


def test_noise_ceiling_uses_alt_texts_per_user():
    refs = ["Lights at 40%.", "AC at 22 degrees.", "The TV is on Netflix.", "Speaker at 30."]
    alts = ["I've set the lights to 40%.", "The AC is at 23 degrees.", "TV switched to Netflix.",
            None]
    users = ["a", "a", "b", "b"]
    by_user = noise_ceiling(refs, alts, users=users, metrics=["param_f1"])
    assert by_user == {"param_f1": 0.75}  # a: (1 + 0) / 2, b: 1 (no alt for the speaker turn)
    by_example = noise_ceiling(refs, alts, metrics=["param_f1"])
    assert math.isclose(by_example["param_f1"], 2 / 3)


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="2 predictions vs 1 references"):
        score_examples(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="unknown metric"):
        score_examples(["a"], ["b"], metrics=["bleu"])
    with pytest.raises(ValueError, match="tolerance"):
        score_examples(["a"], ["b"], tolerance=-1)
    with pytest.raises(ValueError, match="record 0 has no 'persona_id'"):
        per_user_means([{"emb_sim": 1.0}])
