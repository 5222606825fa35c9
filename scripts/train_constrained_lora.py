"""Train and evaluate constrained_lora: per user, the frozen unified adapter plus a small
residual LoRA (B starts at zero, so training starts exactly at unified) held near it by
l2_lambda * ||B A||^2 on the residual's effective weight change, or with --kd by a KL term
to the unified adapter's next-token distribution on the user's own training prompts.
Prints the strategy's macro metrics on the evaluated split; everything lands in the run
directory (a second call resumes, skipping finished units; the unified adapter is shared).

    python scripts/train_constrained_lora.py --l2_lambda 0.1 --rank 4
    python scripts/train_constrained_lora.py --kd --kd_temperature 2 --run runs/main
    python scripts/train_constrained_lora.py --rank 8 eval.max_users=20

Exit codes: 0 success, 2 bad input (the message names the problem), 1 any other failure.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_cluster_lora import train_and_report  # noqa: E402  (the scripts' shared body)

NAME = "constrained_lora"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python scripts/train_constrained_lora.py",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. "
                   "strategy.constrained_lora.epochs=2")
    p.add_argument("--config", help="YAML config (only the keys it changes)")
    p.add_argument("--data", help="data folder (data.path)")
    p.add_argument("--run", default="runs/main", help="run directory (default: runs/main)")
    p.add_argument("--l2_lambda", type=float, help="weight of ||B A||^2 (default 0.1)")
    p.add_argument("--rank", type=int, help="rank of each residual (default 4)")
    p.add_argument("--kd", action="store_true", help="distil toward unified instead")
    p.add_argument("--kd_weight", type=float, help="weight of the KL term (default 1.0)")
    p.add_argument("--kd_temperature", type=float, help="its temperature (default 2.0)")
    p.add_argument("--quiet", action="store_true", help="no progress, only results")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # before the heavy imports: --help and usage errors stay fast
    return train_and_report(args, NAME, {"l2_lambda": args.l2_lambda, "rank": args.rank,
                                         "kd_weight": args.kd_weight,
                                         "kd_temperature": args.kd_temperature,
                                         "kd": True if args.kd else None})


if __name__ == "__main__":
    sys.exit(main())
