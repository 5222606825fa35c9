"""Train and evaluate the cluster_lora strategy: users clustered by their training data, one
LoRA adapter per cluster (one batched fleet), each user answered by their cluster's adapter.
Prints the clusters and the strategy's macro metrics on the evaluated split; everything lands
in the run directory (a second call resumes, skipping finished units).

    python scripts/train_cluster_lora.py --n_clusters 10
    python scripts/train_cluster_lora.py --data data/eval --run runs/main --method agglomerative
    python scripts/train_cluster_lora.py strategy.cluster_lora.init=base eval.max_users=20

Exit codes: 0 success, 2 bad input (the message names the problem), 1 any other failure.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster_personas import cluster_config  # noqa: E402  (the scripts' shared flags)

#: The metrics printed (every metric is in <run>/metrics/cluster_lora_summary.json).
HEADLINE = ("emb_sim", "device_precision", "param_f1")


def parse_args(argv: list[str] | None, prog: str, doc: str, run: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.lr=1e-3 "
                   "strategy.cluster_lora.epochs=2")
    p.add_argument("--config", help="YAML config (only the keys it changes)")
    p.add_argument("--data", help="data folder (data.path)")
    p.add_argument("--run", default=run, help=f"run directory (default: {run})")
    p.add_argument("--method", help="kmeans, agglomerative or dbscan (default: kmeans)")
    p.add_argument("--n_clusters", type=int, help="fixed number of clusters (default: the "
                   "best silhouette over 5, 10, 15, 20, 25)")
    p.add_argument("--quiet", action="store_true", help="no progress, only results")
    return p.parse_args(argv)


def show_progress(quiet: bool) -> None:
    """The library's INFO lines (units started, skipped, done) on stderr, unless quiet."""
    if quiet:
        os.environ["PERSONAL_QUIET"] = "1"  # no progress bars either
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING if quiet else logging.INFO)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
    log = logging.getLogger("personal")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # libraries that configure the root logger would print it twice


def train_and_report(args: argparse.Namespace, name: str, options: dict) -> int:
    """A study script's body: the run config (--config, overrides, --data, then `options`
    as strategy.<name>.<key>), options checked before any work, train + evaluate, and the
    headline metrics printed; 2 on bad input. Returns the exit code."""
    from personal.config import load_config, set_dotted
    from personal.errors import PersonalError
    from personal.experiment.context import Context
    from personal.experiment.pipeline import evaluate_strategy, prepare_base, train_strategy
    from personal.strategies.registry import get_strategy, strategy_config

    show_progress(args.quiet)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.data:
            cfg = set_dotted(cfg, "data.path", args.data)
        for key, value in options.items():
            if value is not None:
                cfg = set_dotted(cfg, f"strategy.{name}.{key}", value)
        strategy_config(get_strategy(name), cfg.strategy.get(name))
        ctx = Context.create(cfg, args.run)
        prepare_base(ctx)
        summary = evaluate_strategy(ctx, name, train_strategy(ctx, name))
    except PersonalError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    macro = {k: v for k, v in summary["macro"].items() if k in HEADLINE}
    print(f"{name} on {summary['users']} users ({summary['examples']} turns, "
          f"{cfg.eval.split} split): " + ", ".join(f"{k}={v:.4f}" for k, v in macro.items()))
    print(f"metrics and predictions: {args.run} (personal report {args.run})")
    return 0


def main(argv: list[str] | None = None, user_deltas: bool = False,
         prog: str = "python scripts/train_cluster_lora.py", doc: str = __doc__,
         run: str = "runs/main") -> int:
    args = parse_args(argv, prog, doc, run)  # before the heavy imports: --help stays fast
    from personal.errors import PersonalError
    from personal.experiment.context import Context
    from personal.experiment.pipeline import evaluate_strategy, prepare_base, train_strategy
    from personal.strategies import cluster
    from personal.strategies.registry import get_strategy, strategy_config

    show_progress(args.quiet)
    try:
        cfg = cluster_config(args, user_deltas)
        scfg = strategy_config(get_strategy("cluster_lora"), cfg.strategy.get("cluster_lora"))
        ctx = Context.create(cfg, args.run)
        prepare_base(ctx)
        summary = evaluate_strategy(ctx, "cluster_lora", train_strategy(ctx, "cluster_lora"))
        print(cluster.describe_assignment(cluster.read_assignment(ctx, scfg)))
    except PersonalError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    deltas = " + per-user deltas" if scfg.user_deltas else ""
    macro = {k: v for k, v in summary["macro"].items() if k in HEADLINE}
    print(f"cluster_lora{deltas} on {summary['users']} users ({summary['examples']} turns, "
          f"{cfg.eval.split} split): " + ", ".join(f"{k}={v:.4f}" for k, v in macro.items()))
    print(f"metrics and predictions: {args.run} (personal report {args.run})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
