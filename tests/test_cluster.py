"""cluster/: the cloud configurations (checked offline) and a real two-node cluster on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

from tests.conftest import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_JOB = "python -m orchestrator.sweep --space search_spaces/thresholds.yaml"


def _load(path: str):
    with open(os.path.join(REPO, path)) as fh:
        return list(yaml.safe_load_all(fh))


def _job_space(entrypoint: str):
    from orchestrator.space import load_space
    from orchestrator.sweep import apply_overrides, parse_args

    argv = shlex.split(entrypoint)
    assert argv[:3] == ["python", "-m", "orchestrator.sweep"]
    args = parse_args(argv[3:])
    return apply_overrides(load_space(os.path.join(REPO, args.space)), args)


def test_aws_cluster_config():
    (cfg,) = _load("cluster/aws.yaml")
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands", "file_mounts"):
        assert key in cfg, key
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types and types[cfg["head_node_type"]]["resources"].get("GPU", 0) == 0
    gpu_types = {n: t for n, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert gpu_types and all(t["max_workers"] >= 1 and t["min_workers"] == 0 for t in gpu_types.values())
    assert sum(t["max_workers"] for t in types.values()) <= cfg["max_workers"]
    # the project is installed on every node from the mounted checkout
    mount = next(iter(cfg["file_mounts"]))
    assert any(f"cd {mount}" in c and "pip install" in c and "-e ." in c for c in cfg["setup_commands"])
    # the documented job's trial workers fit on each GPU node type
    (job,) = _load("cluster/kuberay/rayjob.yaml")
    space = _job_space(job["spec"]["entrypoint"])
    for name, t in gpu_types.items():
        per_gpu_cpus = t["resources"]["CPU"] / t["resources"]["GPU"]
        assert space.gpus_per_worker <= t["resources"]["GPU"], name
        assert space.cpus_per_worker * space.gpus_per_worker <= per_gpu_cpus, name


def test_kuberay_manifests():
    (cluster,) = _load("cluster/kuberay/raycluster.yaml")
    (job,) = _load("cluster/kuberay/rayjob.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    assert cluster["spec"]["rayVersion"] == "2.60.0"
    dockerfile = open(os.path.join(REPO, "cluster/kuberay/Dockerfile")).read()
    assert "ray:2.60.0-py311" in dockerfile and "pip install" in dockerfile
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    tag = dockerfile.split("-t ", 1)[1].split()[0]
    groups = cluster["spec"]["workerGroupSpecs"]
    for c in [head] + [g["template"]["spec"]["containers"][0] for g in groups]:
        assert c["image"] == tag
        refs = {list(e.values())[0]["name"] for e in c["envFrom"]}
        assert refs == {"adin-s3", "adin-config"}  # credentials from a Secret, not from the job
    # the job is the README's command, and its trial workers fit a worker pod
    entry = job["spec"]["entrypoint"]
    assert entry.startswith(README_JOB) and README_JOB in open(os.path.join(REPO, "README.md")).read()
    assert "AWS_SECRET_ACCESS_KEY" not in json.dumps(job)
    space = _job_space(entry)
    gpu_group = groups[0]
    limits = gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(gpu_group["rayStartParams"]["num-gpus"]) == int(limits["nvidia.com/gpu"])
    assert space.gpus_per_worker <= int(limits["nvidia.com/gpu"])
    assert space.cpus_per_worker <= int(gpu_group["rayStartParams"]["num-cpus"])
    assert space.workers <= gpu_group["maxReplicas"]


# --- faults at start: a clear error within seconds, before any trial ------------------------------------------
def _sweep(*args: str, env: dict | None = None, timeout: int = 120) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "orchestrator.sweep", "--space", "search_spaces/smoke.yaml", *args],
                          cwd=REPO, env=env or dict(os.environ), capture_output=True, text=True, timeout=timeout)
    return proc, time.perf_counter() - t0


def test_s3_down_at_start_fails_fast(tmp_path):
    env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}", AWS_ACCESS_KEY_ID="k",
               AWS_SECRET_ACCESS_KEY="s")
    proc, seconds = _sweep("--storage", "s3://adin-sweeps/sweeps", "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
                           env=env)
    assert proc.returncode == 2 and seconds < 30
    assert "AWS_ENDPOINT_URL" in proc.stderr and "unreachable" in proc.stderr
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr


def test_mlflow_down_at_start_fails_fast(tmp_path):
    proc, seconds = _sweep("--storage", str(tmp_path / "s"), "--data-root", str(tmp_path / "d"),
                           "--tracking-uri", f"http://127.0.0.1:{free_port()}")
    assert proc.returncode == 2 and seconds < 30
    assert "MLflow tracking server" in proc.stderr and "unreachable" in proc.stderr
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr


# --- the real thing --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_cluster():
    """cluster/local up.sh ... down.sh; yields (state dir, environment for clients, recorded process ids)."""
    state = tempfile.mkdtemp(prefix="adincl", dir="/tmp")
    cluster = os.path.join(REPO, "cluster", "local")
    up = subprocess.run(["bash", os.path.join(cluster, "up.sh"), "--state", state], cwd=REPO, capture_output=True,
                        text=True, timeout=400)
    info = {"pids": {}}
    try:
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-3000:]
        info = json.load(open(os.path.join(state, "pids.json")))
        env = dict(os.environ)
        for line in open(os.path.join(state, "env.sh")):
            k, _, v = line.strip().removeprefix("export ").partition("=")
            env[k] = v
        yield state, env
    finally:
        subprocess.run(["bash", os.path.join(cluster, "down.sh"), "--state", state], cwd=REPO, timeout=300)
    for pid in info["pids"].values():  # down stopped exactly what up started
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    shutil.rmtree(state, ignore_errors=True)


def _submit(state: str, env: dict, *sweep_args: str, wait: bool = True) -> subprocess.CompletedProcess:
    runtime_env = open(os.path.join(state, "runtime_env.json")).read()
    return subprocess.run(["ray", "job", "submit", *([] if wait else ["--no-wait"]), "--runtime-env-json",
                           runtime_env, "--", "python", "-m", "orchestrator.sweep", "--space",
                           "search_spaces/smoke.yaml", "--quiet", *sweep_args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def _ray_list(env: dict, what: str, *filters: str) -> list[dict]:
    args = ["ray", "list", what, "--detail", "--format", "json", "--limit", "1000"]
    for f in filters:
        args += ["--filter", f]
    out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout.strip()
    return json.loads(text) if text.startswith("[") else []  # "No resource in the cluster" when empty


@pytest.mark.slow
def test_two_node_cluster_end_to_end(local_cluster):
    state, env = local_cluster
    job = _submit(state, env)
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
    assert "succeeded" in job.stdout and "winner: trial" in job.stdout
    # nested runs on the MLflow server
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("adin.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("adin.role") == "trial"]
    assert len(parents) == 1 and len(children) == 4
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    assert all(c.data.tags["checkpoint_uri"].startswith("s3://adin-sweeps/sweeps/") for c in children)
    # the exported winner (checkpoint fetched from the S3 endpoint)
    out = os.path.join(state, "export")
    best = subprocess.run([sys.executable, "-m", "orchestrator.best", "--export", out], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert best.returncode == 0, best.stderr[-3000:]
    assert {"model.pt", "config.json", "model_card.md", "model_card.json"} <= set(os.listdir(out))
    # no secret in MLflow params/tags, the job's log or the model card
    secret = env["AWS_SECRET_ACCESS_KEY"]
    for r in runs:
        assert secret not in json.dumps(r.data.params) + json.dumps(r.data.tags)
    assert secret not in job.stdout + job.stderr
    assert all(secret not in open(os.path.join(out, f), errors="ignore").read()
               for f in ("model_card.md", "model_card.json", "config.json"))


@pytest.mark.slow
def test_cancelled_job_leaves_nothing_and_the_next_starts_at_once(local_cluster):
    state, env = local_cluster

    def wait_for(pred, timeout: float) -> float:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if pred():
                return time.perf_counter() - t0
            time.sleep(1)
        pytest.fail(f"condition not met within {timeout} s")

    def train_workers() -> int:
        return len(_ray_list(env, "actors", "class_name=RayTrainWorker", "state=ALIVE"))

    sub = _submit(state, env, "--name", "smoke-cancelled", wait=False)
    job_id = sub.stdout[sub.stdout.find("raysubmit_"):].split()[0].strip("'\"")
    wait_for(lambda: train_workers() >= 2, 240)  # a trial is training
    t0 = time.perf_counter()
    stop = subprocess.run(["ray", "job", "stop", job_id], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert stop.returncode == 0, stop.stderr
    stop_s = time.perf_counter() - t0

    ray_job = next(j["job_id"] for j in _ray_list(env, "jobs") if j.get("submission_id") == job_id)
    left: dict[str, list] = {}

    def nothing_left() -> bool:  # of the cancelled job (other jobs may share the cluster)
        left["pgs"] = [p for p in _ray_list(env, "placement-groups") if p.get("creator_job_id") == ray_job
                       and p["state"] in ("CREATED", "PENDING", "RESCHEDULING")]
        left["actors"] = [a["class_name"] for a in _ray_list(env, "actors", "state=ALIVE")
                          if a.get("job_id") == ray_job and not a.get("is_detached")]
        return not left["pgs"] and not left["actors"]

    try:
        cleaned_s = wait_for(nothing_left, 60)
    except BaseException:
        print(f"left of job {ray_job}: {left}")
        raise
    t1 = time.perf_counter()
    nxt = _submit(state, env, "--name", "smoke-after-cancel", "--num-samples", "1", wait=False)
    next_job = nxt.stdout[nxt.stdout.find("raysubmit_"):].split()[0].strip("'\"")
    try:
        started_s = wait_for(lambda: train_workers() >= 2, 120)
    finally:
        subprocess.run(["ray", "job", "stop", next_job], cwd=REPO, env=env, capture_output=True, timeout=120)
    print(f"\njob stop {stop_s:.1f} s; no placement group or job actor left {cleaned_s:.1f} s later; "
          f"the next sweep's workers ran {started_s:.1f} s after its submission (submitted {t1 - t0:.1f} s "
          "after the stop)")
