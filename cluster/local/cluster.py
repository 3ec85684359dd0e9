"""A real, small cluster on this machine, on 127.0.0.1 only: `bash cluster/local/up.sh`, `bash cluster/local/down.sh`.

up starts
  * a Ray head and a second Ray worker node (two raylets: a real multi-node cluster), both on 127.0.0.1 (Ray binds
    every server of a node to loopback only when the node's address is 127.0.0.1; the worker node is started by
    `ray_node.py`, see there why), token-authenticated, every Ray port chosen free (Ray's fixed defaults, such as
    the dashboard agent's 52365, collide with any other Ray);
  * an S3-API endpoint (moto_server, from the `cluster` extra) with the buckets `adin-data`, `adin-sweeps` and
    `adin-mlflow`;
  * two databases of its own, uniquely named, in the PostgreSQL on 127.0.0.1:5432 (a real multi-writer store, as on
    a cloud cluster): <name>_mlflow for MLflow's backend store, <name>_optuna for the Optuna studies (each keeps its
    schema version in its own `alembic_version` table, so they cannot share one); SQLite where none answers;
  * an MLflow tracking server on that database, artifacts proxied into the bucket `adin-mlflow`;
and says "cluster up" only once a test job has gone through `ray job submit`. A `ray start` that exits early is
reported at once, with its log. It records each process id in <state>/pids.json and writes <state>/env.sh
(endpoints, token and the S3 credentials, mode 0600; source it) and <state>/runtime_env.json (what a job needs) for
`ray job submit`. The S3 credentials reach the Ray nodes through their own environment, never a job's runtime env:
Ray writes runtime envs to its logs (`runtime_env_agent.log`).
down stops exactly the processes up recorded (by process id), the worker node first, drops the databases and
removes env.sh and runtime_env.json.

Lifetime: the cluster is a rehearsal stage. The S3 endpoint keeps its objects in memory and the databases are
dropped at down: sweeps, MLflow runs and their artifacts go with it. Export what you want to keep first
(`python -m orchestrator.best --export DIR`).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

from orchestrator.net import free_port, port_open

# Both nodes on 127.0.0.1, in Ray's single-machine mode: in multi-node mode Ray replaces 127.0.0.1 with the
# machine's routed address, and with any other address (127.0.0.2, say) it binds its servers to every interface.
NODE_IP = "127.0.0.1"
RAY_MODE = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
STATE = os.environ.get("ADIN_CLUSTER_STATE", os.path.join("runs", "cluster"))
BUCKETS = ("adin-data", "adin-sweeps", "adin-mlflow")
ACCESS_KEY, SECRET_KEY = "adin-local", "adin-local-secret"  # moto accepts any; local cluster only


RAY_PORT_FLAGS = (
    "--node-manager-port",
    "--object-manager-port",
    "--metrics-export-port",
    "--runtime-env-agent-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
)
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


class ClusterError(RuntimeError):
    """A part of the cluster did not come up; the message names it (and its log)."""


def wait_until(check, what: str, timeout: float = 120.0, *, pid: int | None = None, log: str | None = None) -> None:
    """Until `check()` holds; a process `pid` that exits meanwhile is reported at once, with the end of its log."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        if pid is not None and not _alive(pid):
            tail = open(log).read()[-2000:] if log and os.path.exists(log) else ""
            raise ClusterError(f"{what} exited before coming up; its log ({log}) ends:\n{tail}")
        time.sleep(0.5)
    raise ClusterError(f"{what} did not come up within {timeout:.0f} s" + (f" (log: {log})" if log else ""))


def _ray_ports() -> list[str]:
    """Free ports for every port Ray would otherwise take by default, for one node."""
    args: list[str] = []
    for flag in RAY_PORT_FLAGS:
        args += [flag, str(free_port())]
    return args  # worker processes: random ports (Ray's choice when no range is given)


def _pg_connect(dbname: str = "postgres"):
    import psycopg2

    conn = psycopg2.connect(dbname=dbname, connect_timeout=3, **PG)
    conn.autocommit = True
    return conn


STORES = ("mlflow", "optuna")  # one database each: MLflow's and Optuna's migrations both own `alembic_version`


