"""The `personal` command. Each command only wires flags to the library below it.

Exit codes: 0 success, 2 bad input or usage (the message names the problem), 1 any other
failure. Heavy imports (torch, transformers) happen inside commands so `--help` stays fast.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import typer

# Light modules here; commands import heavy ones (torch, Ray, scipy) inside: `--help` stays fast.
from personal.config import load_config, set_dotted
from personal.data.importer import write_import
from personal.data.io import read_splits, write_dataset, write_splits
from personal.data.safety import check_output_file, check_output_folder
from personal.data.splits import cold_start_count, make_splits
from personal.data.stats import REPLY_SESSIONS, dataset_stats, format_stats
from personal.data.synth import write_synth
from personal.data.validate import load_dataset, validate_dataset
from personal.errors import DataError, PersonalError, Terminated
from personal.experiment.runs import console_log
from personal.serving.routing import serve_config

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Personalize an LLM assistant for many users with few examples each.")
data_app = typer.Typer(no_args_is_help=True, help="Create, check, import, split and describe data.")
base_app = typer.Typer(no_args_is_help=True, help="The built-in base model.")
app.add_typer(data_app, name="data")
app.add_typer(base_app, name="base")


#: Largest simulated population `personal data synth` makes (~2 KB per session in memory:
#: the limit keeps a typo such as --sessions 100000 from filling the machine).
MAX_SYNTH_USERS, MAX_SYNTH_SESSIONS = 20_000, 2_000


def _drop_stale_splits(out: Path, force: bool) -> None:
    """With --force, remove the splits file of the dataset being replaced in `out` (checked
    by `check_output_folder` before any work), which would no longer match it."""
    stale = Path(out) / "splits.json"
    if force and stale.is_file():
        stale.unlink()
        typer.echo(f"removed the stale {stale} (--force)", err=True)


def _echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


# --- personal data ... ----------------------------------------------------------------------

@data_app.command("synth", epilog="Example: personal data synth --out data/eval --users 200 "
                                  "--sessions 50 --seed 0")
def data_synth(
    out: Path = typer.Option(..., "--out", help="Folder to write the canonical layout into."),
    users: int = typer.Option(200, help="Number of simulated users (personas)."),
    sessions: int = typer.Option(50, help="Sessions per user."),
    seed: int = typer.Option(0, help="Seed: the same seed gives identical bytes."),
    population: str = typer.Option("eval", help="eval, or background (disjoint users for "
                                                "pretraining the base model)."),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty folder "
                               "(replacing its dataset and removing its stale splits.json)."),
) -> None:
    """Simulate users in the EdgeWisePersona layout."""
    if population not in ("eval", "background"):
        raise PersonalError(f"--population must be eval or background, got {population!r}")
    if not 1 <= users <= MAX_SYNTH_USERS or not 1 <= sessions <= MAX_SYNTH_SESSIONS:
        raise PersonalError(f"--users must be in 1..{MAX_SYNTH_USERS} and --sessions in "
                            f"1..{MAX_SYNTH_SESSIONS}, got {users} and {sessions}")
    check_output_folder(out, force)
    _drop_stale_splits(out, force)
    t0 = time.perf_counter()
    ds = write_synth(out, users=users, sessions=sessions, seed=seed, population=population)
    n_turns = sum(len(s.messages) for p in ds.personas for s in p.sessions)
    typer.echo(f"wrote {len(ds.personas)} users x {sessions} sessions ({n_turns} messages, "
               f"population={population}, seed={seed}) to {out} "
               f"in {time.perf_counter() - t0:.1f}s")


@data_app.command("validate", epilog="Example: personal data validate data/eval --lenient")
def data_validate(
    path: Path = typer.Argument(..., help="Folder in the canonical layout."),
    lenient: bool = typer.Option(False, "--lenient", help="Drop bad records and report "
                                 "exactly which, instead of failing."),
    out: Optional[Path] = typer.Option(None, "--out", help="With --lenient: write the kept "
                                       "records here as a clean dataset (a new folder)."),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty folder "
                               "(replacing its dataset and removing its stale splits.json)."),
) -> None:
    """Check a dataset (and its splits.json, when it has one) and print every problem
    (file, line, field, what was expected)."""
    if out is not None:
        check_output_folder(out, force, reads=[path])
    result = validate_dataset(path)
    result.problems += _splits_problems(path, result)
    for problem in result.problems:
        typer.echo(str(problem), err=True)
    n_sessions = sum(len(p.sessions) for p in result.dataset.personas)
    if result.problems and not lenient:
        typer.echo(f"{path}: {len(result.problems)} problem(s); nothing was changed "
                   f"(--lenient drops the bad records)", err=True)
        raise typer.Exit(2)
    if result.dropped:
        typer.echo(f"dropped {len(result.dropped)} record(s):", err=True)
        for record in result.dropped:
            typer.echo(f"  {record}", err=True)
    if not result.dataset.personas or n_sessions == 0:
        raise PersonalError(f"{path}: nothing valid is left ({len(result.problems)} "
                            f"problem(s)); no dataset was written")
    if out is not None:
        _drop_stale_splits(out, force)
        write_dataset(result.dataset, out)
        typer.echo(f"wrote the kept records to {out} (no splits.json: the kept sessions are "
                   f"numbered anew; make one with `personal data split {out}`)")
    typer.echo(f"{path}: ok: {len(result.dataset.personas)} users, {n_sessions} sessions kept")


def _splits_problems(path: Path, result) -> list:
    """Problems of the folder's own splits.json against the records that passed (none when
    the records have problems of their own: the indices would be judged against a partial
    dataset)."""
    target = Path(path) / "splits.json"
    if not target.is_file() or result.problems:
        return []
    try:
        read_splits(target, result.dataset)
    except DataError as err:
        return list(err.problems)
    return []


@data_app.command("import", epilog="Example: personal data import --dialogues cleaned.jsonl "
                                   "--splits splits.json --out data/real")
def data_import(
    dialogues: Path = typer.Option(..., "--dialogues", help="One JSON object per dialogue."),
    splits: Path = typer.Option(..., "--splits", help="{persona_id: {train, val, test}} of "
                                "line indices into the dialogue file."),
    out: Path = typer.Option(..., "--out", help="Folder to write the canonical layout into."),
    force: bool = typer.Option(False, "--force", help="Write into a non-empty folder "
                               "(replacing its dataset and removing its stale splits.json)."),
) -> None:
    """Import the cleaned-dialogues layout + splits file into the canonical layout."""
    check_output_folder(out, force, reads=[dialogues, splits])
    ds, sp = write_import(dialogues, splits, out)
    n = sum(len(p.sessions) for p in ds.personas)
    typer.echo(f"imported {len(ds.personas)} users, {n} dialogues into {out} "
               f"(splits in {out / 'splits.json'})")


@data_app.command("split", epilog="Example: personal data split data/eval --cold-start 10 --seed 0")
def data_split(
    path: Path = typer.Argument(..., help="Folder in the canonical layout."),
    cold_start: Optional[int] = typer.Option(None, "--cold-start", help="Users held out of "
                                             "every training split (default: 10, at most a "
                                             "fifth of the users, as data.cold_start)."),
    seed: int = typer.Option(0, help="Seed choosing the cold-start users."),
    train_frac: float = typer.Option(0.6, help="Fraction of each user's sessions for training."),
    val_frac: float = typer.Option(0.2, help="Fraction for validation; the rest is test."),
    out: Optional[Path] = typer.Option(None, help="Splits file (default PATH/splits.json)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing splits file (a "
                               "published or imported split is data too)."),
) -> None:
    """Split each user's sessions, in order, into train/val/test."""
    if not 0 < train_frac <= 1 or not 0 <= val_frac < 1 or train_frac + val_frac > 1:
        raise PersonalError(f"--train-frac must be in (0, 1], --val-frac in [0, 1) and their sum "
                            f"at most 1, got {train_frac} and {val_frac}")
    if cold_start is not None and cold_start < 0:
        raise PersonalError(f"--cold-start must be at least 0, got {cold_start}")
    target = check_output_file(out or Path(path) / "splits.json", force)
    ds = load_dataset(path)
    cold_start = cold_start_count(cold_start, len(ds.personas))
    splits = make_splits(ds, train_frac=train_frac, val_frac=val_frac, cold_start=cold_start,
                         seed=seed)
    write_splits(splits, target)
    counts = {k: sum(len(getattr(s, k)) for s in splits.values()) for k in ("train", "val", "test")}
    typer.echo(f"wrote {target}: {len(splits)} users ({cold_start} cold-start), sessions "
               f"train {counts['train']} / val {counts['val']} / test {counts['test']}")


