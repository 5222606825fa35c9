"""Splits: deterministic, disjoint, in session order, exact fractions, cold-start users."""
from __future__ import annotations

import pytest

from personal.data.schema import Dataset, Message, Persona, Session
from personal.data.splits import make_splits, split_boundaries
from personal.errors import PersonalError


def _dataset(users: int, sessions: int) -> Dataset:
    def session(i: int) -> Session:
        return Session(i, None, [Message("user", "hi"), Message("assistant", "hello")])
    return Dataset([Persona(f"persona_{u:03d}", None, [], [session(i) for i in range(sessions)])
                    for u in range(users)])


def test_default_fractions_are_30_10_10_of_50():
    splits = make_splits(_dataset(4, 50))
    for sp in splits.values():
        assert sp.train == list(range(0, 30))
        assert sp.val == list(range(30, 40))
        assert sp.test == list(range(40, 50))
        assert not sp.cold_start


@pytest.mark.parametrize("n, expected", [(50, (30, 10, 10)), (7, (4, 2, 1)), (10, (6, 2, 2)),
                                         (5, (3, 1, 1)), (1, (1, 0, 0)), (0, (0, 0, 0))])
def test_rounding_rule_adds_up(n, expected):
    train_end, val_end = split_boundaries(n, 0.6, 0.2)
    assert (train_end, val_end - train_end, n - val_end) == expected


def test_parts_are_disjoint_ordered_and_cover_every_session():
    ds = _dataset(5, 13)
    for sp in make_splits(ds, cold_start=2, seed=3).values():
        joined = sp.train + sp.val + sp.test
        assert joined == list(range(13))  # disjoint, complete, and in session order


def test_same_inputs_same_splits_and_seed_changes_cold_start_set():
    ds = _dataset(20, 10)
    a = make_splits(ds, cold_start=5, seed=1)
    assert a == make_splits(ds, cold_start=5, seed=1)
    cold = lambda s: {pid for pid, sp in s.items() if sp.cold_start}  # noqa: E731
    assert any(cold(make_splits(ds, cold_start=5, seed=k)) != cold(a) for k in range(2, 6))


def test_cold_start_users_are_in_no_training_split():
    ds = _dataset(10, 50)
    splits = make_splits(ds, cold_start=3, seed=0)
    cold = [pid for pid, sp in splits.items() if sp.cold_start]
    assert len(cold) == 3
    for pid in cold:
        sp = splits[pid]
        assert sp.train == []
        assert sp.val == list(range(40))  # train+val sessions: usable to place, not to train
        assert sp.test == list(range(40, 50))
    warm = [sp for sp in splits.values() if not sp.cold_start]
    assert len(warm) == 7 and all(len(sp.train) == 30 for sp in warm)


def test_cold_start_draw_ignores_file_order():
    ds = _dataset(8, 4)
    rev = Dataset(list(reversed(ds.personas)))
    cold = lambda s: {pid for pid, sp in s.items() if sp.cold_start}  # noqa: E731
    assert cold(make_splits(ds, cold_start=3, seed=7)) == cold(make_splits(rev, cold_start=3, seed=7))


@pytest.mark.parametrize("kwargs, words", [
    ({"cold_start": 11}, "exceeds the number of users"),
    ({"cold_start": -1}, "non-negative"),
    ({"train_frac": 0.9, "val_frac": 0.2}, "at most 1"),
    ({"train_frac": 1.5}, "[0, 1]"),
])
def test_bad_arguments_name_the_problem(kwargs, words):
    with pytest.raises(PersonalError, match=words.replace("[", r"\[").replace("]", r"\]")):
        make_splits(_dataset(10, 5), **kwargs)


def test_works_on_tiny_fixture(tiny_dataset):
    splits = make_splits(tiny_dataset)
    assert list(splits) == ["persona_000", "persona_001", "persona_002"]
    assert all((sp.train, sp.val, sp.test) == ([0, 1, 2], [3], [4]) for sp in splits.values())
