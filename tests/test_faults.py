"""S3 and MLflow going away in the middle of a sweep (both behind a proxy that can be cut and restored)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from tests.helpers import TcpProxy, free_port, wait_for_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def mlflow_server(tmp_path):
    """An MLflow tracking server (SQLite, local artifacts) on 127.0.0.1, stopped by its recorded process id."""
    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "mlflow")
    proc = subprocess.Popen(
        [
            exe if os.path.exists(exe) else "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/mlflow.db",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
    )
    try:
        wait_for_port(port, timeout=120)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


@pytest.mark.slow
def test_storage_and_tracking_outage_mid_sweep_is_waited_out_and_recorded(tmp_path, s3_env, s3_server, mlflow_server):
    """While a trial trains, MLflow and then S3 vanish for `outage_s` each: the tracking writes queue, the
    checkpoint upload waits (backoff); the sweep finishes, nothing is lost from MLflow, and both are recorded."""
    from mlflow.tracking import MlflowClient

    # The trial must outlast both outages after its first report: 60 epochs train for about a minute on 2 cores
    # (evaluations included), against 2 x 8 s of outages (20 epochs and 2 x 20 s once the trials got faster: the
    # S3 outage began after the trial had finished)
    outage_s = 8
    s3_proxy = TcpProxy(int(s3_server.rsplit(":", 1)[1]))
    ml_proxy = TcpProxy(mlflow_server)
    direct = MlflowClient(f"http://127.0.0.1:{mlflow_server}")
    ray_root = tempfile.mkdtemp(prefix="rs", dir="/tmp")  # this sweep's Ray writes its logs here (short: sockets)
    env = dict(os.environ, AWS_ENDPOINT_URL=s3_proxy.url, RAY_TMPDIR=ray_root)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator.sweep",
            "--space",
            "search_spaces/smoke.yaml",
            "--quiet",
            "--name",
            "outage",
            "--num-samples",
            "1",
            "--epochs",
            "60",
            "--storage",
            f"s3://{s3_env}/sweeps",
            "--data-root",
            str(tmp_path / "data"),
            "--tracking-uri",
            ml_proxy.url,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:  # the trial's first report reached MLflow
            exp = direct.get_experiment_by_name("smoke")
            runs = direct.search_runs([exp.experiment_id], "tags.`adin.role` = 'trial'") if exp else []
            if runs and direct.get_metric_history(runs[0].info.run_id, "transfer_mAP"):
                break
            time.sleep(1)
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        ml_proxy.down()  # reports go on; their tracking writes queue
        time.sleep(outage_s)
        ml_proxy.up()
        s3_proxy.down()  # the next checkpoint upload waits, and the trial with it
        time.sleep(outage_s)
        s3_proxy.up()
        out, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
        s3_proxy.down()
        ml_proxy.down()
    assert proc.returncode == 0, out[-5000:]
    assert "faults survived" in out and "MLflow unreachable" in out, out[-3000:]

    exp = direct.get_experiment_by_name("smoke")
    (parent,) = direct.search_runs([exp.experiment_id], "tags.`adin.role` = 'sweep'")
    (child,) = direct.search_runs([exp.experiment_id], "tags.`adin.role` = 'trial'")
    assert parent.info.status == "FINISHED" and child.info.status == "FINISHED"
    # every report reached MLflow, in order, none twice
    steps = [m.step for m in direct.get_metric_history(child.info.run_id, "transfer_mAP")]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 12, steps
    faults = json.loads(parent.data.tags["adin.faults"])
    (outage,) = faults["tracking_outages"]
    assert outage["seconds"] >= outage_s - 3
    # the checkpoint upload that fell into the outage waited for the endpoint instead of failing the trial
    trial_faults = next(iter(faults["trials"].values()))
    assert trial_faults["faults/storage_retries"] >= 1, faults
    assert child.data.metrics["faults/storage_retries"] >= 1
    assert child.data.tags["adin.checkpoint"].startswith(f"s3://{s3_env}/sweeps/outage/")
    # no secret at rest: not in the bucket (Tune's state, searcher state, checkpoints), not in the local files of the
    # sweep (data, Ray's session logs: the runtime env agent logs what it is given), not in MLflow
    secret = os.environ["AWS_SECRET_ACCESS_KEY"].encode()
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_env)
        for o in page.get("Contents", [])
    ]
    assert any(k.endswith("tuner.pkl") for k in keys) and any("search_gen_state" in k for k in keys), keys[:20]
    holding = [k for k in keys if secret in s3.get_object(Bucket=s3_env, Key=k)["Body"].read()]
    local = [
        os.path.join(d, f) for folder in (ray_root, str(tmp_path)) for d, _, files in os.walk(folder) for f in files
    ]
    holding += [p for p in local if os.path.isfile(p) and secret in open(p, "rb").read()]
    assert not holding, holding
    assert any("runtime_env_agent" in p for p in local), "Ray's logs were not where the test looked"
    assert secret.decode() not in out
    shutil.rmtree(ray_root, ignore_errors=True)
    print(f"\nno secret in {len(keys)} objects of the bucket and {len(local)} local files")
    print(
        f"\noutage {outage_s} s: MLflow outage recorded as {outage['seconds']} s ({outage['attempts']} retries); "
        f"storage: {trial_faults['faults/storage_retries']:.0f} retries, {trial_faults['faults/storage_wait_s']:.1f}"
        f" s waited; {len(steps)} reports, all in MLflow; sweep exit 0"
    )