def create_database(state: str) -> str | None:
    """The cluster's own databases in the local PostgreSQL, <name>_mlflow and <name>_optuna; returns <name> (None,
    with a note, where none answers)."""
    try:
        conn = _pg_connect()
    except ImportError:
        print('note: psycopg2 is missing (pip install -e ".[cluster]"); MLflow and Optuna use SQLite files')
        return None
    except Exception as exc:  # psycopg2.OperationalError: no server, refused, auth
        print(
            f"note: no PostgreSQL at {PG['host']}:{PG['port']} ({str(exc).strip()[:120]}); MLflow and Optuna use "
            "SQLite files"
        )
        return None
    name = f"adin_cluster_{secrets.token_hex(4)}"
    # not `with conn`: since psycopg2 2.9 it opens a transaction even in autocommit, and CREATE DATABASE refuses one
    try:
        with conn.cursor() as cur:
            for store in STORES:
                cur.execute(f'CREATE DATABASE "{name}_{store}"')
    finally:
        conn.close()
    return name


def drop_database(name: str) -> None:
    conn = _pg_connect()
    try:
        with conn.cursor() as cur:
            for store in STORES:
                cur.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (f"{name}_{store}",)
                )
                cur.execute(f'DROP DATABASE IF EXISTS "{name}_{store}"')
    finally:
        conn.close()


def _db_url(state: str, database: str | None, what: str) -> str:
    if database:
        # the driver named: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which .[cluster] does not bring
        return f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{database}_{what}"
    return f"sqlite:///{state}/{what}.db"


def _start(cmd: list[str], log: str, env: dict[str, str]) -> int:
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc.pid


def _exe(name: str) -> str:
    return shutil.which(name) or os.path.join(os.path.dirname(sys.executable), name)


