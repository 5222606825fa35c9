"""Dataset statistics: counts, style rates, and the three "must be shown" numbers."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from personal.data.schema import Dataset
from personal.data.splits import make_splits
from personal.data.stats import (archetype_silhouette, dataset_stats, device_usage, format_stats,
                                 identifiability, noise_ceiling, reply_baseline, split_counts,
                                 turn_stats)


def test_split_counts(tiny_dataset):
    splits = make_splits(tiny_dataset, cold_start=1, seed=0)
    counts = split_counts(tiny_dataset, splits)
    assert counts["train"]["users"] == 2 and counts["train"]["sessions"] == 6
    assert counts["val"]["users"] == 3 and counts["val"]["sessions"] == 1 + 1 + 4
    assert counts["test"]["sessions"] == 3
    # everyone's test session is session 4; persona_002's is the real-like one with 1 turn
    assert counts["test"]["assistant_turns"] == 2 + 2 + 1


def test_turn_stats_and_device_usage_by_hand(tiny_dataset):
    stats = turn_stats(tiny_dataset)
    # per persona: sessions 0, 2, 4 have 4 messages, 1 and 3 have 6; persona_002's last has 2
    assert stats["messages_per_session"]["min"] == 2 and stats["messages_per_session"]["max"] == 6
    assert stats["assistant_turns_per_session"]["mean"] == pytest.approx((3 * 12 - 1) / 15)
    asst = 3 * 12 - 1  # 35 assistant turns
    # "Anything else?" opens 14 sessions; the real-like turn asks "Want Netflix?"
    assert stats["assistant_question_rate"] == pytest.approx(15 / asst)
    assert stats["gold_actions_share"] == pytest.approx(34 / asst)
    assert stats["name_rate"] == 0.0  # no assistant turn of the fixture uses a name
    assert stats["words_per_turn"]["user"]["max"] == 11  # "Good morning, could you ... please?"
    usage = device_usage(tiny_dataset)
    assert usage["speaker"]["gold"] == pytest.approx(6 / 34)  # odd sessions: 2 per persona
    assert usage["tv"]["mentioned"] == pytest.approx(1 / asst) and usage["tv"]["gold"] == 0.0


def test_name_rate_counts_only_named_personas(tiny_dataset):
    ds = copy.deepcopy(tiny_dataset)
    ds.personas[0].sessions[0].messages[1].text += " Have a good day, Ann."
    ds.personas[1].name = None
    asst_named = 12 + 11  # personas 000 and 002
    assert turn_stats(ds)["name_rate"] == pytest.approx(1 / asst_named)


def test_identifiability_above_chance_on_two_users(make_styled_dataset):
    ds = make_styled_dataset(1, 10)
    result = identifiability(ds, make_splits(ds))
    assert result["chance"] == 0.5 and result["users"] == 2
    assert result["test_turns"] == 2 * 2 * 2
    assert result["accuracy"] == 1.0
    assert result["accuracy_alt_text"] > 0.5 and result["alt_text_turns"] == 8


def test_identifiability_within_an_archetype(make_styled_dataset):
    ds = make_styled_dataset(3, 10)  # 6 users, same phrasing within an archetype but a signature
    result = identifiability(ds, make_splits(ds))
    assert result["accuracy"] > 2 * result["chance"]


def test_identifiability_leaves_cold_start_users_out(make_styled_dataset):
    ds = make_styled_dataset(2, 10)
    splits = make_splits(ds, cold_start=1, seed=0)
    result = identifiability(ds, splits)
    assert result["users"] == 3 and result["chance"] == pytest.approx(1 / 3)
    assert result["test_turns"] == 3 * 2 * 2


def test_silhouette_positive_on_two_archetypes(make_styled_dataset):
    ds = make_styled_dataset(3, 10)
    result = archetype_silhouette(ds, make_splits(ds))
    assert result["archetypes"] == 2 and result["users"] == 6
    assert result["silhouette"] > 0.5


def test_silhouette_skipped_without_archetypes(make_styled_dataset):
    ds = make_styled_dataset(2, 5)
    ds.personas[0].archetype = None
    result = archetype_silhouette(ds, make_splits(ds))
    assert result["silhouette"] is None and "archetypes unknown" in result["note"]
    one = make_styled_dataset(2, 5)
    for p in one.personas:
        p.archetype = "same"
    assert "2 <= archetypes" in archetype_silhouette(one, make_splits(one))["note"]


def test_noise_ceiling_skipped_without_alt_text(tiny_dataset):
    ds = copy.deepcopy(tiny_dataset)
    for p in ds.personas:
        for s in p.sessions:
            for m in s.messages:
                m.alt_text = None
    result = noise_ceiling(ds, make_splits(ds))
    assert result["noise_ceiling"] is None and "no test assistant turn" in result["note"]


def test_noise_ceiling_matches_hand_computation(tiny_dataset):
    """The one test that loads MiniLM (offline, ~10 s)."""
    ds = Dataset([copy.deepcopy(tiny_dataset.personas[0])])
    splits = make_splits(ds)  # test = session 4: two assistant turns with alt_text
    pairs = [(m.text, m.alt_text) for m in ds.personas[0].sessions[4].messages if m.role == "assistant"]
    assert len(pairs) == 2
    from personal.data.embed import embedding_model

    model = embedding_model()
    sims = []
    for a, b in pairs:
        va, vb = model.encode([a, b], convert_to_numpy=True)
        sims.append(float(va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb))))
    result = noise_ceiling(ds, splits)
    assert result["pairs"] == 2
    assert result["noise_ceiling"] == pytest.approx(np.mean(sims), abs=1e-5)
    assert result["per_user_mean"] == pytest.approx(np.mean(sims), abs=1e-5)
    assert 0 < result["noise_ceiling"] < 1
    assert noise_ceiling(ds, splits, max_turns=1)["pairs"] == 1


def test_dataset_stats_is_json_and_formats(make_styled_dataset):
    ds = make_styled_dataset(2, 10)
    stats = dataset_stats(ds, make_splits(ds, cold_start=1), ceiling=False)
    assert json.loads(json.dumps(stats)) == stats
    assert stats["users"] == 4 and stats["sessions"] == 40 and stats["cold_start_users"] == 1
    assert stats["identifiability"]["accuracy"] > stats["identifiability"]["chance"]
    assert stats["noise_ceiling"]["note"] == "not requested"
    text = format_stats(stats)
    for words in ("split", "train", "words per turn", "with a question", "device", "(a) user identifiability",
                  "(b) archetype silhouette", "(c) noise ceiling         not requested"):
        assert words in text


# --- (d) reply baseline -------------------------------------------------------------------

_VEC = {  # hand-made unit vectors: requests x*/y*/z1, replies r*/s*/t1
    "x1": (1.0, 0.0), "x2": (0.0, 1.0), "y1": (0.6, 0.8), "y2": (0.8, 0.6), "z1": (0.352, 0.936),
    "r1": (1.0, 0.0), "r2": (0.0, 1.0), "s1": (0.6, 0.8), "s2": (0.8, 0.6), "t1": (0.0, 1.0)}


def _hand_embed(texts):
    return np.array([_VEC[t] for t in texts])  # KeyError: a text the protocol must not read


def _session(sid, *texts):
    from personal.data.schema import Message, Session

    roles = ("user", "assistant") * len(texts)
    meta = {"time_of_day": "evening", "day_of_week": "weekday", "sun_phase": "after_sunset",
            "weather": "rainy", "outdoor_temp": "cold"}
    return Session(sid, meta, [Message(r, t) for r, t in zip(roles, texts)])


def _reply_dataset():
    from personal.data.schema import Persona

    unread = _session(0, "never read", "never read either")
    return Dataset([
        # middle of 3 sessions; the 5th message has no reply and the 6th is past the cut
        Persona("a", None, [], [unread, _session(1, "x1", "r1", "x2", "r2", "x3", "r3"), unread]),
        Persona("b", None, [], [_session(0, "y1", "s1", "y2", "s2")]),
        Persona("c", None, [], [_session(0, "z1", "t1")]),
        Persona("d", None, [], []),  # no sessions: nothing to read
    ])


def test_reply_baseline_equals_the_hand_computed_value():
    """Nearest request of another user (cosines by hand): x1->y2 (0.8), x2->z1 (0.936),
    y1->z1 (0.96), y2->z1 (0.8432), z1->y1 (0.96); their replies scored against the true ones:
    r1.s2 = 0.8, r2.t1 = 1, s1.t1 = 0.8, s2.t1 = 0.6, t1.s1 = 0.8."""
    out = reply_baseline(_reply_dataset(), "middle", 5, embed_fn=_hand_embed)
    assert out["turns"] == 5 and out["users"] == 3
    assert out["reply_baseline"] == pytest.approx((0.8 + 1.0 + 0.8 + 0.6 + 0.8) / 5, abs=1e-12)
    assert out["per_user_mean"] == pytest.approx(((0.8 + 1.0) / 2 + (0.8 + 0.6) / 2 + 0.8) / 3, abs=1e-12)


def test_reply_baseline_never_takes_the_users_own_reply():
    """Alone, a user's own next request would be the nearest: with one user there is no
    baseline, and the own exchange never counts."""
    from personal.data.schema import Persona

    ds = Dataset([Persona("a", None, [], [_session(0, "x1", "r1", "y2", "s2")])])
    out = reply_baseline(ds, embed_fn=_hand_embed)
    assert out["reply_baseline"] is None and "at least 2 users" in out["note"]


def test_reply_baseline_sample_shape_options():
    ds = _reply_dataset()
    two = reply_baseline(ds, "middle", 2, embed_fn=_hand_embed)  # first exchange of each user only
    assert two["turns"] == 3
    with pytest.raises(ValueError, match="session must be one of"):
        reply_baseline(ds, "median", embed_fn=_hand_embed)
    with pytest.raises(ValueError, match="max_messages must be at least 2"):
        reply_baseline(ds, "middle", 1, embed_fn=_hand_embed)
