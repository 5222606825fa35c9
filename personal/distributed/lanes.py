"""The plan as a graph of units, run by lanes: Ray actors that each run one unit at a time.

    path = run_lanes(ctx, ["base", "unified_lora", "hybrid_lora"], stages_fn, lanes=2)

A strategy's stages run in order and its evaluation after its units; units shared by several
strategies (the unified adapter) run once. Every unit needs `base/prepare` unless it says it
does not (`Unit.needs_base`: MiniLM work on the data alone); units that write the same file run
one after the other; a strategy whose units include all of another's is evaluated after that
one (selective takes the recorded test predictions of the strategies it routes to). Whenever a
lane is free it takes the ready unit with the longest expected path to the end of the plan.

Why: the built-in base is so small that one process with two threads keeps 2 cores ~65%
busy, while two single-thread lanes do ~1.24x the training work and ~1.19x the MiniLM work
(measured: 65 training steps each, same machine, same run). On a cluster, lanes are where
strategies run side by side. Results do not depend on the number of lanes: every unit
computes exactly what it computes alone (one torch thread changes float summation order
only), and a lane reads its inputs from the run directory as the sequential executor does.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

import torch

from personal.data.embed import share_embeddings
from personal.distributed.runtime import allocator_env, config_payload, worker_context
from personal.errors import PersonalError
from personal.experiment import pipeline
from personal.experiment.progress import expected_seconds, expected_table
from personal.experiment.runs import _attach_log, console_log

# Ray is imported inside the functions that use it: this module imports without Ray.
log = logging.getLogger("personal")

BASE = "base/prepare"
NOISE = "eval/noise_ceiling"


@dataclass
class Node:
    """One unit of the plan: `kind` is base, noise, unit or eval; `strategy` is the strategy
    whose stages declare it (the first one, for a shared unit)."""

    name: str
    kind: str
    strategy: Optional[str]
    needs: set[str] = field(default_factory=set)


def plan_graph(ctx, strategies: list[str], stages_fn: Callable) -> dict[str, Node]:
    """The plan's units with what each needs to have finished first (see the module doc)."""
    graph = {BASE: Node(BASE, "base", None), NOISE: Node(NOISE, "noise", None)}
    writers: dict[str, str] = {}          # output path -> first unit writing it
    units_of: dict[str, set[str]] = {}
    for name in strategies:
        previous: set[str] = set()
        units_of[name] = set()
        for stage in stages_fn(ctx, name):
            for unit in stage:
                node = graph.setdefault(unit.name, Node(unit.name, "unit", name))
                node.needs |= previous | ({BASE} if unit.needs_base else set())
                for out in unit.outputs:
                    first = writers.setdefault(out, unit.name)
                    if first != unit.name:
                        node.needs.add(first)
            previous = {u.name for u in stage}
            units_of[name] |= previous
        graph[f"eval/{name}"] = Node(f"eval/{name}", "eval", name, {BASE} | units_of[name])
    for name, units in units_of.items():
        for other, theirs in units_of.items():
            if other != name and theirs and theirs <= units and not (units <= theirs):
                graph[f"eval/{name}"].needs.add(f"eval/{other}")
    _check_acyclic(graph)
    return graph


def _check_acyclic(graph: dict[str, Node]) -> None:
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise PersonalError(f"the plan's units depend on each other in a cycle: "
                                f"{' -> '.join(path + [name])}")
        state[name] = 1
        for need in sorted(graph[name].needs):
            visit(need, path + [name])
        state[name] = 2

    for name in graph:
        visit(name, [])


def critical_paths(graph: dict[str, Node], seconds: Callable[[str], float]) -> dict[str, float]:
    """Expected seconds from the start of each unit to the end of the plan (its own time plus
    the longest chain of units that wait for it): the list-scheduling priority."""
    users: dict[str, list[str]] = {n: [] for n in graph}
    for node in graph.values():
        for need in node.needs:
            users[need].append(node.name)
    memo: dict[str, float] = {}

    def path(name: str) -> float:
        if name not in memo:
            memo[name] = seconds(name) + max((path(u) for u in users[name]), default=0.0)
        return memo[name]

    return {name: path(name) for name in graph}


def ready_units(graph: dict[str, Node], done: set[str], started: set[str],
                priority: dict[str, float]) -> list[str]:
    """Units not started whose needs have all finished, most urgent first (plan order breaks
    ties)."""
    order = {name: i for i, name in enumerate(graph)}
    ready = [n for n, node in graph.items() if n not in started and node.needs <= done]
    return sorted(ready, key=lambda n: (-priority[n], order[n]))


