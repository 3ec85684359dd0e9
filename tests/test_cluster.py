"""cluster/: the cloud configurations (checked offline) and a real two-node cluster on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

from tests.helpers import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_JOB = "python -m orchestrator.sweep --space search_spaces/thresholds.yaml"


def _load(path: str):
    with open(os.path.join(REPO, path)) as fh:
        return list(yaml.safe_load_all(fh))


def _job_resources(entrypoint: str):
    """The search space a job's command line runs: the file with the command's experiment flags applied."""
    from orchestrator.plan import _overrides, _space_changes
    from orchestrator.space import load_space
    from orchestrator.sweep import parse_args

    argv = shlex.split(entrypoint)
    assert argv[:3] == ["python", "-m", "orchestrator.sweep"]
    args = parse_args(argv[3:])
    space = load_space(os.path.join(REPO, args.space))
    return space.with_overrides(_space_changes(space, _overrides(args))).resources


def test_aws_cluster_config():
    (cfg,) = _load("cluster/aws.yaml")
    for key in (
        "cluster_name",
        "provider",
        "available_node_types",
        "head_node_type",
        "setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
        "file_mounts",
    ):
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
    res = _job_resources(job["spec"]["entrypoint"])
    for name, t in gpu_types.items():
        per_gpu_cpus = t["resources"]["CPU"] / t["resources"]["GPU"]
        assert res.gpus_per_worker <= t["resources"]["GPU"], name
        assert res.cpus_per_worker * res.gpus_per_worker <= per_gpu_cpus, name


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
    res = _job_resources(entry)
    gpu_group = groups[0]
    limits = gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(gpu_group["rayStartParams"]["num-gpus"]) == int(limits["nvidia.com/gpu"])
    assert res.gpus_per_worker <= int(limits["nvidia.com/gpu"])
    assert res.cpus_per_worker <= int(gpu_group["rayStartParams"]["num-cpus"])
    assert res.workers <= gpu_group["maxReplicas"]


# --- faults at start: a clear error within seconds, before any trial ------------------------------------------
def _sweep(*args: str, env: dict | None = None, timeout: int = 120) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", "--space", "search_spaces/smoke.yaml", *args],
        cwd=REPO,
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc, time.perf_counter() - t0


def test_s3_down_at_start_fails_fast(tmp_path):
    env = dict(
        os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}", AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s"
    )
    proc, seconds = _sweep(
        "--storage", "s3://adin-sweeps/sweeps", "--tracking-uri", f"sqlite:///{tmp_path}/m.db", env=env
    )
    assert proc.returncode == 2 and seconds < 30
    assert "AWS_ENDPOINT_URL" in proc.stderr and "unreachable" in proc.stderr
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr


def test_mlflow_down_at_start_fails_fast(tmp_path):
    proc, seconds = _sweep(
        "--storage",
        str(tmp_path / "s"),
        "--data-root",
        str(tmp_path / "d"),
        "--tracking-uri",
        f"http://127.0.0.1:{free_port()}",
    )
    assert proc.returncode == 2 and seconds < 30
    assert "MLflow tracking server" in proc.stderr and "unreachable" in proc.stderr
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr


# --- the real thing --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_cluster():
    """cluster/local up.sh ... down.sh; yields (state dir, environment for clients, recorded process ids)."""
    state = tempfile.mkdtemp(prefix="adincl", dir="/tmp")
    cluster = os.path.join(REPO, "cluster", "local")
    up = subprocess.run(
        ["bash", os.path.join(cluster, "up.sh"), "--state", state],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
    )
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
    assert not os.path.exists(os.path.join(state, "env.sh")) and not os.path.exists(os.path.join(state, "pids.json"))
    if info.get("database"):  # its own PostgreSQL databases are gone too
        assert not {f"{info['database']}_mlflow", f"{info['database']}_optuna"} & _pg_databases()
    shutil.rmtree(state, ignore_errors=True)


def _pg_databases() -> set[str]:
    import psycopg2

    with psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", connect_timeout=3) as c:
        with c.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database")
            return {r[0] for r in cur.fetchall()}


def _submit(state: str, env: dict, *sweep_args: str, wait: bool = True) -> subprocess.CompletedProcess:
    runtime_env = open(os.path.join(state, "runtime_env.json")).read()
    return subprocess.run(
        [
            "ray",
            "job",
            "submit",
            *([] if wait else ["--no-wait"]),
            "--runtime-env-json",
            runtime_env,
            "--",
            "python",
            "-m",
            "orchestrator.sweep",
            "--space",
            "search_spaces/smoke.yaml",
            "--quiet",
            *sweep_args,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def wait_for(pred, timeout: float, what: str = "condition") -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if pred():
            return time.perf_counter() - t0
        time.sleep(1)
    pytest.fail(f"{what} not met within {timeout} s")


def _job_id(sub: subprocess.CompletedProcess) -> str:
    assert "raysubmit_" in sub.stdout, sub.stdout[-2000:] + sub.stderr[-2000:]
    return sub.stdout[sub.stdout.find("raysubmit_") :].split()[0].strip("'\"")


def _job_status(env: dict, job_id: str) -> str:
    out = subprocess.run(
        ["ray", "job", "status", job_id], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    text = (out.stdout + out.stderr).lower()  # "Job 'raysubmit_…' succeeded", "… failed", "… was stopped"
    return next((s.upper() for s in ("succeeded", "failed", "stopped") if s in text), "RUNNING")


def _job_logs(env: dict, job_id: str) -> str:
    return subprocess.run(
        ["ray", "job", "logs", job_id], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    ).stdout


def _wait_job(env: dict, job_id: str, timeout: float) -> str:
    wait_for(lambda: _job_status(env, job_id) in ("SUCCEEDED", "FAILED", "STOPPED"), timeout, f"job {job_id} end")
    return _job_status(env, job_id)


def _sweep_runs(env: dict, sweep: str) -> tuple[object, list]:
    """(parent run, child runs) of a sweep on the cluster's MLflow server."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id], f"tags.`adin.sweep` = '{sweep}'") if exp else []
    parents = [r for r in runs if r.data.tags.get("adin.role") == "sweep"]
    return (parents[0] if parents else None), [r for r in runs if r.data.tags.get("adin.role") == "trial"]


