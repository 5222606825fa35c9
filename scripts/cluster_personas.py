"""Assign users to clusters, the first unit of the cluster_lora strategy, and print the
chosen number of clusters, the silhouette of every candidate and the members of each
cluster. The record goes to <run>/clusters/cluster_lora.json, where `personal train
cluster_lora` finds it (same data and settings: not computed again).

    python scripts/cluster_personas.py --data data/eval --run runs/main
    python scripts/cluster_personas.py --method agglomerative --n_clusters 10
    python scripts/cluster_personas.py strategy.cluster_lora.embedding_weight=0 --json

Exit codes: 0 success, 2 bad input (the message names the problem), 1 any other failure.
"""
from __future__ import annotations

import argparse
import json
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python scripts/cluster_personas.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. "
                   "strategy.cluster_lora.embed_turns=16")
    p.add_argument("--config", help="YAML config (only the keys it changes)")
    p.add_argument("--data", help="data folder (data.path)")
    p.add_argument("--run", default="runs/main", help="run directory (default: runs/main)")
    p.add_argument("--method", help="kmeans, agglomerative or dbscan (default: kmeans)")
    p.add_argument("--n_clusters", type=int, help="fixed number of clusters (default: the "
                   "best silhouette over 5, 10, 15, 20, 25)")
    p.add_argument("--json", action="store_true", help="print the whole record as JSON")
    return p.parse_args(argv)


def cluster_config(args: argparse.Namespace, user_deltas: bool = False):
    """The run config: --config, then the overrides, then the flags (which win)."""
    from personal.config import load_config, set_dotted

    cfg = load_config(args.config, args.overrides)
    if args.data:
        cfg = set_dotted(cfg, "data.path", args.data)
    for key, value in (("method", args.method), ("n_clusters", args.n_clusters),
                       ("user_deltas", user_deltas or None)):
        if value is not None:
            cfg = set_dotted(cfg, f"strategy.cluster_lora.{key}", value)
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # before the heavy imports: --help and usage errors stay fast
    from personal.errors import PersonalError
    from personal.experiment.context import Context
    from personal.strategies import cluster
    from personal.strategies.registry import get_strategy, strategy_config

    try:
        cfg = cluster_config(args)
        scfg = strategy_config(get_strategy("cluster_lora"), cfg.strategy.get("cluster_lora"))
        record = cluster.run_assignment(Context.create(cfg, args.run), scfg)
    except PersonalError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(record, indent=1) if args.json else cluster.describe_assignment(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