def lane_threads(lanes: int) -> int:
    """Torch threads of one lane: this machine's cores shared equally."""
    return max(1, (os.cpu_count() or 1) // lanes)


def start_lanes(ctx, lanes: int, stages_fn: Callable) -> list:
    """`lanes` lane actors, started now. Their start (a process each, torch imported, the
    data loaded: ~14 s here) runs while the driver still simulates the background users and
    hashes the plan's units, instead of after."""
    if lanes < 1:
        raise PersonalError(f"ray.lanes={lanes}: need at least one lane")
    threads = lane_threads(lanes)
    env = {**{k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
           **allocator_env()}
    return [_lane_class().options(num_cpus=0, runtime_env={"env_vars": env}).remote(
        config_payload(ctx.cfg), str(ctx.run.path.resolve()), threads, stages_fn)
        for _ in range(lanes)]


def stop_lanes(actors: list) -> None:
    import ray

    for actor in actors:
        ray.kill(actor)


def run_lanes(ctx, strategies: list[str], stages_fn: Callable, progress, *,
              lanes: int, actors: Optional[list] = None) -> None:
    """Run every unit of the plan on `lanes` lane actors (`actors` if already started by
    `start_lanes`), each unit as soon as what it needs has finished; the lanes build units
    with `stages_fn` (a module-level function: it travels by name). `progress` (a
    PlanProgress) hears of every start and end. A failing unit stops the plan with its own
    error. The lanes are stopped at the end."""
    import ray

    actors = start_lanes(ctx, lanes, stages_fn) if actors is None else list(actors)
    try:
        graph = plan_graph(ctx, strategies, stages_fn)
        table = expected_table()  # once, not once per unit
        priority = critical_paths(graph, lambda unit: expected_seconds(unit, table))
        free, running, done, started = actors[:len(graph)], {}, set(), set()
        while len(done) < len(graph):
            for name in ready_units(graph, done, started, priority)[:len(free)]:
                node, actor = graph[name], free.pop()
                started.add(name)
                progress.begin(name)
                running[actor.run.remote(node.name, node.kind, node.strategy)] = (name, actor)
            if not running:
                stuck = sorted(set(graph) - done)
                raise PersonalError(f"no unit of the plan can start: {', '.join(stuck)}")
            [ref], _ = ray.wait(list(running), num_returns=1)
            name, actor = running.pop(ref)
            seconds, skipped = _result(ref, name)
            progress.end(name, seconds, skipped)
            done.add(name)
            free.append(actor)
    finally:
        stop_lanes(actors)


def _result(ref, name: str) -> tuple[float, bool]:
    """The lane's (seconds, skipped) for a unit, or the unit's own error."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = err.cause if isinstance(err.cause, BaseException) else None
        if isinstance(cause, PersonalError):
            raise cause from None
        raise RuntimeError(f"unit {name} failed in its lane:\n{err}") from None
    except ray.exceptions.RayActorError as err:
        raise RuntimeError(f"the lane running unit {name} died: {err}") from None


@lru_cache(maxsize=1)
def _lane_class():
    """The Ray actor class, made on first use so that this module imports without Ray."""
    import ray

    @ray.remote
    class Lane:
        """A process that runs units of one plan, one at a time, on the run's directory."""

        def __init__(self, payload: dict, run_path: str, threads: int, stages_fn: Callable):
            torch.set_num_threads(threads)
            console_log(os.environ.get("PERSONAL_QUIET") == "1")
            self.ctx = worker_context(payload, run_path)
            self.ctx.pretrain = False
            self.stages_fn = stages_fn
            _attach_log(Path(run_path) / "logs" / "run.log")
            share_embeddings(Path(run_path) / "cache" / "embeddings")

        def run(self, name: str, kind: str, strategy: Optional[str]) -> tuple[float, bool]:
            return run_node(self.ctx, name, kind, strategy, self.stages_fn)

    return Lane


class _UnitRecorder:
    """A lane's stand-in for PlanProgress: `Run.run_unit` tells it whether a unit ran or was
    skipped, and how long it took (the driver's PlanProgress shows the plan's lines)."""

    def __init__(self):
        self.ended: dict[str, tuple[float, bool]] = {}

    def begin(self, unit: str) -> None:
        log.info("start %s", unit)

    def end(self, unit: str, seconds: float, skipped: bool) -> None:
        self.ended[unit] = (seconds, skipped)


def run_node(ctx, name: str, kind: str, strategy: Optional[str],
             stages_fn: Callable) -> tuple[float, bool]:
    """Run one unit of the plan in this process; returns (seconds, skipped)."""
    recorder = ctx.run.progress = _UnitRecorder()
    if kind == "base":
        ctx.pretrain = True
        try:
            pipeline.prepare_base(ctx)
        finally:
            ctx.pretrain = False
    elif kind == "noise":
        pipeline.evaluate_noise_ceiling(ctx)
    elif kind == "eval":
        pipeline.evaluate_strategy(ctx, strategy, pipeline.trained_hash(ctx, strategy, stages_fn))
    else:
        unit = next((u for stage in stages_fn(ctx, strategy) for u in stage if u.name == name),
                    None)
        if unit is None:  # a strategy whose stages depend on what earlier units wrote
            raise PersonalError(f"strategy {strategy} no longer declares unit {name}")
        ctx.run.run_unit(unit.name, unit.inputs, unit.fn, unit.outputs)
    return recorder.ended[name]
