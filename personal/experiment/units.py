"""What identifies a strategy's work in a run: its units, the hash of what it was trained
from, its evaluation's inputs, and the predictions a finished evaluation recorded."""
from __future__ import annotations

import hashlib
import json
from typing import Optional

from personal.config import generation_settings, to_dict
from personal.hashing import stable_hash
from personal.strategies.registry import Unit, get_strategy, strategy_config


def strategy_units(ctx, name: str) -> list[list[Unit]]:
    """The stages of units strategy `name` declares with the run's options for it."""
    spec = get_strategy(name)
    return spec.stages(ctx, strategy_config(spec, ctx.cfg.strategy.get(name)))


def trained_hash(ctx, name: str, stages_fn=strategy_units) -> str:
    """The hash `train_strategy` returns for `name`, without running anything."""
    return stable_hash(name, [u.inputs for stage in stages_fn(ctx, name) for u in stage])


#: The `eval` fields an evaluation's predictions and scores depend on; the others (bootstrap,
#: alpha, min_user_score, reference) shape only the report, which is rebuilt every time.
EVAL_FIELDS = ("split", "numeric_tolerance", "max_users")


def eval_settings(cfg) -> dict:
    d = to_dict(cfg)["eval"]
    return {k: d[k] for k in EVAL_FIELDS}


def eval_inputs(ctx, trained: str) -> str:
    """Inputs hash of a strategy's evaluation: what it was trained from, data, the eval
    fields it depends on (`EVAL_FIELDS`), generation settings (`generation_settings`),
    evaluated users."""
    return stable_hash(trained, ctx.fingerprint, eval_settings(ctx.cfg),
                       generation_settings(ctx.cfg), ctx.eval_personas())


def recorded_predictions(ctx, name: str, examples) -> Optional[list[str]]:
    """The run's own predictions of strategy `name` for `examples`, when its evaluation
    finished with the inputs it would have now (same adapters, data and generation settings)
    and holds every example with the same prompt; else None. Greedy decoding is
    deterministic, so a strategy that routes users to `name` can take these instead of
    generating the same turns again."""
    if not ctx.run.unit_done(f"eval/{name}", eval_inputs(ctx, trained_hash(ctx, name))):
        return None
    path = ctx.run.path / "predictions" / f"{name}.jsonl"
    if not path.is_file():
        return None
    recorded = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            recorded[(r["persona_id"], r["session_id"], r["turn_index"])] = r
    out = []
    for e in examples:
        r = recorded.get((e.persona_id, e.session_id, e.turn_index))
        if r is None or r["prompt_hash"] != prompt_hash(e):
            return None
        out.append(r["prediction"])
    return out


def prompt_hash(example) -> str:
    """Hash of everything the prompt is built from (context, history), per example."""
    blob = json.dumps({"meta": example.meta, "history": [(m.role, m.text) for m in example.history]},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
