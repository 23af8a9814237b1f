"""Offline checks of the cluster configs: `ray_cluster.yaml` against the schema shipped in Ray's
wheel and Ray's own config preparation and validation (no AWS calls, no credentials), and the
structure of `cluster/rayjob.yaml` (KubeRay) and `cluster/runtime_env.yaml`."""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "ray_cluster.yaml"
RAYJOB_YAML = ROOT / "cluster" / "rayjob.yaml"
RUNTIME_ENV_YAML = ROOT / "cluster" / "runtime_env.yaml"
LARGE_DIRS = (".venv", ".git", "demo_out", "data")


@pytest.fixture(scope="module")
def cluster_config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def prepared(cluster_config) -> dict:
    """The config as `ray up` sees it before it talks to AWS: defaults merged, checked."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(cluster_config))
    validate_config(config)
    return config


def _ray_start_commands(config: dict) -> list[str]:
    commands = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    return [c for c in commands if "ray start" in c]


def test_cluster_yaml_matches_ray_schema(cluster_config):
    import jsonschema
    import ray

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(cluster_config, json.loads(schema_path.read_text()))


def test_cluster_yaml_passes_ray_prepare_and_validate(prepared):
    from ray.autoscaler._private.providers import _get_node_provider_cls

    assert prepared["provider"]["type"] == "aws"
    assert _get_node_provider_cls(prepared["provider"]).__name__ == "AWSNodeProvider"
    # The common setup commands run first on every node, as Ray merges them.
    assert prepared["head_setup_commands"][: len(prepared["setup_commands"])] == prepared["setup_commands"]
    assert prepared["worker_setup_commands"][: len(prepared["setup_commands"])] == prepared["setup_commands"]


def test_head_takes_no_work_and_workers_have_gpus(prepared):
    node_types = prepared["available_node_types"]
    head = node_types[prepared["head_node_type"]]
    assert head["resources"].get("CPU") == 0
    assert head["resources"].get("GPU", 0) == 0
    assert head["max_workers"] == 0
    workers = {name: t for name, t in node_types.items() if name != prepared["head_node_type"]}
    assert workers
    for name, node_type in workers.items():
        assert node_type["resources"].get("GPU", 0) >= 1, name
        assert node_type["min_workers"] == 0, f"{name}: idle GPUs cost money; scale from zero"
        assert node_type["max_workers"] >= 1, name
        assert node_type["node_config"]["InstanceType"].startswith(("g", "p")), name
    assert prepared["max_workers"] >= max(t["max_workers"] for t in workers.values())


def test_autoscaler_places_work_on_gpu_workers_never_on_the_head(prepared):
    """Ray's own bin-packing (offline) for a fit job and a DDP group: all of it lands on worker
    node types, none of it is left unplaceable, and the head (CPU 0) fits nothing."""
    from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
    from ray.autoscaler._private.resource_demand_scheduler import (
        _default_utilization_scorer,
        _fits,
        get_nodes_for,
    )

    node_types = prepared["available_node_types"]
    head_type = prepared["head_node_type"]
    scorer = functools.partial(
        _default_utilization_scorer, node_availability_summary=NodeAvailabilitySummary({})
    )
    demands = [{"CPU": 1}] * 6 + [{"CPU": 1, "GPU": 1}] * 4
    to_add, residual = get_nodes_for(
        node_types, {head_type: 1}, head_type, prepared["max_workers"], demands, scorer
    )
    assert residual == []
    assert to_add and head_type not in to_add
    assert not _fits(dict(node_types[head_type]["resources"]), {"CPU": 1})


def test_auth_mode_is_consistent(prepared):
    """Ray 2.60: every `ray start` and the nodes' shells must agree on RAY_AUTH_MODE."""
    modes = set()
    for command in _ray_start_commands(prepared):
        found = re.findall(r"RAY_AUTH_MODE=(\w+)", command)
        assert found, f"ray start without RAY_AUTH_MODE: {command}"
        modes.update(found)
    shell = " ".join(prepared["setup_commands"])
    modes.update(re.findall(r"export RAY_AUTH_MODE=(\w+)", shell))
    assert modes == {"disabled"}
    assert any("RAY_AUTH_MODE" in c for c in prepared["setup_commands"]), "shells on the nodes need it too"
    head_start = next(c for c in prepared["head_start_ray_commands"] if "ray start" in c)
    # Auth off is only acceptable with the dashboard on the head's loopback (SSH tunnel access).
    assert "--dashboard-host=127.0.0.1" in head_start


