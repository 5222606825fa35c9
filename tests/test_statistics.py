"""Statistics against a reference strategy: scipy / hand values and the success criteria."""
import math

import numpy as np
import pytest
from scipy import stats

from personal.eval.statistics import (ComparisonRow, bootstrap_ci, compare, compare_seeds, holm,
                                      paired_tests, row_from_dict, rows_as_records,
                                      two_level_bootstrap_ci)

A = [0.80, 0.75, 0.90, 0.70, 0.85, 0.82, 0.77, 0.91]
B = [0.78, 0.70, 0.86, 0.72, 0.80, 0.79, 0.78, 0.84]


def test_holm_matches_hand_values():
    assert np.allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    assert np.allclose(holm([0.5, 0.01]), [0.5, 0.02])
    assert np.allclose(holm([0.4, 0.3]), [0.6, 0.6])  # running maximum keeps the order
    assert np.allclose(holm([0.6, 0.7]), [1.0, 1.0])  # capped at 1
    assert np.allclose(holm([0.01, float("nan")]), [0.02, 1.0])
    assert holm([]) == []


def test_paired_tests_match_scipy():
    t, p_t, w, p_w = paired_tests(A, B)
    ref_t, ref_w = stats.ttest_rel(A, B), stats.wilcoxon(A, B)
    assert math.isclose(t, ref_t.statistic) and math.isclose(p_t, ref_t.pvalue)
    assert math.isclose(w, ref_w.statistic) and math.isclose(p_w, ref_w.pvalue)
    # hand check of the t statistic: mean(d) / (sd(d) / sqrt(n))
    d = np.subtract(A, B)
    assert math.isclose(t, d.mean() / (d.std(ddof=1) / math.sqrt(len(d))))


def test_all_zero_differences_give_p_one():
    assert paired_tests([0.8, 0.7, 0.9], [0.8, 0.7, 0.9]) == (0.0, 1.0, 0.0, 1.0)
    assert all(math.isnan(x) for x in paired_tests([0.8], [0.7]))


def test_bootstrap_ci_contains_mean_and_is_seeded():
    d = np.subtract(A, B)
    low, high = bootstrap_ci(d, n_boot=2000, seed=0)
    assert low < d.mean() < high
    assert bootstrap_ci(d, 2000, seed=0) == (low, high)
    assert bootstrap_ci(d, 2000, seed=1) != (low, high)


def _users(scores):
    return {f"u{i}": s for i, s in enumerate(scores)}


REF = [0.75, 0.78, 0.80, 0.76, 0.82, 0.79, 0.77, 0.81, 0.74, 0.83]


def _crafted():
    return {
        "unified": _users(REF),
        "good": _users([s + 0.03 + 0.001 * i for i, s in enumerate(REF)]),
        "one_low": _users([s + 0.03 for s in REF[:-1]] + [0.65]),  # a user below 0.70
        "six_of_ten": _users([s + 0.05 if i < 6 else s - 0.01 for i, s in enumerate(REF)]),
        "same": _users(REF),
        "worse": _users([s - 0.02 - 0.001 * i for i, s in enumerate(REF)]),
    }


def test_compare_computes_deltas_and_criteria():
    rows = compare(_crafted(), reference="unified", n_boot=500)
    assert set(rows) == {"good", "one_low", "six_of_ten", "same", "worse"}
    good = rows["good"]
    assert good.n_users == 10 and good.share_improved == 1.0
    assert math.isclose(good.mean_delta, 0.03 + 0.001 * 4.5)
    assert math.isclose(good.mean - good.reference_mean, good.mean_delta)
    assert good.worst_user == "u8" and math.isclose(good.worst_user_score, 0.74 + 0.038)
    assert good.worst_delta_user == "u0" and math.isclose(good.worst_delta, 0.03)
    assert good.ci_low <= good.mean_delta <= good.ci_high
    assert good.criteria == {"improved": True, "mean": True, "worst": True, "p": True}
    assert good.passed
    assert rows["one_low"].criteria["worst"] is False and not rows["one_low"].passed
    assert rows["one_low"].worst_user == "u9" and math.isclose(rows["one_low"].worst_delta,
                                                               0.65 - 0.83)
    # exactly 60% improved is not "more than 60%"
    assert rows["six_of_ten"].share_improved == 0.6
    assert rows["six_of_ten"].criteria["improved"] is False
    same = rows["same"]
    assert same.p_ttest == 1.0 and same.p_wilcoxon == 1.0 and same.p_holm == 1.0
    assert same.criteria == {"improved": False, "mean": False, "worst": True, "p": False}
    # significantly worse is not a pass of the p criterion
    assert rows["worse"].p_holm < 0.05 and rows["worse"].criteria["p"] is False


