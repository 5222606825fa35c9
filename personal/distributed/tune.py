"""Ablations with Ray Tune: a grid over dotted config keys, each trial a full train +
validation evaluation of a strategy in its own run directory, one results table and an
ablation plot in the sweep's report. An interrupted sweep resumes (Tuner.restore), and every
trial's own units resume from their run directory.

    grid = parse_grid(["lora.rank=[2,4,8]", "train.lr=[1e-3,1e-2]"])
    out = run_sweep(cfg, "runs/sweep", grid)          # runs/sweep/sweep/results.csv, report.md

Trial resources come from `cfg.ray`: a trial that trains in-process asks for
`ray.cpus_per_worker` CPUs (and a GPU with `ray.use_gpu`, or `gpu_per_trial` of one); a trial
that wraps a multi-worker TorchTrainer asks for no CPU itself (its workers hold them) — a
trial holding a CPU that its own workers need deadlocks a small machine.
"""
from __future__ import annotations

import csv
import itertools
import json
import math
import shutil
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import yaml

from personal.config import Config, ConfigError, set_dotted
from personal.distributed.executor import train_and_evaluate
from personal.distributed.runtime import (config_from_payload, config_payload, prepare_base,
                                          storage_dir, worker_context)
from personal.errors import PersonalError
from personal.eval.report import write_report
from personal.experiment.context import Context
from personal.experiment.pipeline import strategy_units
from personal.experiment.runs import _safe, stable_hash

# Ray Tune is imported inside the functions that use it: this module imports without Ray.


def parse_grid(items: Sequence[str], cfg: Optional[Config] = None) -> dict[str, list]:
    """`key=[a,b,c]` items -> {key: [a, b, c]}; every value is checked against the config."""
    grid: dict[str, list] = {}
    cfg = cfg or Config()
    for item in items:
        if "=" not in item:
            raise ConfigError(f"sweep item '{item}' is not of the form key=[v1,v2,...]")
        key, raw = (s.strip() for s in item.split("=", 1))
        try:
            values = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"sweep item '{item}': not a YAML list: {err}") from None
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep item '{key}' needs a non-empty list of values, got {raw!r}")
        # A wrong key or value fails now, naming the key; values are kept as the config
        # coerces them (YAML reads `1e-3` as a string).
        grid[key] = [get_dotted(set_dotted(cfg, key, v), key) for v in values]
    return grid


def get_dotted(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = cfg[part] if isinstance(cfg, dict) else getattr(cfg, part)
    return cfg


def trial_config(cfg: Config, params: dict[str, Any]) -> Config:
    """The sweep's config with one trial's values, evaluated on the validation split."""
    for key, value in params.items():
        cfg = set_dotted(cfg, key, value)
    return set_dotted(cfg, "eval.split", "val")


def trial_name(params: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in params.items())


def trial_resources(cfg: Config, gpu_per_trial: float = 0.0) -> dict[str, float]:
    """Resources one trial asks Tune for (see the module docstring)."""
    if cfg.ray.num_workers > 1:
        return {"CPU": 0.0}
    res = {"CPU": float(cfg.ray.cpus_per_worker)}
    gpus = gpu_per_trial or (1.0 if cfg.ray.use_gpu else 0.0)
    if gpus:
        res["GPU"] = gpus
    return res


def sweep_trial(config: dict) -> None:
    """Tune function trainable: train + evaluate one trial, report its macro metrics."""
    from ray import tune

    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    params = {k: config[f"p{i}"] for i, k in enumerate(config["keys"])}
    cfg = trial_config(config_from_payload(config["cfg"]), params)
    run = trial_run(config["root"], params)
    ctx = Context.create(cfg, run)
    summary = train_and_evaluate(ctx, config["strategy"], use_ray=cfg.ray.num_workers > 1)
    tune.report({k: v for k, v in summary["macro"].items() if _finite(v)}
                | {"examples": summary["examples"], "trial_run": str(run)})


def trial_run(root: str | Path, params: dict[str, Any]) -> Path:
    """The run directory of one trial."""
    return Path(root) / "trials" / stable_hash(params)


def grid_points(grid: dict[str, list]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*grid.values())]


