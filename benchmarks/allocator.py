"""Time of big-tensor work under glibc's default malloc and under `ALLOCATOR_ENV`
(`personal.distributed.runtime`), which the runtime gives every worker it starts:

- `elementwise_ms`: one product of two 38 MB float tensors into a fresh one;
- `prefill_s`: one prompt pass of the built-in base over 256 left-padded rows of <= 256 tokens with a KV
  cache (as generation's first step does; pretrained first if it is not cached);
- `max_rss_mb`: the process's peak resident memory (the price: freed memory is kept).

    python benchmarks/allocator.py [--rounds 2] [--rows 256] [--tokens 256]

glibc reads its settings when a process starts, so each measurement is a fresh child
process; the two settings alternate for `--rounds` rounds on the same machine and the
medians and their ratio are reported.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def child(rows: int, tokens: int, run: str) -> dict:
    import resource

    import torch

    torch.set_num_threads(1)
    a, b = torch.randn(9 << 20), torch.randn(9 << 20)   # 37.7 MB each
    times = []
    for _ in range(12):
        t0 = time.perf_counter()
        c = a * b
        times.append(time.perf_counter() - t0)
        del c
    out = {"elementwise_ms": 1e3 * statistics.median(times[2:])}

    from transformers import StaticCache

    from personal.config import Config
    from personal.experiment.context import Context

    model, _ = Context.create(Config(), run).base
    model.eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, model.config.vocab_size, (rows, tokens), generator=g)
    mask = torch.ones_like(ids)
    mask[::2, : tokens // 5] = 0  # left padding, as in a batch of prompts of mixed length
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    passes = []
    with torch.no_grad():
        for _ in range(3):
            cache = StaticCache(config=model.config, max_cache_len=tokens + 64)
            t0 = time.perf_counter()
            model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                  cache=cache, logits_to_keep=1)
            passes.append(time.perf_counter() - t0)
    out["prefill_s"] = statistics.median(passes)
    out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--run", default="runs/bench_allocator")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.rows, args.tokens, args.run)))
        return

    from personal.distributed.runtime import ALLOCATOR_ENV

    plain_env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV}
    settings = {"glibc_default": plain_env, "allocator_env": {**plain_env, **ALLOCATOR_ENV}}
    results: dict[str, list[dict]] = {k: [] for k in settings}
    cmd = [sys.executable, __file__, "--child", "--rows", str(args.rows), "--tokens",
           str(args.tokens), "--run", args.run]
    for r in range(args.rounds):
        for name in (list(settings) if r % 2 == 0 else list(reversed(settings))):
            done = subprocess.run(cmd, env=settings[name], capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{name} child failed:\n{done.stderr[-2000:]}")
            results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    out = {name: {k: round(statistics.median(r[k] for r in rs), 3) for k in rs[0]}
           for name, rs in results.items()}
    for k in ("elementwise_ms", "prefill_s"):
        out[f"{k}_speedup"] = round(out["glibc_default"][k] / out["allocator_env"][k], 2)
    if args.json:
        print(json.dumps(out))
        return
    for name in settings:
        r = out[name]
        print(f"{name:>14}: 38 MB product {r['elementwise_ms']:.1f} ms, prefill "
              f"{args.rows}x{args.tokens} {r['prefill_s']:.2f} s, peak RSS {r['max_rss_mb']:.0f} MB")
    print(f"speedup: elementwise {out['elementwise_ms_speedup']:.2f}x, "
          f"prefill {out['prefill_s_speedup']:.2f}x")


if __name__ == "__main__":
    main()
