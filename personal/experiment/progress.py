"""Plan progress: which unit runs, how far the plan is, and an ETA.

    progress = PlanProgress(["base/prepare", "train/unified_lora", "eval/unified_lora"])
    run.progress = progress            # Run.run_unit reports every unit's start and end

The ETA adds the expected seconds of the units still to run. Expected seconds come from
`expected_table()` (generic entries and the strategies' registered seconds), measured for the
default 200-user job on a 2-core CPU machine, scaled by how fast this machine has been on the
units finished so far (so a GPU or a smaller job corrects the estimate after its first
units). Units skipped on resume count zero.
"""
from __future__ import annotations

import logging
import time
from typing import Optional, Sequence

from personal.strategies.registry import expected_seconds_table

log = logging.getLogger("personal")

#: Seconds of the units no one strategy owns, for the default job on 2 CPU cores, each unit in
#: one of the two single-thread lanes of the Ray executor (README: measured). Keys are
#: unit-name prefixes; the longest matching prefix wins. Each strategy registers the
#: seconds of its own units (`register_strategy(expected_seconds=...)`), merged in here.
GENERIC_SECONDS: dict[str, float] = {
    "base/prepare": 390.0,          # pretraining the built-in base when it is not cached
    "eval/noise_ceiling": 75.0,     # the references are often embedded by then
    "eval/": 85.0,                  # generating and scoring every test turn
    "train/": 300.0,
    "assign/": 70.0,
    "selective/": 75.0,
}
DEFAULT_SECONDS = 60.0


def expected_table() -> dict[str, float]:
    """Unit-name prefix -> expected seconds: the generic entries and every strategy's."""
    return {**GENERIC_SECONDS, **expected_seconds_table()}


def expected_seconds(unit: str, table: Optional[dict[str, float]] = None) -> float:
    """The expected seconds of `unit` on the reference machine."""
    table = expected_table() if table is None else table
    best = max((p for p in table if unit.startswith(p)), key=len, default=None)
    return table[best] if best else DEFAULT_SECONDS


def format_seconds(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class PlanProgress:
    """Counts the plan's units, times them, and logs `[k/n] unit · elapsed · ETA` lines."""

    def __init__(self, units: Sequence[str], lanes: int = 1):
        self.units = list(dict.fromkeys(units))
        self.lanes = max(1, lanes)
        """Units running at once: the ETA divides the work left among them."""
        self.seen: list[str] = []
        """Units started or skipped so far, in that order (a line's k)."""
        self.finished: dict[str, float] = {}
        self.start = time.perf_counter()
        self._measured = 0.0   # actual seconds of units that really ran (not base/prepare)
        self._expected = 0.0   # their expected seconds
        self.table = expected_table()

    def speed(self) -> float:
        """Actual / expected seconds over units finished so far (1 until one finished)."""
        if self._expected <= 0:
            return 1.0
        return min(4.0, max(0.05, self._measured / self._expected))

    def eta(self) -> float:
        left = [u for u in self.units if u not in self.finished]
        return self.speed() * sum(expected_seconds(u, self.table) for u in left) / self.lanes

    def line(self, unit: str) -> str:
        k = self.seen.index(unit) + 1 if unit in self.seen else len(self.seen) + 1
        n = max(len(self.units), k)
        return (f"[{k}/{n}] {unit} · elapsed {format_seconds(time.perf_counter() - self.start)}"
                f" · ETA {format_seconds(self.eta())}")

    def begin(self, unit: str) -> None:
        if unit not in self.units:
            self.units.append(unit)
        if unit not in self.seen:
            self.seen.append(unit)
        log.info("%s", self.line(unit))

    def end(self, unit: str, seconds: float, skipped: bool) -> None:
        if skipped and unit in self.finished:
            return  # a unit shared by strategies (e.g. the unified adapter) ran already
        self.finished[unit] = 0.0 if skipped else seconds
        if unit not in self.seen:
            self.seen.append(unit)
        if not skipped and unit != "base/prepare":
            self._measured += seconds
            self._expected += expected_seconds(unit, self.table)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def summary(self) -> dict[str, float]:
        """Seconds per unit that ran here (0 for skipped units)."""
        return dict(self.finished)


def attach(run, units: Optional[Sequence[str]], lanes: int = 1) -> PlanProgress:
    """Give `run` a PlanProgress over `units` (its run_unit then reports to it)."""
    run.progress = PlanProgress(units or [], lanes)
    return run.progress