def test_holm_is_applied_across_all_strategies():
    rows = compare(_crafted(), reference="unified", n_boot=200)
    raw = [r.p_ttest for r in rows.values()]
    assert [r.p_holm for r in rows.values()] == holm(raw)
    rows_w = compare(_crafted(), reference="unified", n_boot=200, test="wilcoxon")
    assert [r.p_holm for r in rows_w.values()] == holm([r.p_wilcoxon for r in rows_w.values()])


def test_compare_pairs_on_common_users_and_reads_metric_dicts():
    per_user = {"unified": {"a": {"emb_sim": 0.8}, "b": {"emb_sim": 0.7}},
                "mine": {"a": {"emb_sim": 0.9}, "b": {"emb_sim": 0.75}, "c": {"emb_sim": 0.5}}}
    row = compare(per_user, "unified", n_boot=100)["mine"]
    assert row.n_users == 2 and math.isclose(row.mean_delta, 0.075)
    assert row.worst_user == "c" and row.worst_user_score == 0.5  # over all its users
    assert row.criteria["worst"] is False


def test_rows_round_trip_through_flat_records():
    rows = compare(_crafted(), reference="unified", n_boot=100)
    records = rows_as_records(rows)
    assert records[0]["criterion_improved"] is True and records[0]["passed"] is True
    back = row_from_dict(records[0])
    assert isinstance(back, ComparisonRow) and back == rows["good"]


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="reference strategy 'unified' not among"):
        compare({"a": {"u": 0.5}}, "unified")
    with pytest.raises(ValueError, match="no user in common"):
        compare({"unified": {"u": 0.5}, "a": {"v": 0.5}}, "unified")
    with pytest.raises(ValueError, match="has no 'emb_sim' score"):
        compare({"unified": {"u": {"rouge_l": 0.5}}, "a": {"u": {"rouge_l": 0.5}}}, "unified")
    with pytest.raises(ValueError, match="test must be"):
        compare({"unified": {"u": 0.5}}, "unified", test="z")


# --- seeds ------------------------------------------------------------------------------------

def _seeded(n_seeds=3, n_users=40, true_delta=0.01, seed=0):
    """{seed: {strategy: {user: score}}}: a per-user level, a per-seed shift of each strategy
    and noise; the mine - ref delta has mean `true_delta` in the population."""
    rng = np.random.default_rng(seed)
    level = rng.normal(0.6, 0.05, n_users)
    gain = rng.normal(true_delta, 0.02, n_users)  # users differ in how much they gain
    out = {}
    for s in range(n_seeds):
        ref_shift, mine_shift = rng.normal(0, 0.005, 2)
        out[s] = {"ref": {f"u{i}": level[i] + ref_shift + rng.normal(0, 0.01)
                          for i in range(n_users)},
                  "mine": {f"u{i}": level[i] + gain[i] + mine_shift + rng.normal(0, 0.01)
                           for i in range(n_users)}}
    return out


def test_seed_averaged_paired_test_equals_scipy_on_hand_made_scores():
    per_seed = {0: {"ref": {"a": 0.70, "b": 0.60, "c": 0.80, "d": 0.50},
                    "mine": {"a": 0.72, "b": 0.61, "c": 0.83, "d": 0.49}},
                1: {"ref": {"a": 0.68, "b": 0.62, "c": 0.78, "d": 0.54},
                    "mine": {"a": 0.73, "b": 0.60, "c": 0.84, "d": 0.53}}}
    row = compare_seeds(per_seed, "ref", n_boot=200)["mine"]
    mine = [(0.72 + 0.73) / 2, (0.61 + 0.60) / 2, (0.83 + 0.84) / 2, (0.49 + 0.53) / 2]
    ref = [(0.70 + 0.68) / 2, (0.60 + 0.62) / 2, (0.80 + 0.78) / 2, (0.50 + 0.54) / 2]
    scipy_t = stats.ttest_rel(mine, ref)
    assert math.isclose(row.t_statistic, scipy_t.statistic)
    assert math.isclose(row.p_ttest, scipy_t.pvalue)
    assert math.isclose(row.mean_delta, np.mean(np.subtract(mine, ref)))
    # seed spread: sd (ddof 1) of the two seeds' means
    means = [np.mean([0.72, 0.61, 0.83, 0.49]), np.mean([0.73, 0.60, 0.84, 0.53])]
    assert math.isclose(row.seed_spread, abs(means[0] - means[1]) / math.sqrt(2))
    ref_means = [np.mean([0.70, 0.60, 0.80, 0.50]), np.mean([0.68, 0.62, 0.78, 0.54])]
    assert math.isclose(row.reference_seed_spread, abs(ref_means[0] - ref_means[1]) / math.sqrt(2))
    assert row.seeds == 2


