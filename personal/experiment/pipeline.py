"""The pipeline: train a strategy's units, evaluate it on every test turn, report the run.

This is the local executor: stages run in order, units one after another, each skipped when
finished with unchanged inputs. The Ray executor fans the same units out.
"""
from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Optional

from personal.config import Config
from personal.eval.metrics import macro_mean, noise_ceiling, per_user_means, score_examples
from personal.experiment.context import Context
from personal.experiment.cost import strategy_cost
from personal.experiment.progress import attach, format_seconds
from personal.experiment.reporting import report_from_run
from personal.experiment.runs import Run, stable_hash
from personal.experiment.units import (eval_inputs, eval_settings,  # noqa: F401  (re-exported)
                                       prompt_hash, recorded_predictions, strategy_units,
                                       trained_hash)
from personal.strategies.registry import get_strategy, strategy_config
# `personal run --plan NAME`: the plans each registered strategy declared (phase1 is the
# study's table; baseline: base and unified), re-exported for the command line.
from personal.strategies.registry import plans  # noqa: F401

log = logging.getLogger("personal")



def train_strategy(ctx: Context, name: str, stages_fn=strategy_units) -> str:
    """Run every unit of the strategy's stages; returns the hash of all their inputs.
    `stages_fn` lets the Ray executor swap in the Ray form of units (same names, inputs)."""
    hashes = []
    get_strategy(name)  # an unknown name is refused before the run records it
    record_strategies(ctx, [name])
    for stage in stages_fn(ctx, name):
        for unit in stage:
            ctx.run.run_unit(unit.name, unit.inputs, unit.fn, unit.outputs)
            hashes.append(unit.inputs)
    return stable_hash(name, hashes)  # = trained_hash(ctx, name, stages_fn)


def record_strategies(ctx: Context, names: list[str]) -> None:
    """Add `names` to the run's strategies.json (what `personal eval` and reports list)."""
    trained = ctx.run.read_json("strategies.json") or []
    new = [n for n in names if n not in trained]
    if new:
        ctx.run.write_json("strategies.json", trained + new)


def trained_strategies(run_path: str | Path) -> list[str]:
    """Strategies `personal train` has run in this run directory, in order."""
    return Run(Path(run_path)).read_json("strategies.json") or []


def evaluate_strategy(ctx: Context, name: str, trained: str) -> dict:
    """Predict every turn of the evaluated split, score it, write predictions and metrics."""
    split = ctx.cfg.eval.split
    inputs = eval_inputs(ctx, trained)
    outputs = [f"predictions/{name}.jsonl", f"metrics/{name}_per_user.csv",
               f"metrics/{name}_per_user.json", f"metrics/{name}_summary.json",
               f"metrics/{name}_cost.json"]

    def work() -> dict:
        spec = get_strategy(name)
        examples = ctx.examples(split, ctx.eval_personas())
        predict = spec.predictor(ctx, strategy_config(spec, ctx.cfg.strategy.get(name)))
        t0 = time.perf_counter()
        predictions = predict(examples)
        gen_seconds = time.perf_counter() - t0
        summary = write_evaluation(ctx, name, examples, predictions, gen_seconds)
        ctx.run.write_json(f"metrics/{name}_cost.json",
                           strategy_cost(ctx, name, len(examples), gen_seconds))
        return summary

    return ctx.run.run_unit(f"eval/{name}", inputs, work, outputs)


def prepare_base(ctx: Context) -> dict:
    """Load the base model (pretraining the built-in one if it is not cached) as its own
    unit, so its time is reported as such and not inside the first strategy's unit."""
    def work() -> dict:
        model, _ = ctx.base
        return {"base": ctx.base_key, "parameters": sum(p.numel() for p in model.parameters())}

    return ctx.run.run_unit("base/prepare", stable_hash(ctx.base_key), work, [])


def evaluate_noise_ceiling(ctx: Context) -> dict:
    """Reference vs `alt_text` on the evaluated turns: the best a text metric can expect."""
    examples = ctx.examples(ctx.cfg.eval.split, ctx.eval_personas())
    inputs = stable_hash("noise_ceiling", ctx.fingerprint, eval_settings(ctx.cfg),
                         ctx.eval_personas())

    has_alt = any(e.alt_text for e in examples)

    def work() -> dict:
        if not has_alt:
            return {}
        ceiling = noise_ceiling([e.target for e in examples], [e.alt_text for e in examples],
                                users=[e.persona_id for e in examples],
                                golds=[e.actions for e in examples],
                                tolerance=ctx.cfg.eval.numeric_tolerance)
        ctx.run.write_json("metrics/noise_ceiling.json", ceiling)
        return ceiling

    return ctx.run.run_unit("eval/noise_ceiling", inputs, work,
                            ["metrics/noise_ceiling.json"] if has_alt else [])


