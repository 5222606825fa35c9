"""Examples: one per assistant turn, ground-truth history of the last N messages."""
from __future__ import annotations

import pytest

from personal.data.examples import build_examples
from personal.data.splits import make_splits
from personal.errors import PersonalError


def _assistant_turns(ds, splits, part):
    return sum(1 for p in ds.personas for i in getattr(splits[p.persona_id], part)
               for m in p.sessions[i].messages if m.role == "assistant")


@pytest.mark.parametrize("part", ["train", "val", "test"])
def test_one_example_per_assistant_turn(tiny_dataset, part):
    splits = make_splits(tiny_dataset)
    examples = build_examples(tiny_dataset, splits, part)
    assert len(examples) == _assistant_turns(tiny_dataset, splits, part) > 0
    for ex in examples:
        session = tiny_dataset.by_id()[ex.persona_id].sessions[ex.session_id]
        target = session.messages[ex.turn_index]
        assert target.role == "assistant" and target.text == ex.target
        assert ex.actions == target.actions and ex.alt_text == target.alt_text


def test_history_is_last_n_messages_right_before_target(tiny_dataset):
    splits = make_splits(tiny_dataset)
    session = tiny_dataset.personas[0].sessions[1]  # 6 messages, assistant at 1, 3, 5
    examples = [e for e in build_examples(tiny_dataset, splits, "train", history_messages=2)
                if e.persona_id == "persona_000" and e.session_id == 1]
    assert [e.turn_index for e in examples] == [1, 3, 5]
    assert examples[0].history == session.messages[0:1]  # fewer than N at the start
    assert examples[1].history == session.messages[1:3]
    assert examples[2].history == session.messages[3:5]
    assert examples[2].history[-1].role == "user"


def test_history_zero_and_large_n(tiny_dataset):
    splits = make_splits(tiny_dataset)
    none = build_examples(tiny_dataset, splits, "train", history_messages=0)
    assert all(e.history == [] for e in none)
    full = build_examples(tiny_dataset, splits, "train", history_messages=100)
    assert all(len(e.history) == e.turn_index for e in full)


def test_meta_carried_and_unknown_stays_none(tiny_dataset):
    splits = make_splits(tiny_dataset)
    examples = build_examples(tiny_dataset, splits, "train", personas=["persona_001"])
    by_session = {e.session_id: e.meta for e in examples}
    assert by_session[2] is None  # that session's context is unknown
    assert by_session[0] == tiny_dataset.personas[1].sessions[0].meta


def test_order_is_persona_then_session_then_turn(tiny_dataset):
    splits = make_splits(tiny_dataset)
    keys = [(e.persona_id, e.session_id, e.turn_index) for e in build_examples(tiny_dataset, splits)]
    assert keys == sorted(keys)
    assert keys == [(e.persona_id, e.session_id, e.turn_index) for e in build_examples(tiny_dataset, splits)]


def test_personas_filter_and_cold_start_has_no_train(tiny_dataset):
    splits = make_splits(tiny_dataset, cold_start=1, seed=0)
    cold = next(pid for pid, sp in splits.items() if sp.cold_start)
    assert build_examples(tiny_dataset, splits, "train", personas=[cold]) == []
    assert {e.persona_id for e in build_examples(tiny_dataset, splits, "train")} == set(splits) - {cold}
    assert build_examples(tiny_dataset, splits, "val", personas=[cold])  # placement sessions


@pytest.mark.parametrize("kwargs, words", [
    ({"split": "dev"}, "unknown split 'dev'"),
    ({"personas": ["persona_999"]}, "unknown persona id"),
    ({"history_messages": -1}, "non-negative"),
])
def test_bad_arguments_name_the_problem(tiny_dataset, kwargs, words):
    with pytest.raises(PersonalError, match=words):
        build_examples(tiny_dataset, make_splits(tiny_dataset), **kwargs)


def test_splits_that_do_not_fit_name_the_index(tiny_dataset):
    splits = make_splits(tiny_dataset)
    splits["persona_000"].test = [4, 9]
    with pytest.raises(PersonalError, match=r"persona_000.test: session index 9 out of range"):
        build_examples(tiny_dataset, splits, "test")