def _reported(env: dict, sweep: str) -> int:
    """How many reports of the sweep's trials reached MLflow so far."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    return sum(len(client.get_metric_history(c.info.run_id, "transfer_mAP")) for c in _sweep_runs(env, sweep)[1])


def _ray_list(env: dict, what: str, *filters: str) -> list[dict]:
    args = ["ray", "list", what, "--detail", "--format", "json", "--limit", "1000"]
    for f in filters:
        args += ["--filter", f]
    out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout.strip()
    return json.loads(text) if text.startswith("[") else []  # "No resource in the cluster" when empty


def _listening(pids: list[int]) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket of these processes and their descendants, read
    from /proc (what `ss -ltnp` shows)."""
    import ipaddress
    import socket
    import struct

    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    procs, todo = set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid not in procs:
            procs.add(pid)
            todo += children.get(pid, [])
    owner: dict[str, int] = {}
    for pid in procs:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    owner[target[8:-1]] = pid
        except OSError:
            continue
    out = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in owner:  # 0A: LISTEN
                continue
            hex_ip, hex_port = local.split(":")
            raw = bytes.fromhex(hex_ip)
            raw = b"".join(struct.pack("<I", w) for w in struct.unpack(">" + "I" * (len(raw) // 4), raw))
            addr = ipaddress.ip_address(socket.inet_ntop(family, raw))
            ip = str(getattr(addr, "ipv4_mapped", None) or addr)  # ::ffff:127.0.0.1 is 127.0.0.1
            name = open(f"/proc/{owner[inode]}/comm").read().strip()
            out.append((name, ip, int(hex_port, 16)))
    return out


@pytest.mark.slow
def test_two_node_cluster_end_to_end(local_cluster):
    state, env = local_cluster
    job = _submit(state, env, "--num-samples", "2")
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-2000:]
    assert "succeeded" in job.stdout and "winner: trial" in job.stdout
    # every port of the cluster (Ray's GCS, raylets, object managers, dashboard and its agents, the workers it
    # keeps, moto, MLflow) listens on loopback only (with nodes on 127.0.0.2/.3 Ray listened on every interface)
    import ipaddress

    info = json.load(open(os.path.join(state, "pids.json")))
    sockets = _listening(list(info["pids"].values()))
    names = {name for name, _, _ in sockets}
    assert {"gcs_server", "raylet"} <= names and len(sockets) >= 12, sockets
    beyond = [s for s in sockets if not ipaddress.ip_address(s[1]).is_loopback]
    assert not beyond, beyond
    assert len(_ray_list(env, "nodes", "state=ALIVE")) == 2  # still two nodes, both on 127.0.0.1
    print(f"\n{len(sockets)} listening sockets of the cluster's processes, all on loopback")
    # nested runs on the MLflow server
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("smoke")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("adin.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("adin.role") == "trial"]
    assert len(parents) == 1 and len(children) == 2
    assert all(c.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for c in children)
    assert all(c.data.tags["adin.checkpoint"].startswith("s3://adin-sweeps/sweeps/") for c in children)
    # the exported winner (checkpoint fetched from the S3 endpoint)
    out = os.path.join(state, "export")
    best = subprocess.run(
        [sys.executable, "-m", "orchestrator.best", "--export", out],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert best.returncode == 0, best.stderr[-3000:]
    assert {"model.pt", "config.json", "model_card.md", "model_card.json"} <= set(os.listdir(out))
    # no secret in MLflow params/tags, the job's log or the model card
    secret = env["AWS_SECRET_ACCESS_KEY"]
    for r in runs:
        assert secret not in json.dumps(r.data.params) + json.dumps(r.data.tags)
    assert secret not in job.stdout + job.stderr
    assert all(
        secret not in open(os.path.join(out, f), errors="ignore").read()
        for f in ("model_card.md", "model_card.json", "config.json")
    )
    # runs and the study of record in the cluster's own database: PostgreSQL where the machine runs one
    import optuna

    info = json.load(open(os.path.join(state, "pids.json")))
    sweep = parents[0].data.tags["adin.sweep"]
    study = optuna.load_study(study_name=sweep, storage=env["ADIN_STUDY_STORAGE"])
    assert len(study.trials) == len(children) == 2
    if info["database"]:
        assert env["ADIN_STUDY_STORAGE"] == f"postgresql+psycopg2://postgres@127.0.0.1:5432/{info['database']}_optuna"
        assert env["MLFLOW_TRACKING_URI"].startswith("http://127.0.0.1:")  # the server, on <database>_mlflow
        assert {f"{info['database']}_mlflow", f"{info['database']}_optuna"} <= _pg_databases()
    else:
        print("\nno PostgreSQL on 127.0.0.1:5432 here: the cluster used SQLite (the PostgreSQL path was not run)")


@pytest.mark.slow
@pytest.mark.rehearsal
def test_cancelled_job_leaves_nothing_and_the_next_starts_at_once(local_cluster):
    state, env = local_cluster

    def train_workers() -> int:
        return len(_ray_list(env, "actors", "class_name=RayTrainWorker", "state=ALIVE"))

    sub = _submit(state, env, "--name", "smoke-cancelled", wait=False)
    job_id = _job_id(sub)
    wait_for(lambda: train_workers() >= 2, 240)  # a trial is training
    t0 = time.perf_counter()
    stop = subprocess.run(
        ["ray", "job", "stop", job_id], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert stop.returncode == 0, stop.stderr
    stop_s = time.perf_counter() - t0

    ray_job = next(j["job_id"] for j in _ray_list(env, "jobs") if j.get("submission_id") == job_id)
    left: dict[str, list] = {}

    def nothing_left() -> bool:  # of the cancelled job (other jobs may share the cluster)
        left["pgs"] = [
            p
            for p in _ray_list(env, "placement-groups")
            if p.get("creator_job_id") == ray_job and p["state"] in ("CREATED", "PENDING", "RESCHEDULING")
        ]
        left["actors"] = [
            a["class_name"]
            for a in _ray_list(env, "actors", "state=ALIVE")
            if a.get("job_id") == ray_job and not a.get("is_detached")
        ]
        return not left["pgs"] and not left["actors"]

    try:
        cleaned_s = wait_for(nothing_left, 60)
    except BaseException:
        print(f"left of job {ray_job}: {left}")
        raise
    t1 = time.perf_counter()
    nxt = _submit(state, env, "--name", "smoke-after-cancel", "--num-samples", "1", wait=False)
    next_job = _job_id(nxt)
    try:
        started_s = wait_for(lambda: train_workers() >= 2, 120)
    finally:
        subprocess.run(["ray", "job", "stop", next_job], cwd=REPO, env=env, capture_output=True, timeout=120)
    print(
        f"\njob stop {stop_s:.1f} s; no placement group or job actor left {cleaned_s:.1f} s later; "
        f"the next sweep's workers ran {started_s:.1f} s after its submission (submitted {t1 - t0:.1f} s "
        "after the stop)"
    )


# --- faults while a sweep runs on the cluster ------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.rehearsal
def test_killed_train_worker_resumes_from_its_last_checkpoint(local_cluster):
    state, env = local_cluster
    sweep = "smoke-worker-killed"
    job = _job_id(_submit(state, env, "--name", sweep, "--num-samples", "1", "--epochs", "8", wait=False))
    wait_for(lambda: _reported(env, sweep) >= 2, 300, "two reports")
    time.sleep(1.0)  # some steps past the checkpoint of the last report
    (victim,) = [a for a in _ray_list(env, "actors", "class_name=RayTrainWorker", "state=ALIVE") if a.get("pid")][-1:]
    t_kill = time.perf_counter()
    os.kill(victim["pid"], signal.SIGKILL)
    status = _wait_job(env, job, 600)
    assert status == "SUCCEEDED", _job_logs(env, job)[-4000:]
    parent, (child,) = _sweep_runs(env, sweep)
    m = child.data.metrics
    assert m["faults/restarts"] >= 1 and m["final"] == 1.0 and child.info.status == "FINISHED"
    assert m["faults/resumed_from_step"] > 0  # from a checkpoint, not from scratch
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    history = client.get_metric_history(child.info.run_id, "step")
    steps_per_epoch = max(h.value for h in history) / 8
    print(
        f"\nworker pid {victim['pid']} killed ({len(history)} reports in all): resumed from step "
        f"{m['faults/resumed_from_step']:.0f}, {m['faults/redone_steps']:.0f} steps redone "
        f"({m['faults/redone_steps'] / steps_per_epoch:.2f} epochs); job finished {time.perf_counter() - t_kill:.0f} s "
        "after the kill"
    )


@pytest.mark.slow
@pytest.mark.rehearsal
def test_lost_worker_node_trials_are_retried_and_the_sweep_finishes(local_cluster):
    state, env = local_cluster
    sweep = "smoke-node-lost"
    worker_node = next(n["node_id"] for n in _ray_list(env, "nodes", "state=ALIVE") if not n["is_head_node"])
    # one 0.6-CPU worker per trial: two trials run at once only one per node, so one is on the worker node;
    # no early stopping and 40 epochs, so that trial is still training when its node goes (with 8, both trials of
    # the smoke space ended within 14 s on an idle 2-core machine, before the node was removed)
    job = _job_id(
        _submit(
            state,
            env,
            "--name",
            sweep,
            "--num-samples",
            "2",
            "--max-concurrent",
            "2",
            "--workers",
            "1",
            "--cpus-per-worker",
            "0.6",
            "--scheduler",
            "none",
            "--epochs",
            "40",
            wait=False,
        )
    )

    def training_on_worker_node() -> bool:  # a one-worker trial trains in its Tune trial's own actor
        return _reported(env, sweep) >= 2 and any(
            a.get("node_id") == worker_node for a in _ray_list(env, "actors", "class_name=ImplicitFunc", "state=ALIVE")
        )

    wait_for(training_on_worker_node, 300, "a trial training on the worker node")
    t_kill = time.perf_counter()
    cluster = [sys.executable, os.path.join(REPO, "cluster", "local", "cluster.py")]
    try:
        subprocess.run([*cluster, "remove-worker", "--state", state], check=True, timeout=120)
        status = _wait_job(env, job, 600)
        finished_s = time.perf_counter() - t_kill
    finally:
        subprocess.run([*cluster, "add-worker", "--state", state], check=True, timeout=400)  # for later tests
    assert status == "SUCCEEDED", _job_logs(env, job)[-4000:]
    parent, children = _sweep_runs(env, sweep)
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert all(c.data.tags["adin.checkpoint"].startswith(f"s3://adin-sweeps/sweeps/{sweep}/") for c in children)
    restarted = [c for c in children if c.data.metrics.get("faults/restarts", 0) >= 1]
    assert restarted, [c.data.metrics for c in children]
    m = restarted[0].data.metrics
    print(
        f"\nworker node killed; {len(restarted)} trial(s) restarted on the head (resumed from step "
        f"{m['faults/resumed_from_step']:.0f}, {m['faults/redone_steps']:.0f} steps redone); the sweep finished "
        f"{finished_s:.0f} s after the kill"
    )


@pytest.mark.slow
@pytest.mark.rehearsal
def test_two_sweeps_at_once_on_the_same_storage(local_cluster):
    """Submitted together, with default names, and both first to use a dataset (so both shard it at once)."""
    state, env = local_cluster
    data_root = "s3://adin-data/two-sweeps"
    subs = [_submit(state, env, "--num-samples", "1", "--data-root", data_root, wait=False) for _ in range(2)]
    jobs = [_job_id(s) for s in subs]
    statuses = [_wait_job(env, j, 600) for j in jobs]
    logs = [_job_logs(env, j) for j in jobs]
    assert statuses == ["SUCCEEDED", "SUCCEEDED"], [log[-3000:] for log in logs]
    names = [re.search(r"^sweep (\S+): ", log, re.M).group(1) for log in logs]
    assert len(set(names)) == 2, names
    checkpoints = set()
    for name in names:
        parent, children = _sweep_runs(env, name)
        assert parent is not None and parent.info.status == "FINISHED" and len(children) == 1
        uris = [c.data.tags["adin.checkpoint"] for c in children]
        assert all(u.startswith(f"s3://adin-sweeps/sweeps/{name}/") for u in uris)
        checkpoints |= set(uris)
        assert parent.data.tags["adin.best_checkpoint"] in uris
    assert len(checkpoints) == 2
    # the dataset both sharded at once: complete, and nothing on the store but the parts its manifest lists
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    from adin_core.data.datasets import SyntheticURI

    for domain in ("source", "select", "report"):
        spec = SyntheticURI.parse(f"synthetic:tiny/{domain}")
        prefix = f"two-sweeps/{spec.dataset}/{spec.version}/"
        keys = {o["Key"][len(prefix) :] for o in s3.list_objects_v2(Bucket="adin-data", Prefix=prefix)["Contents"]}
        manifest = json.loads(s3.get_object(Bucket="adin-data", Key=prefix + "manifest.json")["Body"].read())
        listed = {f["path"] for split in manifest["splits"].values() for f in split["files"]}
        assert keys - {"manifest.json"} == listed, (domain, keys, listed)
    print(
        f"\ntwo sweeps at once: {names}, distinct runs and checkpoints; the dataset both sharded is "
        "complete, with no stray part"
    )
