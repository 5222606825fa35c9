"""What a strategy costs, measured in its run: what it stores, trains and spends generating.

Counted over every unit of the strategy's stages, shared ones included (hybrid counts the
unified adapter it starts from and falls back to): the cost of the strategy on its own.
  parameters        elements of the adapter tensors it stores (`adapters/**.safetensors`):
                    LoRA factors, prefixes, user vectors;
  stored_bytes      bytes of every file its units wrote (adapters, indexes, decisions);
  per user          both divided by the users it was trained for (training users), so a
                    shared adapter costs a fraction per user and an adapter per user costs
                    its own size;
  train_lane_seconds  the units' recorded wall seconds, each on one lane (a unit resumed
                    from an earlier run keeps that run's seconds);
  generation_seconds_per_1000  its evaluation's generation time per 1,000 test turns;
  served_p50_ms     the p50 latency of `personal eval --endpoint`, when it was served.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

from safetensors import safe_open

from personal.experiment.runs import unit_record
from personal.experiment.units import strategy_units


def safetensors_parameters(path: Path) -> int:
    """Number of tensor elements in a .safetensors file, from its header alone (no tensor
    is read)."""
    with safe_open(str(path), framework="pt") as f:
        return sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []


def strategy_cost(ctx, name: str, examples: int, generation_seconds: float) -> dict:
    """The cost record of strategy `name` in `ctx`'s run (see the module docstring)."""
    units = [u for stage in strategy_units(ctx, name) for u in stage]
    outputs = sorted({o for u in units for o in u.outputs})
    files = sorted({f for o in outputs for f in _files(ctx.run.path / o)})
    adapters = [f for f in files if f.suffix == ".safetensors"
                and f.relative_to(ctx.run.path).parts[0] == "adapters"]
    stored = sum(f.stat().st_size for f in files)
    parameters = sum(safetensors_parameters(f) for f in adapters)
    seconds = sum((ctx.run.read_json(unit_record(u.name)) or {}).get("seconds", 0.0)
                  for u in units)
    users = max(1, len(ctx.training_personas()))
    return {"strategy": name, "units": [u.name for u in units], "files": len(files),
            "stored_bytes": stored, "stored_bytes_per_user": stored / users,
            "parameters": parameters, "parameters_per_user": parameters / users,
            "training_users": users, "train_lane_seconds": seconds,
            "generation_seconds": generation_seconds, "test_turns": examples,
            "generation_seconds_per_1000": 1000 * generation_seconds / max(1, examples)}


def served_p50_ms(run_path: Path, name: str) -> Optional[float]:
    """p50 latency of the strategy's served evaluation in this run, if it was served."""
    path = Path(run_path) / "metrics" / f"{name}@endpoint_serving.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get("p50_ms")
