"""A real two-node Ray cluster on loopback: `ray start --head` plus a second `ray start
--address` node (127.0.0.1, 1 CPU each, own temp dir), the smoke experiment submitted with the
real `ray job submit` CLI, its outputs checked and its results compared with the same
experiment run locally without Ray workers; then exactly the started processes are stopped."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

# Not reliable yet: job submission to the loopback head sometimes finds no job agent
# ("No available agent to submit job"); excluded from the default and CI runs until fixed.
pytestmark = [pytest.mark.slow, pytest.mark.cluster]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cmd(*args, env, timeout=180):
    return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def started_pids(temp: Path) -> set[int]:
    """PIDs of the Ray processes whose command line names this cluster's temp dir (raylet,
    GCS, workers, ...): those are ours and only ours."""
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(temp) in cmd:
                pids.add(int(proc.name))
    return pids


@pytest.fixture
def loopback_cluster():
    temp = Path(tempfile.mkdtemp(prefix="prc"))
    env = dict(os.environ, RAY_AUTH_MODE="disabled")  # local test cluster only
    env.pop("RAY_ADDRESS", None)
    port, dash = free_port(), free_port()
    head = ray_cmd("start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                   "--num-cpus", "1", "--temp-dir", str(temp), "--include-dashboard", "true",
                   "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
                   "--disable-usage-stats", env=env)
    pids = started_pids(temp)
    try:
        assert head.returncode == 0, head.stderr[-2000:]
        node = ray_cmd("start", "--address", f"127.0.0.1:{port}", "--node-ip-address",
                       "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats", env=env)
        assert node.returncode == 0, node.stderr[-2000:]
        time.sleep(2)
        pids |= started_pids(temp)
        yield {"gcs": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dash}", "env": env}
    finally:
        pids |= started_pids(temp)
        for pid in sorted(pids):  # only what this test started, never `ray stop`
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(3)
        for pid in sorted(started_pids(temp) & pids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)


def test_smoke_experiment_on_two_node_loopback_cluster(loopback_cluster, tmp_path):
    env = loopback_cluster["env"]
    status = ray_cmd("status", "--address", loopback_cluster["gcs"], env=env)
    assert status.returncode == 0 and "2.0 CPU" in status.stdout.replace("0.0/2.0", "2.0 CPU")
    root, run = tmp_path / "world", tmp_path / "cluster_run"
    for _ in range(36):  # the head's job agent comes up a little after `ray start` returns
        job = ray_cmd("job", "submit", "--address", loopback_cluster["dashboard"], "--",
                      sys.executable, "-m", "ray_jobs.experiment", "--smoke-test",
                      "--root", str(root), "--run", str(run), env=env, timeout=900)
        if "No available agent" not in job.stderr:
            break
        time.sleep(5)
    assert job.returncode == 0, (job.stdout + job.stderr)[-4000:]
    assert "succeeded" in (job.stdout + job.stderr).lower()
    for rel in ("adapters/unified_lora/adapter_model.safetensors", "report.md",
                "metrics/unified_lora_summary.json", "predictions/unified_lora.jsonl"):
        assert (run / rel).is_file(), rel
    assert list((run / "ray").glob("unified_lora-*/checkpoint_*"))  # Ray Train checkpoints

    local = tmp_path / "local_run"
    out = subprocess.run([sys.executable, "-m", "ray_jobs.experiment", "--smoke-test", "--local",
                          "--root", str(root), "--run", str(local)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    a = load_file(str(run / "adapters/unified_lora/adapter_model.safetensors"))
    b = load_file(str(local / "adapters/unified_lora/adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    summary = json.loads((run / "metrics/unified_lora_summary.json").read_text())
    reference = json.loads((local / "metrics/unified_lora_summary.json").read_text())
    assert summary["macro"] == pytest.approx(reference["macro"], abs=1e-6, nan_ok=True)
    preds = [json.loads(x)["prediction"] for x in (run / "predictions/unified_lora.jsonl").open()]
    refs = [json.loads(x)["prediction"] for x in (local / "predictions/unified_lora.jsonl").open()]
    assert preds == refs
