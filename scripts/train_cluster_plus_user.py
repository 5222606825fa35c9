"""Train and evaluate cluster_lora with per-user deltas (cluster + user): one adapter per
cluster, then one small adapter per user started from their cluster's adapter; each user is
answered by their own delta (cold-start users by their cluster's adapter). The same flags as
train_cluster_lora.py, but its own run directory by default: in a run where cluster_lora was
already evaluated without deltas, this evaluation would replace that one. Pointed at such a
run with --run, it reuses the run's unified adapter, clusters and cluster adapters.

    python scripts/train_cluster_plus_user.py --n_clusters 10
    python scripts/train_cluster_plus_user.py --run runs/main strategy.cluster_lora.delta_lr=1e-3

Exit codes: 0 success, 2 bad input (the message names the problem), 1 any other failure.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_cluster_lora import main as train_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    return train_main(argv, user_deltas=True, prog="python scripts/train_cluster_plus_user.py",
                      doc=__doc__, run="runs/cluster_plus_user")


if __name__ == "__main__":
    sys.exit(main())
