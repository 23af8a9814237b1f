"""Shared fixtures: one real local Ray session and one real S3 endpoint (moto) per test run."""

from __future__ import annotations

import os
import uuid

import pytest

# Ray Train V2 reports block until the controller polls; poll quickly in tests (docs/design.md §5).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Ray workers inherit the environment of ray.init, which may run before the S3 fixture: give
# every process dummy credentials up front (the endpoint travels with each filesystem object).
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with a small object store; 4 logical CPUs so fractional tasks schedule on 2 cores."""
    import ray

    from dfd_ray.ray_session import start_local_ray

    # started as the jobs start theirs, so that another local Ray (a benchmark) cannot pass for it
    start_local_ray(4, 200, include_dashboard=True,  # the state API (list_actors) needs it
                    log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """A real HTTP S3 endpoint on 127.0.0.1; AWS_ENDPOINT_URL points every client at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    yield endpoint
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket on the test endpoint; returns its s3:// URI."""
    import boto3

    name = f"dfd-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture
def faulty_s3(s3_server, monkeypatch):
    """(proxy, bucket URI): a fresh bucket reached through a fault-injecting proxy
    (dfd_ray.fault_proxy); AWS_ENDPOINT_URL points at the proxy for the test."""
    import boto3

    from dfd_ray.fault_proxy import FaultyProxy

    proxy = FaultyProxy(s3_server)
    name = f"dfd-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    yield proxy, f"s3://{name}"
    proxy.close()


@pytest.fixture(scope="session")
def model_uri(tmp_path_factory):
    """An untrained model of the default architecture, saved: for jobs that need any model."""
    import torch

    from dfd_ray.models import DFDModel, ModelConfig, save_model

    torch.manual_seed(0)
    uri = str(tmp_path_factory.mktemp("model") / "model")
    save_model(DFDModel(ModelConfig()), uri)
    return uri


def pytest_collection_modifyitems(items):
    """Mark every test that uses the shared Ray session or the dev cluster's Ray head `ray`, so that
    `-m "not ray"` runs without Ray (tests that start a Ray of their own carry the marker themselves)."""
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()) or item.get_closest_marker("cluster"):
            item.add_marker(pytest.mark.ray)
