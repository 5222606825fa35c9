"""Seeds as an axis of the study: the plan once per training seed, one report over all.

A seeds run is a folder holding the resolved config (with `run.seeds`), `seeds.json` (the
seeds and their sub-runs) and one complete single-seed run per seed in `seed-<k>/`. Data,
splits and the base model are the same in every seed: only what training draws at random
changes (LoRA initialisation, dropout, data order, and each strategy's own `seed` such as
k-means' or the routing classifier's). Units shared by strategies stay shared inside a
seed, because each seed is an ordinary run. `personal.experiment.reporting` compares the
strategies over seeds and users when it finds `seeds.json`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from personal.config import Config, set_dotted
from personal.errors import PersonalError
from personal.experiment.runs import SEEDS_FILE, run_subruns, subrun_folders
from personal.strategies.registry import get_strategy


def seed_run_name(seed: int) -> str:
    """Sub-run folder of one seed (seeds are checked integers >= 0 by `run.seeds`)."""
    return f"seed-{int(seed)}"


def seeded_config(cfg: Config, seed: int, strategies: list[str]) -> Config:
    """`cfg` for one seed: train.seed, the `seed` option of every strategy of the plan that
    has one, and generation.seed when generation samples (greedy decoding draws nothing, so
    the untrained base's evaluation stays one unit all seeds share) set to `seed`;
    run.seeds emptied (a plain run)."""
    gen = (dataclasses.replace(cfg.generation, seed=seed) if cfg.generation.do_sample
           else cfg.generation)
    out = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed),
                              generation=gen, run=dataclasses.replace(cfg.run, seeds=[]))
    for name in strategies:
        fields = {f.name for f in dataclasses.fields(get_strategy(name).config_cls)}
        if "seed" in fields:
            out = set_dotted(out, f"strategy.{name}.seed", seed)
    return out


def run_seeds(cfg: Config, run_path: str | Path, strategies: list[str],
              execute: Callable[[Config, Path], Path]) -> Path:
    """Run the plan once per seed of `cfg.run.seeds` with `execute(seed_cfg, sub_run)` (the
    local or the Ray executor), then write the seeds run's report; returns its path."""
    # the reporting layer reads the sub-runs; imported here to keep this module's users light
    from personal.experiment.reporting import report_from_run

    if len(cfg.run.seeds) < 1:
        raise PersonalError("run.seeds is empty: nothing to repeat (a plain run needs none)")
    points = {seed_run_name(s): seeded_config(cfg, s, strategies) for s in cfg.run.seeds}
    run_subruns(cfg, run_path, points, SEEDS_FILE, {"seeds": list(cfg.run.seeds)}, execute)
    return report_from_run(Path(run_path))


def seed_runs(run_path: str | Path) -> dict[int, Path]:
    """{seed: sub-run folder} of a seeds run, or {} for a single-seed run."""
    return subrun_folders(run_path, SEEDS_FILE, "seeds", seed_run_name)
