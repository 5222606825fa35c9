"""The last decoder layer run only where its output is used (`personal.models.last_layer`),
against the plain forward, on the built-in base:

- `prompt_pass`: the prompt pass of greedy generation for `--rows` left-padded test prompts
  (plain: one pass over every position; trimmed: the last layer writes only keys and values
  for all but the last position, which then runs as a decoding step);
- `fleet_step`: forward + backward of a per-user LoRA fleet on packed training sessions
  (plain: the last layer at every position; trimmed: its queries and MLP at the targets).

    python benchmarks/last_layer.py [--reps 7] [--rows 256] [--threads 1]

Each repetition runs both variants on the same input, alternating which goes first, so the
host's speed drifts hit both alike; reported are the median times and their ratio (same run,
same machine), and the largest difference of the first logits / the loss (LoRA dropout is
off here so that the two compute the same thing).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time


def alternate(reps: int, variants: dict) -> tuple[dict, float]:
    """Median seconds of each variant (callables returning a tensor), and the largest
    difference between their results."""
    times = {k: [] for k in variants}
    worst = 0.0
    for i in range(reps + 1):
        names = list(variants) if i % 2 == 0 else list(variants)[::-1]
        out = {}
        for name in names:
            t0 = time.perf_counter()
            out[name] = variants[name]()
            if i > 0:  # the first round warms up both
                times[name].append(time.perf_counter() - t0)
        a, b = out.values()
        worst = max(worst, float((a - b).abs().max()))
    return {k: statistics.median(v) for k, v in times.items()}, worst


def prompt_pass(ctx, rows: int, reps: int) -> dict:
    import torch
    from transformers import StaticCache

    from personal.engine.generate import _prompt_pass
    from personal.engine.prompts import build_inputs
    from personal.engine.toy import left_pad

    model, tok = ctx.base
    model.eval()
    fmt = ctx.prompt_format()
    prompts = [fmt.prompt_ids(tok, e, 64) for e in ctx.examples("test")[:rows]]
    ids, mask = left_pad(prompts, tok.pad_token_id)
    inputs = build_inputs(model, ids, mask)

    def run(trimmed: bool):
        cache = StaticCache(config=model.config, max_cache_len=ids.shape[1] + 1)
        with torch.no_grad():
            if trimmed:
                out = _prompt_pass(model, inputs, "cache", cache, {"logits_to_keep": 1})
            else:
                out = model(**inputs, use_cache=True, cache=cache, logits_to_keep=1)
        return out.logits[:, -1]

    med, worst = alternate(reps, {"plain": lambda: run(False), "trimmed": lambda: run(True)})
    return {"plain_s": round(med["plain"], 3), "trimmed_s": round(med["trimmed"], 3),
            "speedup": round(med["plain"] / med["trimmed"], 3), "rows": len(prompts),
            "width": ids.shape[1], "max_logit_diff": worst}


def fleet_step(ctx, adapters: int, reps: int) -> dict:
    import torch

    from personal.strategies.fleet import fleet_model
    from personal.engine.sampler import collate
    from personal.engine.train import _row_losses
    from personal.models import last_layer
    from personal.strategies import per_user
    from personal.strategies.common import user_groups

    groups = user_groups(ctx, "train")
    names = sorted(groups)[:adapters]
    model = fleet_model(ctx, len(names), list(range(len(names))),
                        per_user.spec(ctx, per_user.PerUserConfig()))
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    tok, fmt = ctx.base[1], ctx.prompt_format()
    rows = [(k, ex) for k, n in enumerate(names)
            for ex in fmt.encode_training(tok, groups[n], True)[:4]]
    batch = collate(rows, tok.pad_token_id, "cpu")
    scale = torch.ones(len(rows))
    model.train()

    def run(share: float):
        last_layer.TRIM_SHARE = share
        total, _ = _row_losses(model, batch, scale)
        total.backward()
        model.zero_grad()
        return total.detach()

    saved = last_layer.TRIM_SHARE
    try:
        med, worst = alternate(reps, {"plain": lambda: run(0.0), "trimmed": lambda: run(saved)})
    finally:
        last_layer.TRIM_SHARE = saved
    targets = int((batch["labels"] != -100).sum())
    return {"plain_s": round(med["plain"], 3), "trimmed_s": round(med["trimmed"], 3),
            "speedup": round(med["plain"] / med["trimmed"], 3), "rows": len(rows),
            "tokens": int(batch["attention_mask"].sum()), "targets": targets,
            "max_loss_diff": worst}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", default="runs/bench_last_layer")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--rows", type=int, default=256, help="prompts of the prompt pass")
    ap.add_argument("--adapters", type=int, default=16, help="adapters of the fleet step")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a lane has 1)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch

    from personal.config import Config
    from personal.experiment.context import Context

    torch.set_num_threads(args.threads)
    ctx = Context.create(Config(), args.run)
    out = {"prompt_pass": prompt_pass(ctx, args.rows, args.reps),
           "fleet_step": fleet_step(ctx, args.adapters, args.reps), "threads": args.threads}
    if args.json:
        print(json.dumps(out))
        return
    for name, diff in (("prompt_pass", "max_logit_diff"), ("fleet_step", "max_loss_diff")):
        r = out[name]
        print(f"{name:>12}: plain {r['plain_s']:.3f} s, trimmed {r['trimmed_s']:.3f} s: "
              f"{r['speedup']:.2f}x ({diff} {r[diff]:.1e})")


if __name__ == "__main__":
    main()
