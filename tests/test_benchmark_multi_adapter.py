"""The multi-adapter benchmark's smoke run: one JSON line with finite, positive ratios, all
three training variants doing the same work, and the peft loop reaching the engine's adapters."""
import json
import math
import runpy
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "multi_adapter.py"
TIMES = ("engine_s", "sequential_s", "unified_s", "mixed_tok_s", "single_adapter_tok_s",
         "per_example_tok_s")
RATIOS = ("ratio_vs_unified", "speedup_vs_sequential", "mixed_generation_ratio",
          "speedup_vs_per_example_eval")


def test_smoke_run_reports_the_ratios_and_equal_work(capsys):
    torch.set_num_threads(1)
    main = runpy.run_path(str(SCRIPT))["main"]
    report = main(["--smoke", "--json", "--threads", "1"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == report

    for key in TIMES + RATIOS:
        assert math.isfinite(report[key]) and report[key] > 0, key
    assert report["ratio_vs_unified"] == pytest.approx(
        report["engine_s"] / report["unified_s"], rel=1e-3)
    assert report["speedup_vs_per_example_eval"] == pytest.approx(
        report["mixed_tok_s"] / report["per_example_tok_s"], rel=1e-3)

    # 8 users x 2 steps x batch 2: every variant trains on the same examples and tokens (at
    # most 32: length-bucketed batches end an epoch with a short one, shuffled among the
    # others), and the unified run cuts its steps into the engine's very passes.
    for what in ("examples", "tokens"):
        counts = {report[f"{v}_{what}"] for v in ("engine", "sequential", "unified")}
        assert len(counts) == 1, (what, counts)
    assert 8 * 2 < report["engine_examples"] <= 8 * 2 * 2
    assert report["engine_padded_tokens"] == report["unified_padded_tokens"]
    assert report["engine_padded_tokens"] >= report["engine_tokens"]

    # Training moved the adapters (two steps, warmup then decay, at peak lr 2e-3), and the
    # plain peft loop, fed the same batches from the same start, ended on the same weights.
    assert report["max_adapter_update"] > 1e-4
    assert report["max_adapter_diff_engine_vs_sequential"] <= 1e-5
