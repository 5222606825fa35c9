"""The DeepSpeed path: its ZeRO config is read with the run's schedule, stage 3 is refused,
on CPU it stops with a clear message, and on a GPU (gpu mark) it trains a loadable adapter."""
import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from personal.config import Config, TrainConfig, load_config
from personal.distributed.deepspeed import check_deepspeed, read_zero_config
from personal.errors import PersonalError

ROOT = Path(__file__).resolve().parents[1]
ZERO = ROOT / "configs" / "deepspeed_zero2.json"


def with_ray(**ray):
    cfg = Config()
    return SimpleNamespace(ray=SimpleNamespace(**{**dataclasses.asdict(cfg.ray), **ray}),
                           train=cfg.train)


def test_zero_config_takes_the_runs_schedule(tmp_path):
    ds = read_zero_config(ZERO, TrainConfig(batch_size=16, max_grad_norm=0.5), world=4)
    assert ds["zero_optimization"]["stage"] == 2
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"]) == (16, 4)
    assert ds["gradient_clipping"] == 0.5
    bad = tmp_path / "z3.json"
    bad.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    with pytest.raises(PersonalError, match="stage=3"):
        read_zero_config(bad, TrainConfig(), 2)
    broken = tmp_path / "broken.json"
    broken.write_text("{\n  oops")
    with pytest.raises(PersonalError, match="broken.json: not valid JSON: line 2"):
        read_zero_config(broken, TrainConfig(), 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU message")
def test_on_cpu_it_is_skipped_with_a_clear_message():
    with pytest.raises(PersonalError, match="needs ray.use_gpu=true"):
        check_deepspeed(with_ray(deepspeed=str(ZERO), use_gpu=False))
    with pytest.raises(PersonalError, match="no CUDA device"):
        check_deepspeed(with_ray(deepspeed=str(ZERO), use_gpu=True))
    with pytest.raises(PersonalError, match="ray.deepspeed is not set"):
        check_deepspeed(with_ray())


@pytest.mark.gpu
def test_deepspeed_unified_adapter_on_gpu(tmp_path):
    pytest.importorskip("deepspeed")
    if not torch.cuda.is_available():
        pytest.skip("DeepSpeed needs a CUDA GPU")
    if "deepspeed" not in {f.name for f in dataclasses.fields(Config().ray)}:
        pytest.skip("RayConfig has no `deepspeed` field yet")
    import ray
    from peft import PeftModel

    from personal.distributed.deepspeed import train_unified_deepspeed_on_ray
    from personal.distributed.smoke import smoke_config
    from personal.experiment.context import Context

    cfg = smoke_config(tmp_path / "world", overrides=[
        "ray.use_gpu=true", "ray.num_workers=1", f"ray.deepspeed={ZERO}", "model.device=cuda",
        "model.dtype=bfloat16"])
    os.environ["RAY_AUTH_MODE"] = "disabled"
    tmp = tempfile.mkdtemp(prefix="pray")
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, _temp_dir=tmp)
    try:
        ctx = Context.create(cfg, tmp_path / "run")
        record = train_unified_deepspeed_on_ray(ctx)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    assert record["steps"] > 0
    # The default path's machinery: validation at step 0 and after, best weights kept.
    assert record["val_losses"][0][0] == 0 and len(record["val_losses"]) >= 2
    assert record["best_val_loss"] == min(v for _, v in record["val_losses"])
    assert record["term_losses"]["lm"][-1][0] == record["steps"]
    out = tmp_path / "run" / "adapters" / "unified_lora"
    PeftModel.from_pretrained(ctx.base[0], str(out))
