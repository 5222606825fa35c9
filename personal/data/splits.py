"""Per-user train / val / test splits in session order, with optional cold-start users.

Indices in a `Split` are positions in `Persona.sessions` (the order the sessions happened),
not `session_id` values.

Rounding rule: with `n` sessions the train block ends at `round_half_up(train_frac * n)` and
the val block at `round_half_up((train_frac + val_frac) * n)`; test is the rest. Cutting at
cumulative boundaries (rather than rounding each part alone) makes the three parts add up to
`n` exactly: 50 sessions at 0.6 / 0.2 give 30 / 10 / 10, 7 sessions give 4 / 2 / 1.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from personal.data.schema import Dataset, Split, Splits
from personal.errors import PersonalError

#: The parts of a split, in order.
SPLIT_NAMES = ("train", "val", "test")

#: Float products such as 0.6 * 50 = 30.000000000000004 must not move a boundary.
_EPS = 1e-9


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5 + _EPS))


def split_boundaries(n: int, train_frac: float, val_frac: float) -> tuple[int, int]:
    """(end of train, end of val) for `n` sessions, by the module's rounding rule."""
    train_end = min(n, _round_half_up(train_frac * n))
    val_end = min(n, _round_half_up((train_frac + val_frac) * n))
    return train_end, max(train_end, val_end)


def _check_args(ds: Dataset, train_frac: float, val_frac: float, cold_start: int) -> None:
    if not 0.0 <= train_frac <= 1.0 or not 0.0 <= val_frac <= 1.0:
        raise PersonalError(f"split fractions must lie in [0, 1]: train_frac={train_frac}, "
                            f"val_frac={val_frac}")
    if train_frac + val_frac > 1.0 + _EPS:
        raise PersonalError(f"train_frac + val_frac must be at most 1, got "
                            f"{train_frac} + {val_frac} = {train_frac + val_frac}")
    if not isinstance(cold_start, int) or isinstance(cold_start, bool) or cold_start < 0:
        raise PersonalError(f"cold_start must be a non-negative integer, got {cold_start!r}")
    if cold_start > len(ds.personas):
        raise PersonalError(f"cold_start={cold_start} exceeds the number of users "
                            f"({len(ds.personas)})")
    ids = [p.persona_id for p in ds.personas]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise PersonalError(f"duplicate persona ids: {', '.join(dup)}")


#: The default number of cold-start users (`data.cold_start: null`), and the share of a small
#: population it never exceeds.
DEFAULT_COLD_START, COLD_START_SHARE = 10, 0.2


def cold_start_count(requested: Optional[int], n_users: int) -> int:
    """How many users a split holds out: `requested` as given, or by default 10, at most a
    fifth of the users (a 20-user study holds out 4, a 3-user smoke test none)."""
    if requested is not None:
        return requested
    return min(DEFAULT_COLD_START, int(n_users * COLD_START_SHARE))


def choose_cold_start(persona_ids: list[str], n: int, seed: int = 0) -> set[str]:
    """`n` persona ids drawn without replacement; depends only on the id set and `seed`."""
    if n == 0:
        return set()
    pool = sorted(persona_ids)  # sorted so file order does not change the draw
    picks = np.random.default_rng(seed).choice(len(pool), size=n, replace=False)
    return {pool[i] for i in picks}


def make_splits(ds: Dataset, train_frac: float = 0.6, val_frac: float = 0.2,
                cold_start: int = 0, seed: int = 0) -> Splits:
    """Split every persona's sessions in order: first `train_frac` train, next `val_frac`
    val, rest test (see the module docstring for the rounding rule).

    `cold_start` personas, chosen by `seed`, get no training sessions: their first
    train+val sessions go to `val` (to place them, never to train on) and the rest to
    `test`, and `Split.cold_start` is True. Same inputs give the same splits.
    """
    _check_args(ds, train_frac, val_frac, cold_start)
    cold = choose_cold_start([p.persona_id for p in ds.personas], cold_start, seed)
    splits: Splits = {}
    for p in ds.personas:
        n = len(p.sessions)
        train_end, val_end = split_boundaries(n, train_frac, val_frac)
        if p.persona_id in cold:
            splits[p.persona_id] = Split(train=[], val=list(range(val_end)),
                                         test=list(range(val_end, n)), cold_start=True)
        else:
            splits[p.persona_id] = Split(train=list(range(train_end)),
                                         val=list(range(train_end, val_end)),
                                         test=list(range(val_end, n)))
    return splits


def split_sessions(split: Split, name: str) -> list[int]:
    """The session indices of part `name` (train, val or test) of `split`."""
    if name not in SPLIT_NAMES:
        raise PersonalError(f"unknown split {name!r}: expected train, val or test")
    return list(getattr(split, name))


def training_sessions(split: Split) -> list[int]:
    """Sessions a persona's features may be computed from: train, or val for a
    cold-start persona (which has no train sessions)."""
    return list(split.val) if split.cold_start else list(split.train)


def check_splits(ds: Dataset, splits: Splits) -> None:
    """Raise PersonalError naming the persona and index when `splits` does not fit `ds`."""
    by_id = ds.by_id()
    problems = []
    for pid, sp in splits.items():
        if pid not in by_id:
            problems.append(f"splits name persona {pid!r}, which is not in the dataset")
            continue
        n = len(by_id[pid].sessions)
        for part in ("train", "val", "test"):
            bad = [i for i in getattr(sp, part) if not (isinstance(i, int) and 0 <= i < n)]
            if bad:
                problems.append(f"{pid}.{part}: session index {bad[0]!r} out of range "
                                f"(persona has {n} sessions)")
    if problems:
        raise PersonalError("splits do not fit the dataset:\n  " + "\n  ".join(problems))