def share_upstream(cfg: Config, root: str | Path, grid: dict[str, list],
                   strategy: str) -> list[str]:
    """Train once the leading units every trial has in common (same name, same inputs: e.g.
    the unified adapter a retrieval or cluster sweep starts from) and copy their records and
    outputs into every trial's run, where they are then skipped. Stops at the first unit the
    trials do not share (later units may depend on it). Returns the shared unit names."""
    points = grid_points(grid)
    if len(points) < 2:
        return []
    ctxs = [Context.create(trial_config(cfg, p), trial_run(root, p)) for p in points]
    units = [[u for stage in strategy_units(c, strategy) for u in stage] for c in ctxs]
    shared = []
    for i, unit in enumerate(units[0]):
        if any(len(us) <= i or (us[i].name, us[i].inputs) != (unit.name, unit.inputs)
               for us in units[1:]):
            break
        first = ctxs[0].run
        first.run_unit(unit.name, unit.inputs, unit.fn, unit.outputs)
        record = f"units/{_safe(unit.name)}.json"
        for ctx in ctxs[1:]:
            if ctx.run.unit_done(unit.name, unit.inputs):
                continue
            for out in unit.outputs:
                src, dst = first.path / out, ctx.run.path / out
                if src.is_dir():
                    shutil.copytree(src, dst, dirs_exist_ok=True)
                elif src.exists():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dst)
            ctx.run.write_json(record, first.read_json(record))
        shared.append(unit.name)
    return shared


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def run_sweep(cfg: Config, run_path: str | Path, grid: dict[str, list], *,
              strategy: str = "unified_lora", metric: str = "emb_sim",
              max_concurrent: int = 0, gpu_per_trial: float = 0.0) -> dict[str, Any]:
    """Run (or resume) the grid; write `sweep/results.csv|json` and `sweep/report.md|html`
    into the run; returns {"rows", "table", "report"}. Needs an initialised Ray."""
    from ray import tune

    if not grid:
        raise PersonalError("run_sweep: empty grid (give key=[v1,v2,...] items)")
    root = Path(run_path).resolve()
    prepare_base(worker_context(config_payload(cfg), root))  # data, splits, base made once
    share_upstream(cfg, root, grid, strategy)
    keys = list(grid)
    space = {"cfg": config_payload(cfg), "root": str(root), "strategy": strategy,
             "keys": keys, "threads": cfg.ray.cpus_per_worker}
    space |= {f"p{i}": tune.grid_search(grid[k]) for i, k in enumerate(keys)}
    trainable = tune.with_resources(sweep_trial, trial_resources(cfg, gpu_per_trial))
    name = f"sweep-{stable_hash(keys, grid, strategy, space['cfg'])}"
    path = Path(storage_dir(root)) / name
    if tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(trainable, param_space=space,
                           tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent or None),
                           run_config=tune.RunConfig(name=name, storage_path=storage_dir(root)))
    results = tuner.fit()
    rows = [trial_row(r, keys) for r in results]
    rows.sort(key=lambda r: [str(r[k]) for k in keys])
    return {"rows": rows, **write_results(root / "sweep", rows, keys, metric)}


#: Bookkeeping fields Tune adds to every result: not part of the table.
TUNE_FIELDS = {"date", "hostname", "node_ip", "pid", "config", "checkpoint_dir_name", "done",
               "training_iteration", "trial_id", "iterations_since_restore", "time_this_iter_s",
               "time_total_s", "time_since_restore", "timestamp"}


def trial_row(result, keys: list[str]) -> dict[str, Any]:
    """One table row: the trial's values, its name, its metrics (or its error)."""
    params = {k: result.config[f"p{i}"] for i, k in enumerate(keys)}
    row = dict(params) | {"trial": trial_name(params)}
    if result.error is not None:
        return row | {"error": str(result.error).strip().splitlines()[0]}
    return row | {k: v for k, v in (result.metrics or {}).items() if k not in TUNE_FIELDS}


def ablation_points(rows: list[dict], keys: list[str], metric: str) -> dict[str, list]:
    """Per numeric key: (value, mean metric over the other keys' values)."""
    out = {}
    for key in keys:
        values = sorted({r[key] for r in rows if metric in r}, key=str)
        if not values or not all(isinstance(v, (int, float)) for v in values):
            continue
        out[key] = [(v, sum(r[metric] for r in rows if r[key] == v and metric in r)
                     / max(1, sum(1 for r in rows if r[key] == v and metric in r)))
                    for v in values]
    return out