def test_nodes_install_the_synced_repository(prepared):
    mounts = prepared["file_mounts"]
    (remote, local), = mounts.items()
    assert (ROOT / local).resolve() == ROOT
    for key in ("head_setup_commands", "worker_setup_commands"):
        commands = prepared[key]
        torch_at = next(i for i, c in enumerate(commands) if "torch" in c and "pip install" in c)
        repo_at = next(i for i, c in enumerate(commands) if f"pip install -q -e {remote}" in c)
        assert torch_at < repo_at, f"{key}: torch must be in place before dfd-ray's requirements"
    assert "whl/cpu" in " ".join(prepared["head_setup_commands"]), "the head needs no CUDA torch"
    for big in (".venv", ".git"):
        assert big in prepared["rsync_exclude"]


def test_images_match_the_installed_ray():
    import ray

    docker = yaml.safe_load(CLUSTER_YAML.read_text())["docker"]
    for key in ("head_image", "worker_image"):
        assert docker[key].startswith(f"rayproject/ray:{ray.__version__}-"), docker[key]
    assert docker["worker_image"].endswith("-gpu")
    assert "--gpus all" in docker["worker_run_options"]


def test_runtime_env_file():
    env = yaml.safe_load(RUNTIME_ENV_YAML.read_text())
    assert set(env) <= {"working_dir", "excludes", "env_vars", "pip", "py_modules", "config"}
    assert env["working_dir"] == "."
    excludes = [e.strip("/") for e in env["excludes"]]
    for big in LARGE_DIRS:
        assert big in excludes, f"{big} must never be uploaded with a job"
    assert all(isinstance(v, str) for v in env["env_vars"].values()), "Ray wants string env vars"
    assert float(env["env_vars"]["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]) > 0
    assert env["env_vars"]["RAY_AUTH_MODE"] == "disabled"
    # Ray's own parser accepts it (the same one `ray job submit --runtime-env` uses).
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**{k: v for k, v in env.items() if k != "working_dir"}, working_dir="s3://b/k.zip")


def test_rayjob_manifest():
    docs = [d for d in yaml.safe_load_all(RAYJOB_YAML.read_text()) if d]
    (job,) = [d for d in docs if d.get("kind") == "RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    assert job["metadata"]["name"]
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "jobs/fit_scenes.py"]
    assert argv[argv.index("--data") + 1].startswith("s3://")
    assert argv[argv.index("--out") + 1].startswith("s3://")
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"], "the entrypoint's jobs/ script must come from somewhere"

    import ray

    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]
    assert str(head["rayStartParams"]["num-cpus"]) == "0"
    assert all(isinstance(v, str) for v in head["rayStartParams"].values()), "KubeRay wants strings"
    (head_container,) = head["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in head_container.get("resources", {}).get("limits", {})
    groups = cluster["workerGroupSpecs"]
    assert groups
    for group in groups:
        assert group["groupName"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        (container,) = group["template"]["spec"]["containers"]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        assert container["image"].startswith(f"rayproject/ray:{ray.__version__}-")
    containers = [head_container] + [g["template"]["spec"]["containers"][0] for g in groups]
    submitter = spec.get("submitterPodTemplate")
    if submitter:
        containers += submitter["spec"]["containers"]
    for container in containers:
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env.get("RAY_AUTH_MODE") == "disabled", container["name"]
