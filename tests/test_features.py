"""User features: training data only, hand-checkable values, keyword fallback, standardize."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from personal.data.features import actions_from_text, feature_names, standardize, user_features
from personal.data.schema import Message
from personal.data.splits import make_splits


def test_matrix_shape_names_and_no_nan(tiny_dataset):
    feats = user_features(tiny_dataset, make_splits(tiny_dataset))
    assert feats.persona_ids == ["persona_000", "persona_001", "persona_002"]
    assert feats.names == feature_names() and len(set(feats.names)) == len(feats.names)
    assert feats.matrix.shape == (3, len(feats.names))
    assert not np.isnan(feats.matrix).any()


def test_values_match_hand_computation(tiny_dataset):
    feats = user_features(tiny_dataset, make_splits(tiny_dataset))
    # persona_000 trains on sessions 0, 1, 2: 2 + 3 + 2 assistant turns
    assert feats.row("persona_000")[feats.names.index("sessions")] == 3
    assert feats.row("persona_000")[feats.names.index("assistant_turns")] == 7
    # AC is set in every session once: 3 of 7 turns; speaker only in session 1
    assert feats.row("persona_000")[feats.names.index("device.ac")] == pytest.approx(3 / 7)
    assert feats.row("persona_000")[feats.names.index("device.speaker")] == pytest.approx(1 / 7)
    # temperatures 20 + sid % 3 for sid 0, 1, 2 -> mean 21
    assert feats.row("persona_000")[feats.names.index("ac.temperature.mean")] == pytest.approx(21.0)
    assert feats.row("persona_000")[feats.names.index("lights.color=warm")] == 1.0
    # applied_routines [0] on even sessions: 2 of 3
    assert feats.row("persona_000")[feats.names.index("routine_session_share")] == pytest.approx(2 / 3)
    # persona_001's session 2 has no meta: context shares over the 2 known sessions
    assert feats.row("persona_001")[feats.names.index("meta_known_share")] == pytest.approx(2 / 3)
    assert feats.row("persona_001")[feats.names.index("context.time_of_day=night")] == 1.0
    # "Anything else?" in the first turn of each session: question rate
    q = feats.row("persona_000")[feats.names.index("assistant_question_rate")]
    assert q == pytest.approx(3 / 7)


def test_features_ignore_test_and_val_sessions(tiny_dataset):
    splits = make_splits(tiny_dataset)
    before = user_features(tiny_dataset, splits).matrix
    changed = copy.deepcopy(tiny_dataset)
    for i in (3, 4):  # persona_000's val and test sessions
        changed.personas[0].sessions[i].messages[0].text = "please please please " * 10
        changed.personas[0].sessions[i].messages[1].actions = {"tv": {"volume": 99}}
    np.testing.assert_array_equal(user_features(changed, splits).matrix, before)


def test_features_change_when_training_data_changes(tiny_dataset):
    splits = make_splits(tiny_dataset)
    feats = user_features(tiny_dataset, splits)
    changed = copy.deepcopy(tiny_dataset)
    changed.personas[0].sessions[0].messages[0].text = "please please please " * 10
    changed.personas[0].sessions[0].messages[1].actions = {"ac": {"temperature": 29}, "tv": {}}
    after = user_features(changed, splits)
    diff = {n for n, a, b in zip(feats.names, feats.row("persona_000"), after.row("persona_000")) if a != b}
    assert {"user_words", "user_formal_per_turn", "device.tv", "ac.temperature.mean"} <= diff
    # (a new parameter would reach other personas only through the fill of their undefined
    # columns; this change touches none)
    np.testing.assert_array_equal(after.row("persona_001"), feats.row("persona_001"))


def test_cold_start_features_come_from_val(tiny_dataset):
    splits = make_splits(tiny_dataset, cold_start=1, seed=0)
    cold = next(pid for pid, sp in splits.items() if sp.cold_start)
    feats = user_features(tiny_dataset, splits)
    assert feats.row(cold)[feats.names.index("sessions")] == len(splits[cold].val) == 4


def test_undefined_values_are_filled_with_the_column_mean(tiny_dataset):
    feats = user_features(tiny_dataset, make_splits(tiny_dataset))
    col = feats.column("tv.volume.mean")  # nobody sets the TV volume in training
    assert (col == 0).all()
    temp = feats.column("ac.temperature.mean")
    assert temp.tolist() == pytest.approx([21.0, 22.0, 23.0])


def test_style_proxies_separate_formal_from_casual(make_styled_dataset):
    ds = make_styled_dataset(2, 5)
    feats = user_features(ds, make_splits(ds))
    formal, casual = feats.column("user_formal_per_turn"), feats.column("user_casual_per_turn")
    assert formal[:2].min() > formal[2:].max() and casual[2:].min() > casual[:2].max()
    positive = feats.column("user_positive_per_turn")
    assert positive[:2].min() > positive[2:].max()
    words = feats.column("user_words")
    assert words[:2].min() > words[2:].max()


def test_keyword_fallback_when_gold_is_missing(tiny_dataset):
    ds = copy.deepcopy(tiny_dataset)
    for p in ds.personas:
        for s in p.sessions:
            for m in s.messages:
                m.actions = None
    feats = user_features(ds, make_splits(ds))
    row = feats.row("persona_000")
    assert row[feats.names.index("device.ac")] == pytest.approx(3 / 7)
    assert row[feats.names.index("ac.temperature.mean")] == pytest.approx(21.0)
    assert row[feats.names.index("lights.brightness.mean")] == pytest.approx(60.0)
    assert row[feats.names.index("speaker.volume.mean")] == pytest.approx(20.0)


@pytest.mark.parametrize("text, expected", [
    ("could you set the AC to 22 degrees in cool mode", {"ac": {"temperature": 22, "mode": "cool"}}),
    ("dim the lights to brightness 30 and make them cool white",
     {"lights": {"brightness": 30, "color": "cool"}}),
    ("put the tv on HDMI2 with volume 15", {"tv": {"input_source": "HDMI2", "volume": 15}}),
    ("speaker on bass boost, volume 40", {"speaker": {"equalizer": "bass boost", "volume": 40}}),
    ("please disarm the security system", {"security": {"armed": False}}),
    ("arm the alarm", {"security": {"armed": True}}),
    ("it's rather cold, can you warm up the room?", {}),
    ("volume 50 on the tv and the speaker", {"speaker": {}, "tv": {}}),  # ambiguous: no value
    ("set the temperature to 45", {"ac": {}}),  # outside the schema: dropped
])
def test_actions_from_text(text, expected):
    assert actions_from_text(text) == expected


def test_standardize():
    m = np.array([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0], [5.0, 5.0, 9.0]])
    z = standardize(m)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z[:, [0, 2]].std(axis=0), 1.0)
    assert (z[:, 1] == 0).all()
    np.testing.assert_allclose(z[:, 0], [-np.sqrt(1.5), 0.0, np.sqrt(1.5)])
