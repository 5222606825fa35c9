"""The study's ablation grids in one command, at a size that fits a 2-core machine: each
sweep file is a Ray Tune grid (`personal tune`), run on one reduced simulated population,
and its record goes to `docs/ablations/<sweep>/`: README.md (the command, the population,
the best trial, each setting's mean effect, every trial ranked), ablations.png and
results.csv. Every trial is scored on the validation split, so the test split stays unseen.

    python scripts/ablation_study.py                                # every sweep, 40 users
    python scripts/ablation_study.py --sweeps cluster,retrieval --users 40 --sessions 12
    python scripts/ablation_study.py --sweeps ranks --force train.epochs=2

Sweeps resume (a finished trial is skipped), so an interrupted study continues where it
stopped. Exit codes: 0 success, 2 bad input (the message names it), 1 any other failure.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

#: Sweep name -> its file: every `configs/sweep_<name>.yaml` (a strategy adds its sweep by
#: adding the file).
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SWEEPS = {p.stem[len("sweep_"):]: f"configs/{p.name}"
          for p in sorted(CONFIGS.glob("sweep_*.yaml"))}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python scripts/ablation_study.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="dotted config overrides for every trial")
    p.add_argument("--sweeps", default=",".join(SWEEPS),
                   help=f"comma-separated, of: {', '.join(SWEEPS)} (default: all)")
    p.add_argument("--users", type=int, default=40, help="simulated users (default 40)")
    p.add_argument("--sessions", type=int, default=12, help="sessions per user (default 12)")
    p.add_argument("--seed", type=int, default=1, help="simulator and split seed (default 1)")
    p.add_argument("--work", default="runs/ablations", help="data and trial runs go here")
    p.add_argument("--out", default="docs/ablations", help="where the records go")
    p.add_argument("--force", action="store_true", help="replace existing records in --out")
    return p.parse_args(argv)


def plan(args: argparse.Namespace) -> list[str]:
    """The sweeps to run, checked before any work (names, sizes, existing records)."""
    names = [n.strip() for n in args.sweeps.split(",") if n.strip()]
    unknown = [n for n in names if n not in SWEEPS]
    if not names or unknown:
        raise SystemExit(_usage(f"--sweeps: unknown sweep {unknown[0] if unknown else '(none)'}"
                                f" (known: {', '.join(SWEEPS)})"))
    if args.users < 6:
        raise SystemExit(_usage(f"--users {args.users}: at least 6 (clusters need users)"))
    if args.sessions < 5:
        raise SystemExit(_usage(f"--sessions {args.sessions}: at least 5 (train, val, test)"))
    taken = [n for n in names if (Path(args.out) / n / "README.md").exists()]
    if taken and not args.force:
        raise SystemExit(_usage(f"{Path(args.out) / taken[0]} already holds a record; "
                                "--force replaces it"))
    return names


def _usage(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def study_config(args: argparse.Namespace):
    """The study population (simulated once into --work) and the main job's own background
    population for the base, so every sweep tunes the base the main job uses."""
    from personal.config import DataConfig, load_config
    from personal.data.synth import write_synth

    data = Path(args.work) / f"data-{args.users}x{args.sessions}-seed{args.seed}"
    default = DataConfig()
    background = Path(args.work) / (f"background-{default.background_users}x"
                                    f"{default.sessions}-seed{default.seed}")
    for folder, users, sessions, seed, population in (
            (data, args.users, args.sessions, args.seed, "eval"),
            (background, default.background_users, default.sessions, default.seed,
             "background")):
        if not (folder / "sessions.jsonl").is_file():
            write_synth(folder, users=users, sessions=sessions, seed=seed, population=population)
    return load_config(None, [f"data.path={data}", f"data.background_path={background}",
                              f"data.seed={args.seed}"] + list(args.overrides))


def run_one(name: str, args: argparse.Namespace, cfg) -> list[Path]:
    from personal.distributed.runtime import ray_runtime
    from personal.distributed.tune import parse_grid, run_sweep, write_ablation_doc
    from ray_jobs.sweep import read_sweep_file  # the entry-point layer, beside this script

    spec = read_sweep_file(str(CONFIGS.parent / SWEEPS[name]))
    grid = parse_grid(spec["grid"], cfg)
    with ray_runtime(cfg.ray.address, None, tempfile.mkdtemp(prefix="personal-ray-")):
        out = run_sweep(cfg, Path(args.work) / name, grid, strategy=spec["strategy"],
                        metric=spec["metric"])
    command = "python scripts/ablation_study.py " + " ".join(
        shlex.quote(a) for a in [f"--sweeps={name}", f"--users={args.users}",
                                 f"--sessions={args.sessions}", f"--seed={args.seed}",
                                 *args.overrides])
    setup = (f"Sweep `{SWEEPS[name]}` ({spec['strategy']}, {len(out['rows'])} trials) on "
             f"{args.users} simulated users x {args.sessions} sessions (seed {args.seed}), "
             "the built-in base; every trial trains and is scored on the validation split "
             "of the same population.")
    return write_ablation_doc(Path(args.out) / name, out["rows"], list(grid), spec["metric"],
                              title=f"Ablation: {name}", command=command, setup=setup)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = plan(args)
    from personal.errors import PersonalError

    try:
        cfg = study_config(args)
        for name in names:
            for path in run_one(name, args, cfg):
                print(path)
    except PersonalError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # ray_jobs beside it
    sys.exit(main())