def test_holm_over_seed_averaged_rows():
    per_seed = _seeded()
    for s in per_seed:
        per_seed[s]["other"] = {u: v - 0.001 for u, v in per_seed[s]["ref"].items()}
    rows = compare_seeds(per_seed, "ref", n_boot=200)
    assert [r.p_holm for r in rows.values()] == holm([r.p_ttest for r in rows.values()])


def test_two_level_bootstrap_is_seeded_and_covers_the_true_delta():
    per_seed = _seeded(true_delta=0.01)
    row = compare_seeds(per_seed, "ref", n_boot=1000, seed=0)["mine"]
    assert row.ci_low < 0.01 < row.ci_high
    assert row.beats  # 0.01 with these noise levels is resolved over 40 users x 3 seeds
    again = compare_seeds(per_seed, "ref", n_boot=1000, seed=0)["mine"]
    assert (again.ci_low, again.ci_high) == (row.ci_low, row.ci_high)
    other = compare_seeds(per_seed, "ref", n_boot=1000, seed=1)["mine"]
    assert (other.ci_low, other.ci_high) != (row.ci_low, row.ci_high)


def test_two_level_bootstrap_is_wider_than_users_alone_when_seeds_differ():
    # every user gains 0.01, but the strategy's whole seed moves by +-0.03: resampling
    # users alone would call it certain; resampling seeds too must not
    users = [f"u{i}" for i in range(30)]
    per_seed = {s: {"ref": {u: 0.6 for u in users},
                    "mine": {u: 0.61 + shift + 0.001 * (i % 3) for i, u in enumerate(users)}}
                for s, shift in enumerate([-0.03, 0.0, 0.03])}
    deltas = np.array([[per_seed[s]["mine"][u] - 0.6 for u in users] for s in per_seed])
    lo2, hi2 = two_level_bootstrap_ci(deltas, 2000, 0)
    lo1, hi1 = bootstrap_ci(deltas.mean(axis=0), 2000, 0)
    assert hi2 - lo2 > 10 * (hi1 - lo1)
    # one seed: the seed draw is always row 0, so the CI is the users' bootstrap of that row
    lo, hi = two_level_bootstrap_ci(deltas[:1], 2000, 0)
    assert lo < deltas[0].mean() < hi and hi - lo < 0.002


def test_one_seed_has_no_spread_and_a_missing_strategy_is_named():
    per_seed = _seeded(n_seeds=1)
    row = compare_seeds(per_seed, "ref", n_boot=200)["mine"]
    assert math.isnan(row.seed_spread) and row.seeds == 1
    bad = _seeded(n_seeds=2)
    del bad[1]["mine"]
    with pytest.raises(ValueError, match="seed 1 has strategies"):
        compare_seeds(bad, "ref")


def test_relative_worst_user_criterion():
    rows = compare(_crafted(), reference="unified", n_boot=100, worst_criterion="worst_delta",
                   worst_delta_bound=-0.02)
    assert set(rows["good"].criteria) == {"improved", "mean", "worst_delta", "p"}
    assert rows["good"].criteria["worst_delta"] is True
    # one_low's worst user drops by 0.18: fails the relative bound as well
    assert rows["one_low"].criteria["worst_delta"] is False
    # worse: deltas -0.02 ... -0.029, so below a -0.02 bound, above -0.03
    assert rows["worse"].worst_delta_ok is False
    loose = compare(_crafted(), reference="unified", n_boot=100, worst_delta_bound=-0.03)
    assert loose["worse"].worst_delta_ok is True
    assert loose["worse"].criteria["worst"] is True  # the absolute one still applied
    with pytest.raises(ValueError, match="worst_criterion must be"):
        compare(_crafted(), reference="unified", worst_criterion="floor")
