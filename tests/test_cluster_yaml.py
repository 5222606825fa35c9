"""cluster.yaml is a valid Ray cluster-launcher config (Ray's own schema and defaults merge),
with a CPU head, an autoscaling GPU worker type and setup commands that install the project."""
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text(encoding="utf-8"))


def test_valid_against_rays_cluster_schema(cluster):
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cluster))  # raises on any schema violation


def test_schema_check_catches_mistakes(cluster):
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = dict(cluster, max_workers="eight")
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


def test_cpu_head_gpu_workers_and_install(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert "GPU" not in head["resources"]
    gpu = [t for name, t in types.items() if t.get("resources", {}).get("GPU")]
    assert gpu and gpu[0]["min_workers"] < gpu[0]["max_workers"] <= cluster["max_workers"]
    assert any("pip install" in c and "-e" in c for c in cluster["setup_commands"])
