"""Shared fixtures: a local S3-API server and a fresh bucket (helpers for tests live in tests/helpers.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers import free_port, wait_for_port

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
REHEARSAL_HOW = "pytest --rehearsal tests/ (or ADIN_REHEARSAL=1)"


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--rehearsal",
        action="store_true",
        help="also run the fault rehearsals (killed workers and nodes, a cancelled job, SIGTERM beside "
        "another Ray, ...): about 15 more minutes on 2 cores",
    )


def pytest_collection_modifyitems(config, items) -> None:
    """The fault rehearsals are real sweeps, minutes each: CI's test command leaves them out (the suite stays well
    under 20 minutes on 2 cores) and says how to run them; the README's fault table gives their last figures."""
    if config.getoption("--rehearsal") or os.environ.get("ADIN_REHEARSAL") == "1":
        return
    skip = pytest.mark.skip(reason=f"fault rehearsal, minutes on 2 cores: run with {REHEARSAL_HOW}")
    for item in items:
        if "rehearsal" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def s3_server():
    """moto_server on 127.0.0.1, stopped by the process id recorded here."""
    exe = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """AWS variables pointing at the local server, and a fresh bucket; yields the bucket name."""
    import uuid

    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    # a secret no file holds by chance, so a test can look for it in everything a sweep writes
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", f"adin-test-secret-{uuid.uuid4().hex}")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"adin-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    return bucket
