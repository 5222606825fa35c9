"""Ray job: a Ray Tune ablation grid over dotted config keys, each trial a full train +
validation evaluation; one results table and an ablation plot under `<run>/sweep/`. Running
it again with the same grid resumes the interrupted sweep.

    ray job submit --working-dir . -- python -m ray_jobs.sweep \
        --config configs/ray_cluster.yaml --sweep configs/sweep_ranks.yaml --run /shared/runs/s1
    python -m ray_jobs.sweep --smoke-test --run /tmp/sweep/run        # 3 ranks x 2 lrs, 5 users

A sweep file holds `grid:` (key: [values]) and optionally `strategy:` and `metric:`; `--grid
key=[v1,v2]` items add to it. Exit codes: 0 success, 2 bad input, 1 any other failure.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

SMOKE_GRID = ["lora.rank=[2,4,8]", "train.lr=[1e-3,1e-2]"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="dotted config overrides for every trial")
    p.add_argument("--config", help="YAML config of every trial (only what it changes)")
    p.add_argument("--sweep", help="sweep file: grid, strategy, metric")
    p.add_argument("--grid", action="append", default=[], help="key=[v1,v2,...] (repeatable)")
    p.add_argument("--run", required=True, help="run directory of the sweep")
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS, else a local runtime)")
    p.add_argument("--num-cpus", type=int, help="CPUs of a local runtime")
    p.add_argument("--smoke-test", action="store_true", help="tiny model, 5 users, 2 CPUs")
    p.add_argument("--root", help="smoke test: folder of the simulated data and tiny base")
    return p.parse_args(argv)


def read_sweep_file(path: str | None) -> dict:
    """`grid` as `key=[...]` items plus `strategy` / `metric` from a sweep YAML file."""
    from personal.config import ConfigError, read_yaml

    if not path:
        return {"grid": [], "strategy": "unified_lora", "metric": "emb_sim"}
    data = read_yaml(path)
    unknown = set(data) - {"grid", "strategy", "metric"}
    if unknown:
        raise ConfigError(f"{path}: unknown sweep key(s) {sorted(unknown)} "
                          f"(known: grid, metric, strategy)")
    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"{path}: 'grid' must map dotted keys to lists of values")
    return {"grid": [f"{k}={json.dumps(v)}" for k, v in grid.items()],
            "strategy": data.get("strategy", "unified_lora"),
            "metric": data.get("metric", "emb_sim")}


def main(argv: list[str] | None = None) -> int:
    from personal.config import load_config
    from personal.distributed.runtime import ray_runtime
    from personal.distributed.tune import parse_grid, run_sweep
    from personal.errors import PersonalError

    args = parse_args(argv)
    try:
        spec = read_sweep_file(args.sweep)
        items = spec["grid"] + args.grid
        if args.smoke_test:
            from personal.distributed.smoke import smoke_config

            root = Path(args.root or Path(args.run).parent / "smoke_world")
            cfg = smoke_config(root, users=5, sessions=6,
                               overrides=["train.max_steps=2", "generation.max_new_tokens=6",
                                          *args.overrides])
            items = items or SMOKE_GRID
        else:
            cfg = load_config(args.config, args.overrides)
        grid = parse_grid(items, cfg)
        num_cpus = args.num_cpus or (2 if args.smoke_test else None)
        with ray_runtime(args.address or cfg.ray.address, num_cpus,
                         tempfile.mkdtemp(prefix="personal-ray-")):
            out = run_sweep(cfg, args.run, grid, strategy=spec["strategy"],
                            metric=spec["metric"])
    except PersonalError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"table": out["table"], "report": out.get("report"),
                      "trials": len(out["rows"])}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