def up(state: str, head_cpus: float, worker_cpus: float) -> dict:
    if os.path.exists(os.path.join(state, "pids.json")):
        raise SystemExit(f"{state}/pids.json exists: a cluster is up (run down.sh first)")
    if not shutil.which("moto_server") and not os.path.exists(_exe("moto_server")):
        raise SystemExit('moto_server is missing: pip install -e ".[cluster]"')
    os.makedirs(state, exist_ok=True)
    state = os.path.abspath(state)
    ports = {
        "s3": free_port(),
        "mlflow": free_port(),
        "gcs": free_port(),
        "dashboard": free_port(),
        "client": free_port(),
    }
    token = secrets.token_hex(32)
    ray_tmp = tempfile.mkdtemp(prefix="adinray", dir="/tmp")  # short: Ray's socket paths are length-limited
    s3 = f"http://127.0.0.1:{ports['s3']}"
    aws = {
        "AWS_ENDPOINT_URL": s3,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    # the nodes' environment: every job and worker of the cluster inherits the credentials from its raylet
    env = dict(
        os.environ, **RAY_MODE, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, AWS_EC2_METADATA_DISABLED="true", **aws
    )
    pids: dict[str, int] = {}
    info = {"ports": ports, "ray_tmp": ray_tmp, "pids": pids, "token": token, "database": None}
    try:
        info["database"] = create_database(state)
        tracking_db, study_db = _db_url(state, info["database"], "mlflow"), _db_url(state, info["database"], "optuna")
        info["study_storage"] = study_db
        log = os.path.join(state, "s3.log")
        pids["s3"] = _start([_exe("moto_server"), "-H", "127.0.0.1", "-p", str(ports["s3"])], log, env)
        wait_until(lambda: port_open(ports["s3"]), "moto_server", 60, pid=pids["s3"], log=log)
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=s3,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )
        for b in BUCKETS:
            client.create_bucket(Bucket=b)
        mlflow_env = dict(env, MLFLOW_S3_ENDPOINT_URL=s3, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        log = os.path.join(state, "mlflow.log")
        pids["mlflow"] = _start(
            [
                _exe("mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(ports["mlflow"]),
                "--backend-store-uri",
                tracking_db,
                "--artifacts-destination",
                "s3://adin-mlflow/artifacts",
                "--workers",
                "1",
            ],
            log,
            mlflow_env,
        )
        head_log = os.path.join(state, "ray_head.log")
        pids["ray_head"] = _start(
            [
                _exe("ray"),
                "start",
                "--head",
                "--block",
                "--node-ip-address",
                NODE_IP,
                "--port",
                str(ports["gcs"]),
                "--dashboard-host",
                "127.0.0.1",
                "--dashboard-port",
                str(ports["dashboard"]),
                "--include-dashboard",
                "true",
                "--ray-client-server-port",
                str(ports["client"]),
                *_ray_ports(),
                "--num-cpus",
                str(head_cpus),
                "--temp-dir",
                ray_tmp,
            ],
            head_log,
            env,
        )
        wait_until(lambda: port_open(ports["dashboard"]), "the Ray head", 180, pid=pids["ray_head"], log=head_log)
        info["worker_cpus"] = worker_cpus
        _start_worker(state, info, env)
        wait_until(lambda: _mlflow_ok(ports["mlflow"]), "the MLflow server", 120, pid=pids["mlflow"], log=log)
        _round_trip(state, info, env)
    except BaseException:
        _write(state, info)
        down(state)
        raise
    exports = {
        "RAY_ADDRESS": f"http://127.0.0.1:{ports['dashboard']}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        **RAY_MODE,
        "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{ports['dashboard']}",
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['mlflow']}",
        "ADIN_STUDY_STORAGE": study_db,
        **aws,
    }
    with open(os.path.join(state, "env.sh"), "w") as fh:
        os.chmod(fh.name, 0o600)
        fh.write("".join(f"export {k}={v}\n" for k, v in exports.items()))
    # no credential here (the nodes have them): Ray logs a job's runtime env
    runtime_env = {
        "env_vars": {
            "AWS_ENDPOINT_URL": s3,
            "MLFLOW_TRACKING_URI": exports["MLFLOW_TRACKING_URI"],
            "ADIN_STORAGE": "s3://adin-sweeps/sweeps",
            "ADIN_DATA_ROOT": "s3://adin-data/datasets",
            "ADIN_STUDY_STORAGE": study_db,
            "AWS_EC2_METADATA_DISABLED": "true",
            "RAY_API_SERVER_ADDRESS": exports["RAY_API_SERVER_ADDRESS"],
        }
    }
    with open(os.path.join(state, "runtime_env.json"), "w") as fh:
        os.chmod(fh.name, 0o600)
        json.dump(runtime_env, fh)
    _write(state, info)
    return info


def _ray_env(info: dict) -> dict[str, str]:
    """The environment the cluster's Ray nodes run with (what up gave them)."""
    aws = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{info['ports']['s3']}",
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    return dict(
        os.environ,
        **RAY_MODE,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=info["token"],
        AWS_EC2_METADATA_DISABLED="true",
        **aws,
    )


def _start_worker(state: str, info: dict, env: dict[str, str]) -> None:
    gcs = info["ports"]["gcs"]
    wait_until(lambda: _nodes(gcs, env) == 1, "the head to see no other node", 120)  # a removed one is gone
    log = os.path.join(state, "ray_worker.log")
    ports = _ray_ports()
    ports[ports.index("--dashboard-agent-grpc-port")] = "--metrics-agent-port"  # the same port, RayParams' name
    info["pids"]["ray_worker"] = _start(
        [
            sys.executable,
            os.path.join(os.path.dirname(os.path.abspath(__file__)), "ray_node.py"),
            "--address",
            f"{NODE_IP}:{gcs}",
            *ports,
            "--num-cpus",
            str(info["worker_cpus"]),
        ],
        log,
        env,
    )
    wait_until(lambda: _nodes(gcs, env) == 2, "the second Ray node", 180, pid=info["pids"]["ray_worker"], log=log)


def _round_trip(state: str, info: dict, env: dict[str, str]) -> None:
    """A test job through the job API (dashboard, its agents, a driver on the cluster): what `ray job submit`
    needs. "cluster up" is said only after it succeeded."""
    out = subprocess.run(
        [
            _exe("ray"),
            "job",
            "submit",
            "--address",
            f"http://127.0.0.1:{info['ports']['dashboard']}",
            "--",
            sys.executable,
            "-c",
            "import ray; ray.init(); print('adin-cluster-ok')",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if out.returncode != 0 or "adin-cluster-ok" not in out.stdout:
        raise ClusterError(
            "a test job did not go through `ray job submit` (exit "
            f"{out.returncode}): {(out.stdout + out.stderr)[-2000:]}"
        )


def remove_worker(state: str) -> None:
    """Kill the worker node outright (its `ray start` and every process of its session, SIGKILL): a machine lost
    mid-sweep. The head, S3 and MLflow stay up."""
    info = json.load(open(os.path.join(state, "pids.json")))
    pid = info["pids"].pop("ray_worker", None)
    if pid is None:
        raise SystemExit("no worker node is recorded")
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    wait_until(lambda: not _alive(pid), f"process {pid} to exit", 30)
    _write(state, info)


def _alive(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def add_worker(state: str) -> None:
    """Start the worker node again (after remove-worker)."""
    info = json.load(open(os.path.join(state, "pids.json")))
    if "ray_worker" in info["pids"]:
        raise SystemExit("a worker node is already recorded")
    _start_worker(state, info, _ray_env(info))
    _write(state, info)


def _write(state: str, info: dict) -> None:
    with open(os.path.join(state, "pids.json"), "w") as fh:
        os.chmod(fh.name, 0o600)  # holds the cluster's token
        json.dump(info, fh, indent=1)


def _nodes(gcs_port: int, env: dict[str, str]) -> int:
    out = subprocess.run(
        [_exe("ray"), "status", "--address", f"{NODE_IP}:{gcs_port}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    section = out.split("Active:", 1)[-1].split("Pending:", 1)[0]
    return sum(1 for line in section.splitlines() if line.strip().startswith("1 node_"))


def _mlflow_ok(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
        return r.status == 200


def _stop(pid: int, grace: float) -> None:
    """SIGTERM to the process we started (`ray start --block` then stops its own children), then whatever is left
    of its process group (it leads its own session) is killed."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + grace
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def down(state: str) -> None:
    path = os.path.join(state, "pids.json")
    if not os.path.exists(path):
        print(f"no cluster recorded in {state}")
        return
    info = json.load(open(path))
    for name in ("ray_worker", "ray_head", "mlflow", "s3"):
        if name in info["pids"]:
            _stop(info["pids"][name], grace=45 if name.startswith("ray") else 10)
    shutil.rmtree(info.get("ray_tmp", ""), ignore_errors=True)
    if info.get("database"):
        drop_database(info["database"])
    for name in ("env.sh", "runtime_env.json"):
        if os.path.exists(os.path.join(state, name)):
            os.remove(os.path.join(state, name))
    os.remove(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["up", "down", "remove-worker", "add-worker"])
    ap.add_argument("--state", default=STATE)
    ap.add_argument("--head-cpus", type=float, default=1)
    ap.add_argument("--worker-cpus", type=float, default=1)
    args = ap.parse_args()
    if args.command == "up":
        try:
            info = up(args.state, args.head_cpus, args.worker_cpus)
        except ClusterError as exc:
            raise SystemExit(f"error: {exc}\nnothing is left running (down was run)") from None
        db = info["database"] and f"PostgreSQL databases {info['database']}_{{mlflow,optuna}}" or "SQLite files"
        print(
            f"cluster up: Ray dashboard http://127.0.0.1:{info['ports']['dashboard']} (2 nodes), "
            f"S3 http://127.0.0.1:{info['ports']['s3']}, MLflow http://127.0.0.1:{info['ports']['mlflow']}, "
            f"MLflow and Optuna store: {db}; a test job went through `ray job submit`"
        )
        print("lifetime: everything here (S3 objects, runs, studies) goes at down.sh; export winners first")
        print(
            f"use it:  source {args.state}/env.sh && ray job submit --runtime-env-json "
            f'"$(cat {args.state}/runtime_env.json)" -- python -m orchestrator.sweep --space search_spaces/smoke.yaml'
        )
    elif args.command == "remove-worker":
        remove_worker(args.state)
        print("worker node killed")
    elif args.command == "add-worker":
        add_worker(args.state)
        print("worker node up")
    else:
        down(args.state)
        print("cluster down")


if __name__ == "__main__":
    main()