def write_evaluation(ctx: Context, name: str, examples, predictions, gen_seconds: float,
                     out: Optional[Run] = None) -> dict:
    """Score predictions; write per-example records, per-user means (CSV + JSON), summary
    into the run (or `out`: an evaluation of the run on new data)."""
    out = out or ctx.run
    scores = score_examples(predictions, [e.target for e in examples],
                            [e.actions for e in examples],
                            tolerance=ctx.cfg.eval.numeric_tolerance)
    records = []
    for e, pred, sc in zip(examples, predictions, scores):
        records.append({"persona_id": e.persona_id, "session_id": e.session_id,
                        "turn_index": e.turn_index, "prompt_hash": prompt_hash(e),
                        "prediction": pred, "reference": e.target, **sc})
    pred_path = out.path / "predictions" / f"{name}.jsonl"
    with open(pred_path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    per_user = per_user_means(records)
    write_per_user_csv(out.path / "metrics" / f"{name}_per_user.csv", per_user)
    out.write_json(f"metrics/{name}_per_user.json", per_user)
    cold = sorted(u for u in per_user if u in ctx.splits and ctx.splits[u].cold_start)
    summary = {"strategy": name, "users": len(per_user), "examples": len(records),
               "generation_seconds": gen_seconds, "macro": macro_mean(per_user),
               "cold_start_users": cold}
    out.write_json(f"metrics/{name}_summary.json", summary)
    log.info("%s: %s", name, {k: round(v, 4) for k, v in summary["macro"].items()
                              if k in ("emb_sim", "device_precision", "param_f1")})
    return summary


def write_per_user_csv(path: Path, per_user: dict[str, dict[str, float]]) -> None:
    metrics = sorted({m for scores in per_user.values() for m in scores})
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["persona_id"] + metrics)
        for user, scores in per_user.items():
            w.writerow([user] + [scores.get(m, "") for m in metrics])


def plan_units(ctx: Context, strategies: list[str], stages_fn=strategy_units) -> list[str]:
    """Every unit the plan will meet, in order (shared units once): what progress counts."""
    names = ["base/prepare", "eval/noise_ceiling"]
    for name in strategies:
        names += [u.name for stage in stages_fn(ctx, name) for u in stage] + [f"eval/{name}"]
    return list(dict.fromkeys(names))


def run_in_order(ctx: Context, strategies: list[str], stages_fn, progress) -> None:
    """Base, noise ceiling, then train + evaluate each strategy, one unit after another."""
    prepare_base(ctx)
    evaluate_noise_ceiling(ctx)
    for name in strategies:
        trained = train_strategy(ctx, name, stages_fn)
        evaluate_strategy(ctx, name, trained)


def execute_plan(ctx: Context, strategies: list[str], stages_fn=strategy_units,
                 runner=run_in_order, lanes: int = 1) -> Path:
    """Run the plan's units with `runner(ctx, strategies, stages_fn, progress)` (default: in
    order; the Ray executor's lanes run them concurrently) with a progress line per unit
    (stage, elapsed, ETA); writes timings and the report and returns the report's path."""
    progress = attach(ctx.run, plan_units(ctx, strategies, stages_fn), lanes)
    record_strategies(ctx, strategies)
    runner(ctx, strategies, stages_fn, progress)
    ctx.run.write_json("timings.json", {"plan": strategies, "units": progress.summary(),
                                        "total_seconds": progress.elapsed(),
                                        "lanes": progress.lanes})
    log.info("plan finished in %s", format_seconds(progress.elapsed()))
    return report_run(ctx.run.path)


def run_plan(cfg: Config, run_path: str | Path, strategies: list[str]) -> Path:
    """Train, evaluate and report the given strategies in one run, in this process (no Ray);
    returns the report path."""
    return execute_plan(Context.create(cfg, run_path), strategies)


def report_run(run_path: str | Path) -> Path:
    """Write report.md / report.html of a run from its metrics files."""
    return report_from_run(Path(run_path))