@data_app.command("stats", epilog="Example: personal data stats data/eval --json")
def data_stats(
    path: Path = typer.Argument(..., help="Folder in the canonical layout."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    splits: Optional[Path] = typer.Option(None, help="Splits file (default PATH/splits.json, "
                                          "or the default 0.6/0.2/0.2 split if missing)."),
    max_ceiling_turns: Optional[int] = typer.Option(
        None, "--max-ceiling-turns", help="Embed only an evenly spread sample of this many test "
        "turns for the noise ceiling (default: all)."),
    reply_session: str = typer.Option(
        "middle", "--reply-session", help="Which session per user the reply baseline reads: "
        "first, middle or last (real sample: one dialogue per user, so any)."),
    reply_messages: int = typer.Option(
        5, "--reply-messages", help="Messages from the start of that session the reply baseline "
        "reads (the real figure 0.77 is for 5)."),
) -> None:
    """Describe a dataset: counts, turn lengths, device usage, how distinct the users are,
    and how far replies follow from requests (the reply baseline)."""
    if max_ceiling_turns is not None and max_ceiling_turns < 1:
        raise PersonalError(f"--max-ceiling-turns must be at least 1, got {max_ceiling_turns}")
    if reply_session not in REPLY_SESSIONS:
        raise PersonalError(f"--reply-session must be one of {', '.join(REPLY_SESSIONS)}, "
                            f"got {reply_session!r}")
    if reply_messages < 2:
        raise PersonalError(f"--reply-messages must be at least 2, got {reply_messages}")
    ds, sp = _load_with_splits(path, splits)
    stats = dataset_stats(ds, sp, ceiling_max_turns=max_ceiling_turns,
                          reply_session=reply_session, reply_messages=reply_messages)
    if as_json:
        _echo_json(stats)
    else:
        typer.echo(format_stats(stats))


def _load_with_splits(path: Path, splits: Optional[Path]):
    """The dataset and its splits: the given file, PATH/splits.json, or the default split."""
    ds = load_dataset(path)
    target = splits or Path(path) / "splits.json"
    if splits is not None or target.is_file():
        return ds, read_splits(target, ds)
    return ds, make_splits(ds, cold_start=cold_start_count(None, len(ds.personas)))


# --- models, training, evaluation, runs ----------------------------------------------------

def _config(config: Optional[Path], overrides: List[str], data: Optional[Path] = None):
    cfg = load_config(config, overrides or [])
    if data is not None:
        cfg = set_dotted(cfg, "data.path", str(data))
    return cfg


def _logging(quiet: bool) -> None:
    """Progress on stderr: INFO lines (and progress bars) unless --quiet."""
    if quiet:
        os.environ["PERSONAL_QUIET"] = "1"
    console_log(quiet)


CONFIG_OPT = typer.Option(None, "--config", help="YAML file listing the config keys it changes.")
OVERRIDES_ARG = typer.Argument(None, help="Dotted overrides, e.g. train.lr=1e-4 lora.rank=4.")
QUIET_OPT = typer.Option(False, "--quiet", help="Only warnings and results; no progress.")


@base_app.command("pretrain", epilog="Example: personal base pretrain pretrain.epochs=1")
def base_pretrain(config: Optional[Path] = CONFIG_OPT, overrides: List[str] = OVERRIDES_ARG,
                  quiet: bool = QUIET_OPT) -> None:
    """Pretrain the built-in base model on the background population (cached)."""
    from personal.experiment.context import ensure_population
    from personal.models.base import base_cache_dir, load_base

    _logging(quiet)
    cfg = _config(config, overrides)
    if cfg.model.base != "tiny":
        raise PersonalError(f"model.base={cfg.model.base!r} is a pretrained model; only the "
                            "built-in `tiny` base is pretrained here")
    background = ensure_population(cfg.data.background_path, cfg, "background")
    load_base(cfg, background=background, allow_pretrain=True, progress=not quiet)
    typer.echo(f"base model ready: {base_cache_dir(cfg, background)}")


@app.command("train", epilog="Example: personal train unified_lora --run runs/unified lora.rank=4")
def train(strategy: str = typer.Argument(..., help="Strategy name (e.g. unified_lora, base)."),
          data: Optional[Path] = typer.Option(None, "--data", help="Data folder (data.path)."),
          run: Path = typer.Option(Path("runs/main"), "--run", help="Run directory."),
          config: Optional[Path] = CONFIG_OPT, overrides: List[str] = OVERRIDES_ARG,
          quiet: bool = QUIET_OPT) -> None:
    """Train one strategy into a run directory (resumes finished units)."""
    from personal.experiment.context import Context
    from personal.experiment.pipeline import train_strategy

    from personal.strategies.registry import get_strategy, strategy_config

    _logging(quiet)
    cfg, name = _config(config, overrides, data), _strategy_name(strategy)
    spec = get_strategy(name)  # an unknown name or a bad option stops before any work
    strategy_config(spec, cfg.strategy.get(name))
    ctx = Context.create(cfg, run)
    train_strategy(ctx, name)
    typer.echo(f"trained {strategy} in {run}")


def _strategy_name(name: str) -> str:
    """Short aliases used on the command line (`unified` for `unified_lora`)."""
    return {"unified": "unified_lora"}.get(name, name)


@app.command("eval", epilog="Example: personal eval runs/main --strategy unified_lora "
             "(or --data data/imported: users new to the run)")
def evaluate(run: Path = typer.Argument(..., help="Run directory made by `personal train`."),
             strategy: List[str] = typer.Option(None, "--strategy", help="Strategies to "
                                                "evaluate (default: every one trained in RUN)."),
             endpoint: Optional[str] = typer.Option(None, "--endpoint", help="Evaluate a "
                                                    "served endpoint (`personal serve`) "
                                                    "of this run, e.g. http://127.0.0.1:8000."),
             data: Optional[Path] = typer.Option(None, "--data", help="Score the run's "
                                                 "strategies on another dataset folder's "
                                                 "test turns instead; all its users are "
                                                 "new to the run (cold-start)."),
             out: Optional[Path] = typer.Option(None, "--out", help="With --data: where the "
                                                "evaluation goes (default RUN/evals/<DATA "
                                                "folder name>)."),
             force: bool = typer.Option(False, "--force", help="With --data: replace an "
                                        "earlier evaluation folder."),
             overrides: List[str] = OVERRIDES_ARG, quiet: bool = QUIET_OPT) -> None:
    """Evaluate trained strategies on every test turn and write metrics."""
    if (out or force) and not data:
        raise PersonalError("--out and --force go with --data (an evaluation on new data)")
    if data and endpoint:
        raise PersonalError("--data and --endpoint cannot be combined: --endpoint replays "
                            "the run's own test turns")
    if data:
        from personal.experiment.new_data import evaluate_on_data
        from personal.experiment.pipeline import trained_strategies

        _logging(quiet)
        cfg = _run_config(run, overrides)
        names = [_strategy_name(s) for s in strategy] if strategy else trained_strategies(run)
        if not names:
            raise PersonalError(f"{run}: no trained strategy found (run `personal train` first)")
        md = evaluate_on_data(run, cfg, data, names, out, force)
        typer.echo(f"report: {md}")
        return
    from personal.experiment.context import Context
    from personal.experiment.pipeline import evaluate_strategy, trained_strategies, train_strategy

    if endpoint:
        # The run's evaluated split as concurrent HTTP traffic, scored as `<strategy>@endpoint`
        # (retries and concurrency: personal.serving.http_eval).
        from personal.serving.http_eval import evaluate_endpoint

        _logging(quiet)
        if strategy and len(strategy) > 1:
            raise PersonalError("--endpoint serves one strategy: give at most one --strategy")
        result = evaluate_endpoint(run, endpoint, _strategy_name(strategy[0]) if strategy
                                   else None, overrides or [])
        s, agree = result.serving, result.serving["offline_agreement"]
        typer.echo(f"{result.name}: " + ", ".join(
            f"{k}={v:.4f}" for k, v in result.summary["macro"].items()
            if k in ("emb_sim", "device_precision", "param_f1")))
        typer.echo(f"{s['requests']} requests in {s['seconds']:.1f}s ({s['requests_per_s']:.1f}"
                   f"/s), p50 {s['p50_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms, {s['retries']} "
                   "retries" + (f"; equal to offline: {agree['equal']}/{agree['compared']}"
                                if agree else ""))
        return
    _logging(quiet)
    cfg = _run_config(run, overrides)
    ctx = Context.create(cfg, run)
    names = [_strategy_name(s) for s in strategy] if strategy else trained_strategies(run)
    if not names:
        raise PersonalError(f"{run}: no trained strategy found (run `personal train` first)")
    for name in names:
        summary = evaluate_strategy(ctx, name, train_strategy(ctx, name))
        typer.echo(f"{name}: " + ", ".join(f"{k}={v:.4f}" for k, v in summary["macro"].items()
                                           if k in ("emb_sim", "device_precision", "param_f1")))


def _run_config(run: Path, overrides: List[str]):
    if not (run / "config.yaml").is_file():
        raise PersonalError(f"{run}: not a run directory (no config.yaml)")
    return load_config(run / "config.yaml", overrides or [])


@app.command("report", epilog="Example: personal report runs/main")
def report(run: Path = typer.Argument(..., help="Run directory with evaluated strategies.")) -> None:
    """Write report.md and report.html of a run (the study's table and plots)."""
    from personal.experiment.reporting import report_from_run

    if not (run / "metrics").is_dir() and not (run / "seeds.json").is_file():
        raise PersonalError(f"{run}: not a run directory (no metrics/ or seeds.json)")
    path = report_from_run(run)
    typer.echo(f"wrote {path} and {path.with_suffix('.html')}")


@app.command("run", epilog="Example: personal run --plan phase1 --run runs/main eval.max_users=20")
def run_main(plan: str = typer.Option("full", "--plan", help="Which strategies to run "
                                      "(full: every phase; phase1, phase2, ...: one phase of "
                                      "the study with its reference; baseline: base + unified; "
                                      "curve: the learning curve over run.curve_sessions)."),
             data: Optional[Path] = typer.Option(None, "--data", help="Data folder (data.path)."),
             run: Path = typer.Option(Path("runs/main"), "--run", help="Run directory."),
             address: Optional[str] = typer.Option(None, "--address", help="Run on the Ray "
                                                   "cluster at this address (Ray executor)."),
             ray: bool = typer.Option(True, "--ray/--no-ray", help="Ray executor (default: "
                                      "a local runtime started in-process, or --address); "
                                      "--no-ray runs everything in this process."),
             seeds: Optional[str] = typer.Option(None, "--seeds", help="Training seeds, "
                                                 "e.g. 0,1,2 (run.seeds): the plan once per "
                                                 "seed into RUN/seed-<k>, one report over all."),
             config: Optional[Path] = CONFIG_OPT, overrides: List[str] = OVERRIDES_ARG,
             quiet: bool = QUIET_OPT) -> None:
    """The main job: data, base model, every strategy of the plan, evaluation, report."""
    from personal.experiment.pipeline import plans, run_plan
    from personal.strategies.registry import get_strategy, strategy_config

    known = plans()
    if plan not in known:
        raise PersonalError(f"unknown plan {plan!r} (known: {', '.join(known)})")
    _logging(quiet)
    t0 = time.perf_counter()
    cfg = _config(config, overrides, data)
    if seeds is not None:
        cfg = set_dotted(cfg, "run.seeds", _seed_list(seeds))
    for name in known[plan]:  # a bad strategy option stops before any work
        strategy_config(get_strategy(name), cfg.strategy.get(name))

    def execute(run_cfg, run_path: Path) -> Path:
        if address or ray:
            from personal.distributed.executor import run_experiment

            return run_experiment(run_cfg, run_path, known[plan], address=address,
                                  temp_dir=_ray_temp(run_path) if not address else None)
        return run_plan(run_cfg, run_path, known[plan])

    if plan == "curve":
        from personal.experiment.curve import run_curve

        if cfg.run.seeds:
            raise PersonalError("--plan curve runs one seed per point; drop --seeds "
                                "(run.seeds) or run the curve once per seed into its own folder")
        path = run_curve(cfg, run, known[plan], execute)
    elif cfg.run.seeds:
        from personal.experiment.seeds import run_seeds

        path = run_seeds(cfg, run, known[plan], execute)
    else:
        path = execute(cfg, run)
    typer.echo(path.read_text(encoding="utf-8"))
    typer.echo(f"report: {path} ({time.perf_counter() - t0:.0f}s)")


@app.command("robustness", epilog="Example: personal robustness runs/main runs/second")
def robustness_cmd(runs: List[Path] = typer.Argument(..., help="Reported runs of the same plan "
                                                     "on different populations."),
                   out: Optional[Path] = typer.Option(None, "--out", help="Also write the "
                                                      "table to this Markdown file."),
                   force: bool = typer.Option(False, "--force", help="Replace --out.")) -> None:
    """Whether each strategy's verdict against the reference holds on every population."""
    from personal.experiment.robustness import robustness, robustness_markdown

    for path in runs:
        if not (path / "config.yaml").is_file():
            raise PersonalError(f"{path}: not a run directory (no config.yaml)")
    target = check_output_file(out, force, "--out file") if out else None
    text = robustness_markdown(robustness(list(runs)))
    if target:
        target.write_text(text, encoding="utf-8")
    typer.echo(text)


def _seed_list(text: str) -> list[int]:
    """`--seeds 0,1,2` as a list of integers, or an error naming the option."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise PersonalError(f"--seeds {text!r}: expected comma-separated integers >= 0, "
                            "e.g. --seeds 0,1,2")
    return [int(p) for p in parts]


def _ray_temp(run: Path, app: str = "") -> str:
    """A short temp folder for the local Ray runtime (Unix socket paths must stay short),
    named after the run (and, for a served app, its port) so concurrent runs and apps do not
    share one."""
    tag = hashlib.sha256(f"{run.resolve()}|{app}".encode()).hexdigest()[:8]
    return str(Path(tempfile.gettempdir()) / f"personal-ray-{tag}")


@app.command("tune", epilog="Example: personal tune configs/sweep_ranks.yaml --run runs/sweep "
                           "--grid 'train.lr=[1e-3,3e-3]'")
def tune(sweep: Path = typer.Argument(..., help="Sweep file: grid (dotted key: [values]), "
                                      "strategy, metric."),
         run: Path = typer.Option(Path("runs/sweep"), "--run", help="Run directory."),
         grid: List[str] = typer.Option([], "--grid", help="More key=[v1,v2] items."),
         config: Optional[Path] = CONFIG_OPT, overrides: List[str] = OVERRIDES_ARG,
         address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address "
                                               "(default: RAY_ADDRESS, else a local runtime)."),
         quiet: bool = QUIET_OPT) -> None:
    """Ray Tune ablation: each grid point a full train + validation evaluation; resumes."""
    from personal.distributed.runtime import ray_runtime
    from personal.distributed.tune import parse_grid, run_sweep
    from ray_jobs.sweep import read_sweep_file  # the entry-point layer, above this package

    _logging(quiet)
    spec = read_sweep_file(str(sweep))
    cfg = _config(config, overrides)
    items = parse_grid(spec["grid"] + list(grid), cfg)
    with ray_runtime(address or cfg.ray.address, None, tempfile.mkdtemp(prefix="personal-ray-")):
        out = run_sweep(cfg, run, items, strategy=spec["strategy"], metric=spec["metric"])
    typer.echo(f"{len(out['rows'])} trials: table {out['table']}, report {out.get('report')}")


@app.command("serve", epilog="Example: personal serve runs/main --strategy per_user_lora "
                            "--port 8000")
def serve_cmd(run: Path = typer.Argument(..., help="Run directory made by `personal train`."),
              host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback "
                                       "unless --allow-remote)."),
              port: int = typer.Option(8000, "--port", help="HTTP port."),
              strategy: Optional[str] = typer.Option(None, "--strategy", help="Strategy to "
                                                     "serve (default: the one RUN trained)."),
              allow_remote: bool = typer.Option(False, "--allow-remote", help="Allow binding "
                                                "a non-loopback address (no authentication!)."),
              max_loaded_adapters: Optional[int] = typer.Option(
                  None, "--max-loaded-adapters", help="Adapter slots per generator (least "
                  "recently used evicted; default: ServeConfig's)."),
              max_batch_size: Optional[int] = typer.Option(
                  None, "--max-batch-size", help="Requests decoded together (1: one per "
                  "batch; default: ServeConfig's)."),
              replicas: Optional[int] = typer.Option(None, "--replicas",
                                                     help="Generator replicas."),
              address: Optional[str] = typer.Option(None, "--address", help="Ray cluster "
                                                    "address (default: a local runtime)."),
              overrides: List[str] = OVERRIDES_ARG, quiet: bool = QUIET_OPT) -> None:
    """Serve a finished run over HTTP (Ray Serve): POST /v1/assist, POST /v1/chat/completions
    (the OpenAI form: `user` names the user, `metadata` the session context), GET /healthz.
    moe_lora and retrieval get a request-router deployment (the learned router, the
    retrieval index) in front of the generator."""
    from personal.distributed.serve import serve_run

    _logging(quiet)
    scfg = serve_config(strategy=_strategy_name(strategy) if strategy else None,
                        max_loaded_adapters=max_loaded_adapters, max_batch_size=max_batch_size,
                        generator_replicas=replicas)
    try:
        serve_run(run, scfg, host=host, port=port, allow_remote=allow_remote, address=address,
                  temp_dir=None if address else _ray_temp(run, f"serve:{port}"),
                  overrides=overrides or [],
                  on_ready=lambda url: typer.echo(f"serving {run} at {url} (Ctrl-C stops)"))
    except Terminated:  # shut down cleanly by now; say so, with SIGTERM's usual status
        typer.echo("terminated", err=True)
        raise typer.Exit(143)


def main(argv: Optional[List[str]] = None) -> None:
    """Console entry point: runs the app and maps errors to exit codes 2 and 1."""
    debug = "--debug" in (argv if argv is not None else sys.argv)
    args = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--debug"]
    try:
        app(args=args, prog_name="personal", standalone_mode=True)
    except PersonalError as err:
        typer.echo(f"error: {err}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as err:
        if err.filename is None or debug:
            _last_resort(err, debug)
        # a path the user gave cannot be read or written (a file where a folder belongs, no
        # permission, a dangling link): bad input, named
        typer.echo(f"error: {err.filename}: {err.strerror or err}", err=True)
        sys.exit(2)
    except Exception as err:  # noqa: BLE001 - the last resort: one line, exit 1
        _last_resort(err, debug)


def _last_resort(err: BaseException, debug: bool) -> None:
    if debug:
        raise err
    typer.echo(f"error: {type(err).__name__}: {err} (rerun with --debug for a traceback)",
               err=True)
    sys.exit(1)


if __name__ == "__main__":
    main()
