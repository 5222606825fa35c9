"""Train and evaluate unified_prefix (the study's Strategy 9, form (a)): a per-user soft
prompt fitted on a frozen unified LoRA adapter, which can be any peft folder of one (another
run's `adapters/unified_lora`; by default the run trains its own). Prints the strategy's
macro metrics on the evaluated split and the prompt-swap check (the share of test turns
whose output changes when another user's prompt answers them); everything lands in the run
directory (a second call resumes, skipping finished units).

    python scripts/train_prefix_on_unified.py --prefix_length 20 --unified_lora_path runs/main/adapters/unified_lora
    python scripts/train_prefix_on_unified.py --prefix_length 10 --run runs/prefix
    python scripts/train_prefix_on_unified.py eval.max_users=20

Exit codes: 0 success, 2 bad input (the message names the problem), 1 any other failure.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_cluster_lora import train_and_report  # noqa: E402  (the scripts' shared body)

NAME = "unified_prefix"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python scripts/train_prefix_on_unified.py",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. "
                   "strategy.unified_prefix.epochs=3")
    p.add_argument("--config", help="YAML config (only the keys it changes)")
    p.add_argument("--data", help="data folder (data.path)")
    p.add_argument("--run", default="runs/main", help="run directory (default: runs/main)")
    p.add_argument("--prefix_length", type=int, help="virtual tokens per user (default 10)")
    p.add_argument("--unified_lora_path", help="peft folder of a unified adapter (default: "
                   "the run's own, trained if missing)")
    p.add_argument("--quiet", action="store_true", help="no progress, only results")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # before the heavy imports: --help and usage errors stay fast
    code = train_and_report(args, NAME, {"prefix_len": args.prefix_length,
                                         "unified_path": args.unified_lora_path})
    swap = read_swap(Path(args.run)) if code == 0 else None
    if swap:
        print(f"prompt swap: {swap['changed_share']:.1%} of {swap['swap_turns']} test turns "
              "change when another user's prompt answers them")
    return code


def read_swap(run: Path):
    from personal.experiment.runs import Run
    from personal.strategies.unified_prefix import DIAGNOSTICS

    record = Run(run).read_json(DIAGNOSTICS) or {}
    return record if record.get("changed_share") is not None else None


if __name__ == "__main__":
    sys.exit(main())