def write_results(out: Path, rows: list[dict], keys: list[str], metric: str) -> dict[str, str]:
    """One table (CSV + JSON) and a report with the ablation curves."""
    out.mkdir(parents=True, exist_ok=True)
    columns = keys + ["trial"] + sorted({c for r in rows for c in r} - set(keys) - {"trial"})
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    (out / "results.json").write_text(json.dumps(rows, indent=1, default=str) + "\n",
                                      encoding="utf-8")
    summary = {r["trial"]: {k: v for k, v in r.items() if _finite(v) and k not in keys}
               for r in rows if metric in r}
    paths = {"table": str(out / "results.csv")}
    if summary:
        md, _ = write_report(summary, {}, {}, out, ablations=ablation_points(rows, keys, metric)
                             or None, reference=next(iter(summary)), metric=metric,
                             title="Ablations (validation split)", summarize=False)
        paths["report"] = str(md)
    return paths


def marginal_means(rows: list[dict], keys: list[str], metric: str
                   ) -> dict[str, list[tuple[Any, float]]]:
    """Per ablated key: (value, mean metric over the trials with that value), for numeric
    and categorical values alike: numbers ascending (None last), others in the rows' order. Failed trials (no metric)
    are left out of the means, not counted as zero."""
    out = {}
    for key in keys:
        values: list = []
        for r in rows:
            if r[key] not in values:
                values.append(r[key])
        numbers = [v for v in values if v is not None]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
            # numbers in their order (the rows come sorted as text), None (auto) last
            values = sorted(numbers) + ([None] if None in values else [])
        points = []
        for v in values:
            scores = [r[metric] for r in rows if r[key] == v and _finite(r.get(metric))]
            if scores:
                points.append((v, sum(scores) / len(scores)))
        out[key] = points
    return out


def ablation_markdown(rows: list[dict], keys: list[str], metric: str, *, title: str,
                      command: str, setup: str) -> str:
    """The committed record of one sweep: how it was made, the best trial, each setting's
    mean effect, and every trial ranked by `metric`."""
    done = [r for r in rows if _finite(r.get(metric))]
    failed = [r for r in rows if not _finite(r.get(metric))]
    done.sort(key=lambda r: -r[metric])
    lines = [f"# {title}", "", setup, "", "```", command, "```", ""]
    if done:
        best = done[0]
        lines += [f"Best of {len(done)} trials: " + ", ".join(f"`{k}={best[k]}`" for k in keys)
                  + f" ({metric} {best[metric]:.4f} on the validation split; the worst "
                  f"{done[-1][metric]:.4f}).", ""]
    lines += ["## Mean effect of each setting", "",
              f"Mean {metric} over every trial with that value (the other settings vary).", ""]
    for key, points in marginal_means(rows, keys, metric).items():
        lines += [f"- `{key}`: " + ", ".join(f"{v} → {m:.4f}" for v, m in points)]
    lines += ["", "![mean effect of each setting](ablations.png)", "", "## Every trial", ""]
    extra = [c for c in ("device_precision", "param_f1") if any(c in r for r in done)]
    lines += ["| " + " | ".join(keys + [metric] + extra) + " |",
              "|" + "---|" * (len(keys) + 1 + len(extra))]
    for r in done:
        cells = [str(r[k]) for k in keys] + [f"{r[metric]:.4f}"] + \
            [f"{r[c]:.4f}" if _finite(r.get(c)) else "—" for c in extra]
        lines.append("| " + " | ".join(cells) + " |")
    for r in failed:
        lines.append("| " + " | ".join([str(r[k]) for k in keys] + ["failed: " +
                                        str(r.get("error", "no metric"))[:80]] +
                                       [""] * len(extra)) + " |")
    return "\n".join(lines) + "\n"


def write_ablation_doc(out: Path, rows: list[dict], keys: list[str], metric: str, *,
                       title: str, command: str, setup: str) -> list[Path]:
    """`README.md` (see `ablation_markdown`), `ablations.png` and `results.csv` of one
    sweep into `out` (e.g. docs/ablations/cluster/); returns the files written."""
    import base64

    from personal.eval.report import marginal_bars

    out.mkdir(parents=True, exist_ok=True)
    md = out / "README.md"
    md.write_text(ablation_markdown(rows, keys, metric, title=title, command=command,
                                    setup=setup), encoding="utf-8")
    written = [md]
    marginals = {k: v for k, v in marginal_means(rows, keys, metric).items() if v}
    if marginals:
        png = out / "ablations.png"
        png.write_bytes(base64.b64decode(marginal_bars(marginals, metric)))
        written.append(png)
    columns = keys + ["trial"] + sorted({c for r in rows for c in r} - set(keys) - {"trial"}
                                        - {"trial_run"})
    with open(out / "results.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return written + [out / "results.csv"]


def grid_size(grid: dict[str, list]) -> int:
    return len(list(itertools.product(*grid.values())))
