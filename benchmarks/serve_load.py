"""Serving load: requests/s and p50/p99 latency of the Ray Serve app at 1, 8 and 32 concurrent
clients, requests spread over the users (round robin), with `@serve.batch` batches of up to
`--max-batch-size` requests of any users vs the same traffic one request per batch
(max batch size 1). Prints a JSON table with the batched / one-per-batch ratios.

    python benchmarks/serve_load.py --json                  # smoke world: 8 users, minutes
    python benchmarks/serve_load.py --run runs/main --strategy per_user_lora --requests 256

With `--serve A,B,...` it compares served strategies instead, each batched, in one run on
one machine: each entry is a strategy, optionally with its options after `@`
(`moe_lora@mode=hard`), and the ratios are each entry's requests/s over the first's:

    python benchmarks/serve_load.py --users 200 \
        --serve unified_lora,moe_lora@mode=soft,moe_lora@mode=hard --json

(the smoke world then trains unified, cluster_lora's 10 clusters and moe_lora's router).

Loopback only. Bounded: at most `--requests` requests and `--level-seconds` seconds per
concurrency level (a level stops issuing requests at its deadline), `--warmup` requests
before each mode. The default smoke world (`smoke_config`, 8 users x 6 sessions, per-user
LoRA adapters trained in seconds, 12 new tokens per answer) runs in a few minutes on 2 CPUs;
its requests are the run's test turns. Clients are threads of this process (urllib), so on a
2-core machine they compete with the replica: numbers are for comparing the two modes on the
same machine, not absolute capacity. Each mode gets a fresh deployment on a local runtime with
`--cpus` CPUs; the generator has `max_loaded_adapters` = users + 1 (no evictions: the
comparison is batching alone). The last line with --json is one JSON object.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", help="a finished run to serve (default: a smoke world)")
    p.add_argument("--strategy", default="per_user_lora", help="strategy served")
    p.add_argument("--root", help="folder of the smoke world (default: a temp folder)")
    p.add_argument("--users", type=int, default=8, help="smoke world: users")
    p.add_argument("--levels", default="1,8,32", help="concurrent clients per level")
    p.add_argument("--requests", type=int, default=96, help="requests per level (at most)")
    p.add_argument("--level-seconds", type=float, default=90.0, help="time limit per level")
    p.add_argument("--warmup", type=int, default=8, help="requests before each mode")
    p.add_argument("--max-batch-size", type=int, default=32, help="batched mode's batch size")
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray runtime")
    p.add_argument("--serve", help="compare these served strategies (comma-separated, "
                                   "options after @: moe_lora@mode=hard) instead of batching modes")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    return p.parse_args(argv)


def smoke_run(root: Path, users: int, strategies: list[str]) -> Path:
    """A smoke world with `strategies` trained (reused when already there); cluster_lora
    (moe_lora's experts) with 10 clusters."""
    import dataclasses

    from personal.distributed.smoke import smoke_config
    from personal.experiment.context import Context
    from personal.experiment.pipeline import train_strategy

    cfg = smoke_config(root, users=users, sessions=6, overrides=["train.max_steps=12"])
    cfg = dataclasses.replace(cfg, strategy={"cluster_lora": {"n_clusters": 10},
                                             "moe_lora": {"label_turns": 2,
                                                          "diagnostic_turns": 0}})
    ctx = Context.create(cfg, root / "run")
    for strategy in dict.fromkeys(strategies):
        train_strategy(ctx, strategy)
    return ctx.run.path


def served_entries(spec: str) -> list[tuple[str, str, list[str]]]:
    """(label, strategy, config overrides) of each `--serve` entry."""
    out = []
    for entry in [e.strip() for e in spec.split(",") if e.strip()]:
        name, _, opts = entry.partition("@")
        overrides = [f"strategy.{name}.{o}" for o in opts.split("+") if o]
        out.append((entry, name, overrides))
    return out


def request_bodies(run: Path) -> tuple[list[dict], int]:
    """The run's evaluated turns as request bodies, users interleaved (round robin), and the
    number of users."""
    from personal.distributed.runtime import config_payload, worker_context
    from personal.distributed.serve import run_config
    from personal.serving.http_eval import request_body

    ctx = worker_context(config_payload(run_config(run)), run)
    by_user: dict[str, list] = {}
    for e in ctx.examples(ctx.cfg.eval.split, ctx.eval_personas()):
        by_user.setdefault(e.persona_id, []).append(request_body(e))
    spread = [b for group in itertools.zip_longest(*by_user.values()) for b in group if b]
    return spread, len(by_user)


def run_level(url: str, bodies: list[dict], clients: int, max_requests: int,
              seconds: float) -> dict:
    """`clients` threads sending requests back to back until `max_requests` or the deadline."""
    from personal.serving.http_eval import ClientOptions, call, percentile

    opts = ClientOptions(retries=0, timeout_s=seconds + 60)
    source, lock = itertools.cycle(bodies), threading.Lock()
    state = {"issued": 0}
    latency: list[float] = []
    errors: list[int] = []
    deadline = time.monotonic() + seconds

    def client() -> None:
        while True:
            with lock:
                if state["issued"] >= max_requests or time.monotonic() > deadline:
                    return
                state["issued"] += 1
                body = next(source)
            reply = call(url, body, opts)
            with lock:
                if reply.ok:
                    latency.append(reply.seconds * 1000)
                else:
                    errors.append(reply.status)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"clients": clients, "requests": len(latency), "errors": len(errors),
            "seconds": round(wall, 2), "requests_per_s": round(len(latency) / wall, 2),
            "p50_ms": round(percentile(latency, 50), 1),
            "p99_ms": round(percentile(latency, 99), 1)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_mode(run: Path, args, batch: int, users: int, bodies: list[dict],
             strategy: Optional[str] = None, overrides: Sequence[str] = (),
             label: Optional[str] = None) -> list[dict]:
    """Deploy the app with max batch size `batch`, warm it up, run every level."""
    from ray import serve

    from personal.distributed.serve import build_app, start_app
    from personal.serving.http_eval import ClientOptions, replay, wait_ready
    from personal.serving.routing import ServeConfig

    scfg = ServeConfig(strategy=strategy or args.strategy, max_batch_size=batch,
                       max_loaded_adapters=users + 1, batch_wait_timeout_s=0.01)
    port = free_port()
    start_app(build_app(run, scfg, overrides), "127.0.0.1", port)
    base = f"http://127.0.0.1:{port}"
    url = base + "/v1/assist"
    try:
        wait_ready(base)
        replay(url, bodies[:args.warmup], ClientOptions(concurrency=4))
        rows = []
        for clients in [int(c) for c in args.levels.split(",")]:
            before = wait_ready(base)["generator"]
            row = run_level(url, bodies, clients, args.requests, args.level_seconds)
            after = wait_ready(base)["generator"]
            done = after["requests"] - before["requests"]
            row.update(mode=label or ("batched" if batch > 1 else "one_per_batch"),
                       max_batch_size=batch,
                       mean_batch=round(done / max(1, after["batches"] - before["batches"]), 2))
            rows.append(row)
            print(json.dumps(row), flush=True)
        return rows
    finally:
        serve.shutdown()


def ratios(rows: list[dict]) -> list[dict]:
    """Per level: batched / one-per-batch requests/s, and one-per-batch / batched p50."""
    by = {(r["mode"], r["clients"]): r for r in rows}
    out = []
    for (mode, clients), r in by.items():
        single = by.get(("one_per_batch", clients))
        if mode == "batched" and single and single["requests_per_s"] > 0:
            out.append({"clients": clients,
                        "rps_ratio": round(r["requests_per_s"] / single["requests_per_s"], 2),
                        "p50_ratio_single_over_batched": round(single["p50_ms"] / r["p50_ms"], 2)
                        if r["p50_ms"] > 0 else None})
    return out


def served_ratios(rows: list[dict], first: str) -> list[dict]:
    """Per entry and level: its requests/s over the first entry's at the same level."""
    base = {r["clients"]: r for r in rows if r["mode"] == first}
    return [{"served": r["mode"], "clients": r["clients"],
             "rps_ratio": round(r["requests_per_s"] / base[r["clients"]]["requests_per_s"], 2)}
            for r in rows if r["mode"] != first and base.get(r["clients"], {}).get("requests_per_s")]


def main(argv=None) -> int:
    import torch

    from personal.distributed.runtime import ray_runtime

    args = parse(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("PERSONAL_QUIET", "1")
    root = Path(args.root or tempfile.mkdtemp(prefix="serve_load"))
    entries = served_entries(args.serve) if args.serve else []
    names = [name for _, name, _ in entries] or [args.strategy]
    run = Path(args.run).resolve() if args.run else smoke_run(root, args.users, names)
    bodies, users = request_bodies(run)
    load = os.getloadavg()[0]
    with ray_runtime(None, num_cpus=args.cpus, temp_dir=tempfile.mkdtemp(prefix="pray")):
        if entries:
            rows = [row for label, name, overrides in entries
                    for row in run_mode(run, args, args.max_batch_size, users, bodies, name,
                                        overrides, label)]
        else:
            rows = run_mode(run, args, args.max_batch_size, users, bodies)
            rows += run_mode(run, args, 1, users, bodies)
    result = {"run": str(run), "strategy": args.serve or args.strategy, "users": users,
              "distinct_requests": len(bodies), "cpus": args.cpus,
              "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2),
              "rows": rows,
              "ratio": served_ratios(rows, entries[0][0]) if entries else ratios(rows)}
    print(json.dumps(result, indent=None if args.json else 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
