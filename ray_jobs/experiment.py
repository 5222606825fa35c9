"""Ray job: one experiment (train + evaluate + report strategies) on the Ray cluster the job
was submitted to, or on a local runtime.

    ray job submit --working-dir . -- python -m ray_jobs.experiment \
        --config configs/ray_cluster.yaml --run /shared/runs/exp1
    python -m ray_jobs.experiment --smoke-test --run /tmp/smoke/run       # laptop, 2 CPUs

`--smoke-test`: a few simulated users and a tiny random base written under `--root` (default:
next to the run), a few steps, `num_cpus=2`, the unified adapter on 2 Ray Train workers.
`--local` runs the same experiment without Ray workers (the reference the Ray run must match).
Exit codes: 0 success, 2 bad input, 1 any other failure.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

STRATEGIES = "unified_lora"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.experiment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.lr=1e-4")
    p.add_argument("--config", help="YAML config (only what it changes)")
    p.add_argument("--run", required=True, help="run directory (shared storage on a cluster)")
    p.add_argument("--strategies", default=STRATEGIES, help="comma-separated strategy names")
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS, else a local runtime)")
    p.add_argument("--num-cpus", type=int, help="CPUs of a local runtime")
    p.add_argument("--smoke-test", action="store_true", help="tiny model, few users, 2 CPUs")
    p.add_argument("--root", help="smoke test: folder of the simulated data and tiny base")
    p.add_argument("--local", action="store_true", help="no Ray: the local executor")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace):
    """The experiment's config: smoke world or `--config`, then the overrides."""
    from personal.config import load_config

    if args.smoke_test:
        from personal.distributed.smoke import smoke_config

        root = Path(args.root or Path(args.run).parent / "smoke_world")
        overrides = ["ray.num_workers=2", "ray.cpus_per_worker=1", *args.overrides]
        if args.config:
            raise SystemExit("--smoke-test builds its own config; drop --config")
        return smoke_config(root, users=4, sessions=6, overrides=overrides)
    return load_config(args.config, args.overrides)


def main(argv: list[str] | None = None) -> int:
    from personal.distributed.executor import run_experiment
    from personal.errors import PersonalError

    args = parse_args(argv)
    try:
        cfg = build_config(args)
        strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
        num_cpus = args.num_cpus or (2 if args.smoke_test else None)
        report = run_experiment(cfg, args.run, strategies, address=args.address,
                                num_cpus=num_cpus, use_ray=not args.local)
    except PersonalError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summaries = {s: json.loads((Path(args.run) / "metrics" / f"{s}_summary.json").read_text())
                 for s in strategies}
    print(json.dumps({"report": str(report),
                      "macro": {s: v["macro"] for s, v in summaries.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
