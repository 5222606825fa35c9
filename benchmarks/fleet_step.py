"""Wall time of a fleet's training steps two ways:

- `fewest_passes`: each step's rows in the fewest passes of <= 64 rows (as before): 10
  cluster adapters x 4 sessions make one 40-row pass padded to its longest session;
- `cut`: `pack_rows` cuts the sorted rows where padding costs more than a pass.

    python benchmarks/fleet_step.py [--data data/default] [--adapters 10] [--steps 12]

Users are split into `--adapters` equal groups (like clusters), each group's packed training
sessions are one adapter's data, and both packings train the same fresh stack for `--steps`
steps on the built-in base (pretrained first if it is not cached). Reports real and padded
tokens, passes and seconds of each, and the ratio of the two times (same run, same machine).
"""
from __future__ import annotations

import argparse
import json
import time


def step_rows(datasets, plans, step):
    return [(k, datasets[k][i]) for k in range(len(plans)) if step < len(plans[k])
            for i in plans[k][step]]


def padding(datasets, plans, steps, micro_batch_rows=64):
    """(real tokens, padded tokens, passes) of the first `steps` steps under the current
    PASS_COST_TOKENS."""
    import torch

    from personal.engine.sampler import pack_rows, pass_cost

    real = padded = passes = 0
    for s in range(steps):
        for chunk in pack_rows(step_rows(datasets, plans, s), micro_batch_rows,
                               pass_cost(torch.device("cpu"))):
            widths = [len(ex["input_ids"]) for _, ex in chunk]
            real, padded, passes = real + sum(widths), padded + max(widths) * len(chunk), passes + 1
    return real, padded, passes


def timed_training(ctx, datasets, steps):
    from dataclasses import replace

    from personal.strategies.fleet import FleetSpec, fleet_model
    from personal.engine import train_stacked

    model = fleet_model(ctx, len(datasets), list(range(len(datasets))), FleetSpec())
    tok = ctx.base[1]
    cfg = replace(ctx.cfg.train, max_steps=steps, epochs=1.0)
    t0 = time.perf_counter()
    train_stacked(model, datasets, cfg, pad_token_id=tok.pad_token_id)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=None, help="data folder (default: data.path)")
    ap.add_argument("--run", default="runs/bench_fleet_step")
    ap.add_argument("--adapters", type=int, default=10)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from personal.config import Config
    from personal.engine import sampler
    from personal.engine.sampler import adapter_batches
    from personal.experiment.context import Context
    from personal.strategies.common import user_groups

    cfg = Config()
    if args.data:
        cfg.data.path = args.data
    ctx = Context.create(cfg, args.run)
    fmt, tok = ctx.prompt_format(), ctx.base[1]
    groups = user_groups(ctx, "train")
    names = sorted(groups)
    datasets = []
    for g in range(args.adapters):
        members = names[g::args.adapters]
        datasets.append([f for n in members for f in fmt.encode_training(tok, groups[n], True)])
    plans = [adapter_batches(len(d), cfg.train.batch_size, 1.0, args.steps, cfg.train.seed + k)
             for k, d in enumerate(datasets)]

    out = {}
    saved = dict(sampler.PASS_COST_TOKENS)
    variants = (("fewest_passes", 10 ** 9), ("cut", saved["cpu"]))
    for label, cost in variants:
        sampler.PASS_COST_TOKENS["cpu"] = cost
        try:
            real, padded, passes = padding(datasets, plans, args.steps)
            seconds = timed_training(ctx, datasets, args.steps)
        finally:
            sampler.PASS_COST_TOKENS.update(saved)
        out[label] = {"real_tokens": real, "padded_tokens": padded,
                      "padded_over_real": round(padded / real, 3), "passes": passes,
                      "seconds": round(seconds, 2)}
    out["speedup"] = round(out["fewest_passes"]["seconds"] / out["cut"]["seconds"], 2)
    if args.json:
        print(json.dumps(out))
        return
    for label, _ in variants:
        r = out[label]
        print(f"{label:>14}: {r['padded_over_real']:.3f}x padded tokens, {r['passes']} passes, "
              f"{r['seconds']:.1f}s")
    print(f"speedup: {out['speedup']:.2f}x ({args.adapters} adapters, {args.steps} steps)")


if __name__ == "__main__":
    main()
