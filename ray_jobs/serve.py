"""Ray job: serve a finished run (Ray Serve) on the cluster the job was submitted to, or on a
local runtime.

    ray job submit --working-dir . -- python -m ray_jobs.serve --run /shared/runs/exp1 \
        --strategy per_user_lora --host 0.0.0.0 --allow-remote --detach
    python -m ray_jobs.serve --smoke-test --root /tmp/serve_smoke    # laptop, 2 CPUs

`--detach` (cluster only) deploys the app and returns; it keeps serving until
`serve shutdown` or `serve.delete("personal")`. Without it the job serves until interrupted.
`--smoke-test`: a 3-user smoke world under `--root`, per-user adapters trained in seconds,
served on a free loopback port with `num_cpus=2`; one request per user is sent, the answers
printed as JSON, and everything shut down.
Exit codes: 0 success, 2 bad input, 1 any other failure.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="dotted config overrides of the run's config")
    p.add_argument("--run", help="run directory (shared storage on a cluster)")
    p.add_argument("--strategy", help="strategy to serve (default: the one the run trained)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host")
    p.add_argument("--max-loaded-adapters", type=int, help="adapter slots per generator")
    p.add_argument("--max-batch-size", type=int, help="requests decoded together")
    p.add_argument("--replicas", type=int, help="generator replicas")
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS, else a local runtime)")
    p.add_argument("--detach", action="store_true", help="deploy and return (cluster only)")
    p.add_argument("--smoke-test", action="store_true", help="tiny world, loopback, 2 CPUs")
    p.add_argument("--root", help="smoke test: folder of the world (default: a temp folder)")
    return p.parse_args(argv)


def smoke_run(root: Path) -> Path:
    """A trained 3-user per-user run under `root` (reused when already there)."""
    from personal.distributed.smoke import smoke_config
    from personal.experiment.context import Context
    from personal.experiment.pipeline import train_strategy

    cfg = smoke_config(root, users=3, sessions=6, overrides=[
        "train.max_steps=20", "train.batch_size=2", "train.lr=5e-2", "train.patience=0",
        "generation.max_new_tokens=8"])
    ctx = Context.create(cfg, root / "run")
    train_strategy(ctx, "per_user_lora")
    return ctx.run.path


def smoke_test(args: argparse.Namespace) -> dict:
    """Serve the smoke run on a free loopback port, ask once per user, shut down."""
    import tempfile

    from ray import serve

    from personal.distributed.runtime import free_port, ray_runtime
    from personal.distributed.serve import build_app, start_app
    from personal.serving.http_eval import ClientOptions, call, wait_ready
    from personal.serving.routing import ServeConfig

    root = Path(args.root or tempfile.mkdtemp(prefix="serve_smoke"))
    run = smoke_run(root)
    port = free_port()
    app = build_app(run, ServeConfig(strategy="per_user_lora", max_loaded_adapters=2))
    url = f"http://127.0.0.1:{port}"
    with ray_runtime(None, num_cpus=2, temp_dir=tempfile.mkdtemp(prefix="pray")):
        try:
            start_app(app, "127.0.0.1", port)
            wait_ready(url)
            answers = {}
            for user in ("persona_000", "persona_001", "persona_002", "someone_else"):
                reply = call(url + "/v1/assist", {"user_id": user, "meta": None, "messages": [
                    {"role": "user", "text": "Lights to 40 please."}]}, ClientOptions())
                answers[user] = reply.body
        finally:
            serve.shutdown()
    return {"run": str(run), "answers": answers}


def main(argv: list[str] | None = None) -> int:
    from personal.distributed.serve import serve_run
    from personal.errors import PersonalError
    from personal.serving.routing import serve_config

    args = parse_args(argv)
    try:
        if args.smoke_test:
            print(json.dumps(smoke_test(args), indent=1))
            return 0
        if not args.run:
            raise PersonalError("--run is required (or --smoke-test)")
        scfg = serve_config(strategy=args.strategy, max_loaded_adapters=args.max_loaded_adapters,
                            max_batch_size=args.max_batch_size, generator_replicas=args.replicas)
        serve_run(args.run, scfg, host=args.host, port=args.port,
                  allow_remote=args.allow_remote, address=args.address,
                  overrides=args.overrides, wait=not args.detach,
                  on_ready=lambda url: print(f"serving {args.run} at {url}", flush=True))
    except PersonalError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
