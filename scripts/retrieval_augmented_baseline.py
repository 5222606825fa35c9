"""Retrieval-augmented baseline: the unified adapter with each user's own top-k past exchanges
in the prompt, or (--trained) an adapter trained on such prompts. Trains what the run lacks,
evaluates on `eval.split`, prints the summary as JSON.

    python scripts/retrieval_augmented_baseline.py --k 3 --method similarity --format raw
    python scripts/retrieval_augmented_baseline.py --trained --k 5 --format summary \\
        --data data/eval --run runs/rag train.max_steps=200

Flags left out keep the strategy config's defaults (personal/strategies/retrieval.py).
Exit codes: 0 success, 2 bad input (the message names it), 1 any other failure.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="retrieval_augmented_baseline.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="dotted config overrides (train.lr=1e-3)")
    p.add_argument("--config", help="YAML config (only what it changes)")
    p.add_argument("--data", help="data folder (default: data.path of the config)")
    p.add_argument("--run", default="runs/retrieval", help="run directory (resumes)")
    p.add_argument("--k", type=int, help="past exchanges per turn (0: none)")
    p.add_argument("--method", help="similarity, recency or hybrid")
    p.add_argument("--format", help="raw, summary or preferences")
    p.add_argument("--trained", action="store_true",
                   help="train an adapter on retrieval prompts (retrieval_trained)")
    return p.parse_args(argv)


def strategy_overrides(args: argparse.Namespace, name: str) -> list[str]:
    """`strategy.<name>.<field>=value` for the flags given."""
    flags = {"k": args.k, "method": args.method, "format": args.format}
    return [f"strategy.{name}.{key}={value}" for key, value in flags.items() if value is not None]


def run(args: argparse.Namespace) -> dict:
    from personal.config import load_config
    from personal.experiment.context import Context
    from personal.experiment.pipeline import evaluate_strategy, prepare_base, train_strategy
    from personal.strategies.registry import get_strategy, strategy_config
    from personal.strategies.retrieval import check

    name = "retrieval_trained" if args.trained else "retrieval"
    data = [f"data.path={args.data}"] if args.data else []
    cfg = load_config(args.config, data + list(args.overrides) + strategy_overrides(args, name))
    check(strategy_config(get_strategy(name), cfg.strategy.get(name)))  # before any work
    ctx = Context.create(cfg, args.run)
    prepare_base(ctx)
    return evaluate_strategy(ctx, name, train_strategy(ctx, name))


def main(argv: list[str] | None = None) -> int:
    from personal.errors import PersonalError

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s",
                        datefmt="%H:%M:%S")
    try:
        summary = run(args)
    except PersonalError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
