"""The throughput benchmark runs end to end on tiny settings and reports consistent numbers."""
import json
import runpy
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "engine_throughput.py"


def test_smoke_benchmark_prints_one_json_line_with_the_ratios(capsys):
    torch.set_num_threads(1)
    main = runpy.run_path(str(SCRIPT))["main"]
    report = main(["--smoke", "--json"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == report
    for key in ("engine_s", "one_by_one_s", "peft_sequential_s", "unified_s",
                "speedup_vs_one_by_one", "ratio_vs_unified", "speedup_vs_sequential",
                "mixed_generation_ratio", "speedup_vs_per_example_eval"):
        assert report[key] > 0, key
    ratio = report["one_by_one_s"] / report["engine_s"]          # inputs rounded to 4 places
    assert report["speedup_vs_one_by_one"] == pytest.approx(ratio, rel=0.02)
    # 3 adapters x 4 examples, 1 epoch: every example trained once.
    assert report["examples"] == 12 and report["steps_per_adapter"] == 1
