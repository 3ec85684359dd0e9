"""The sweep's Ray: a local one bound to this sweep, or the cluster it is submitted to, checked before Tune starts.

Bound: a local Ray is started with its own dashboard port, and `RAY_API_SERVER_ADDRESS` (the State API, which Ray
Train uses to clean up a finished trial's placement group) points every process of the sweep at it. Without this,
another Ray on the same host (a notebook's `ray.init()`, the local cluster) makes that cleanup fail ("Found
multiple active Ray instances"), finished trials keep their CPUs, and the next trials wait for ever.

Checked: an address that does not answer is an error within seconds, and a trial that no node could ever hold
(more CPUs or GPUs per worker than any node has, or more in all than the cluster has) is refused before the
sweep starts, unless the cluster autoscales (`--wait-for-resources`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from typing import Any

import ray
from ray import tune
from ray._private import services
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.execution import class_cache
from ray.tune.logger import JsonLoggerCallback
from ray.util.state import list_placement_groups
from ray.util.state.exception import RayStateApiException

from orchestrator.net import free_port
from orchestrator.plan import PlanError, SweepPlan

TRIAL_DRIVER_RESOURCES = {"cpu": 0.01}  # a trial's (or stage's) own process only waits on its TorchTrainer
MAX_WORKER_FAILURES = 2  # Train restarts a run's worker group this often from its last checkpoint


CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
FORWARDED_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_EC2_METADATA_DISABLED",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S",
    "TUNE_FUNCTION_THREAD_TIMEOUT_S",
)


def forwarded_env(plan: SweepPlan) -> dict[str, str]:
    """What the workers need from this environment, through Ray's runtime env. A local Ray's processes inherit this
    environment, so nothing is passed then. Joining a cluster, endpoints and settings are passed, except those a
    job's own runtime env sets (Ray refuses conflicting keys); credentials only from a client outside the cluster
    (--ray-address), with a note, since Ray writes runtime envs into its logs on the nodes. Inside a job they come
    from the job's runtime env or the nodes' own credentials."""
    if not plan.ray_address:
        return {}
    job_env = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}").get("runtime_env", {}) or {}
    in_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
    out = {
        k: os.environ[k]
        for k in FORWARDED_ENV
        if k in os.environ and k not in job_env.get("env_vars", {}) and not (in_job and k in CREDENTIAL_ENV)
    }
    if any(k in out for k in CREDENTIAL_ENV):
        print(
            "note: the AWS credentials of this shell go to the cluster's workers in Ray's runtime env, which Ray "
            "writes to its logs on the nodes (runtime_env_agent.log); to keep them out, give the nodes their own "
            "(an instance role, IRSA or their environment) and unset them here",
            file=sys.stderr,
        )
    return out


def _keep_credentials_out_of_trial_runtime_envs() -> None:
    """Tune copies the driver's AWS credentials into every trial's runtime env (`ray.tune.execution.class_cache`
    ENV_VARS_TO_PROPAGATE), and Ray's runtime env agent writes each runtime env to its log in clear
    (`session_*/logs/runtime_env_agent.log`). The trials do not need the copy: a local Ray's processes inherit the
    driver's environment, and on a cluster the nodes' own credentials or the job's runtime env provide them (or
    `_forwarded_env`, from a client outside the cluster, which says so). tests/test_faults.py looks for the secret
    in everything a sweep on the S3 API writes."""
    class_cache.ENV_VARS_TO_PROPAGATE = frozenset(class_cache.ENV_VARS_TO_PROPAGATE) - set(CREDENTIAL_ENV)


def start(plan: SweepPlan, env_vars: dict[str, str]) -> dict[str, Any]:
    """ray.init, bound to this sweep; returns what to log about it."""
    _keep_credentials_out_of_trial_runtime_envs()
    if plan.ray_address:  # make_plan has checked that it answers
        ctx = ray.init(
            address=plan.ray_address,
            runtime_env={"env_vars": env_vars} if env_vars else None,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
        if ctx.dashboard_url and "RAY_API_SERVER_ADDRESS" not in os.environ:
            os.environ["RAY_API_SERVER_ADDRESS"] = f"http://{ctx.dashboard_url}"
        return {"ray": plan.ray_address}
    others = _other_local_rays()
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    # Ray 2.60 turns token authentication on for a new local cluster, and says so in a warning on every sweep. It
    # stays on; only the line goes. (Setting RAY_AUTH_MODE here instead is too late: Ray read it at import.)
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    # The raylet warns when more than 4x its startup concurrency (min(cores, num_cpus): 2 here) of Python workers
    # have started; a sweep's trials are several processes each (the trial's driver, Train's controller, its
    # workers), so 2 trials on 2 cores tripped it on every sweep. The raylet reads this at its start (a smoke sweep:
    # 2 warnings without, none with).
    os.environ.setdefault("RAY_worker_maximum_startup_concurrency", str(max(8, os.cpu_count() or 1)))
    os.environ["RAY_API_SERVER_ADDRESS"] = api
    # The dashboard serves the State API; without it a finished trial's resources can stay held. address="local":
    # always a Ray of the sweep's own, never one a user started on this host with `ray start` (ray.init would join
    # that one, and refuse num_cpus there).
    with _ray_processes_in_their_own_groups():
        ray.init(
            address="local",
            num_cpus=os.cpu_count(),
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=port,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            logging_level=logging.WARNING,
            runtime_env={"env_vars": {**local_train_env(), **env_vars, "RAY_API_SERVER_ADDRESS": api}},
        )
    note = (
        f"; another Ray runs on this host ({', '.join(sorted(others))}): not used, pass --ray-address to join it"
        if others
        else ""
    )
    return {"ray": f"a local Ray of its own, dashboard {api}{note}"}


def _other_local_rays() -> set[str]:
    """The GCS addresses of Ray instances already running on this host (a user's `ray start`, a notebook)."""
    try:
        return set(services.find_gcs_addresses())
    except Exception:  # pgrep missing or unreadable /proc: nothing to say
        return set()


@contextlib.contextmanager
def _ray_processes_in_their_own_groups():
    """Start a local Ray's processes (GCS, raylet, dashboard; the raylet's workers inherit its group) each in a
    process group of its own, not the driver's.

    A stop signal to the driver's process group (what `timeout`, a container runtime or a job scheduler send, and
    a terminal's Ctrl-C) must reach the driver alone: it then stops Tune gracefully, closes the runs and shuts Ray
    down. In the driver's group, Ray's GCS and raylet died of the same SIGTERM at once, and the driver could only
    fail a minute later ("Failed to connect to GCS"). Ray starts these processes through
    `ray._private.services.ConsolePopen` and offers no setting for their group; Python 3.11's `process_group`
    puts each in its own (they keep Ray's fate-sharing: they still die with the driver)."""
    original = services.ConsolePopen

    class OwnGroupPopen(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("process_group", 0)
            super().__init__(*args, **kwargs)

    services.ConsolePopen = OwnGroupPopen
    try:
        yield
    finally:
        services.ConsolePopen = original


LOCAL_HEALTH_CHECK_INTERVAL_S = "0.5"


def local_train_env() -> dict[str, str]:
    """Ray Train settings for a local Ray (a cluster keeps its own). Train's controller polls its workers every
    2 s by default, so each trial's start and end waited for the next poll; a local sweep's trials are one worker
    each and start by the dozen, so it polls every 0.5 s (2 trials a wave on 2 cores: 3.5 s less a wave, measured;
    one small call to one worker more per second). A value in the environment is kept."""
    key = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
    return {key: os.environ.get(key, LOCAL_HEALTH_CHECK_INTERVAL_S)}


def torch_trainer(
    plan: SweepPlan,
    loop,
    loop_config: dict[str, Any],
    name: str,
    callbacks: list,
    checkpoints_to_keep: int | None = None,
):
    """A Ray Train run on the trial's workers (gloo on CPU, NCCL on GPU) under the sweep's train-runs folder, named
    so that a restarted trial or stage finds its own run and continues from its last checkpoint."""
    res = plan.space.resources
    use_gpu = res.gpus_per_worker > 0
    storage_path, storage_fs = plan.layout.train_runs()
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=res.workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if use_gpu else {})},
        ),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            callbacks=callbacks,
            checkpoint_config=CheckpointConfig(num_to_keep=checkpoints_to_keep),
            failure_config=FailureConfig(max_failures=MAX_WORKER_FAILURES),
        ),
    )


def trains_in_process(plan: SweepPlan) -> bool:
    """Whether the plan's loops run in their Tune trial's own process (one worker) rather than in Ray Train's
    workers (orchestrator.loop_context says why)."""
    return plan.space.resources.workers == 1


def tune_run_config(plan: SweepPlan, name: str, path: str, fs, callbacks: list) -> tune.RunConfig:
    """The RunConfig of every Tune experiment a sweep runs (the search, the pretraining stages, the verification
    rounds): stored under the sweep's storage, quiet, results also as JSON, one retry of a failed trial. A trial
    that trains in its own process (one worker: orchestrator.loop_context) is also its own worker group, so Tune
    restarts it as often as Train would restart a worker group. Tune deletes no checkpoint: a one-worker trial keeps
    its own last `checkpoints_to_keep` (loop_context.TuneProcess says why), Ray Train its run's."""
    one_process = trains_in_process(plan)
    return tune.RunConfig(
        name=name,
        storage_path=path,
        storage_filesystem=fs,
        verbose=0,
        callbacks=[JsonLoggerCallback(), *callbacks],
        failure_config=tune.FailureConfig(max_failures=1 + (MAX_WORKER_FAILURES if one_process else 0)),
    )


def trial_resources(plan: SweepPlan) -> dict[str, float]:
    """What a trial's (or stage's) own Tune process asks of Ray: the worker's CPUs and GPUs when it trains itself
    (one worker), else next to nothing, since its TorchTrainer's workers ask for theirs."""
    r = plan.space.resources
    if trains_in_process(plan):
        return {"cpu": r.cpus_per_worker, **({"gpu": r.gpus_per_worker} if r.gpus_per_worker else {})}
    return dict(TRIAL_DRIVER_RESOURCES)


def trial_needs(plan: SweepPlan) -> dict[str, float]:
    r = plan.space.resources
    extra = 0.0 if trains_in_process(plan) else TRIAL_DRIVER_RESOURCES["cpu"]
    need = {"CPU": r.workers * r.cpus_per_worker + extra}
    if r.gpus_per_worker:
        need["GPU"] = r.workers * r.gpus_per_worker
    return need


def check_resources(plan: SweepPlan) -> None:
    """Refuse a trial no node or the whole cluster could hold (unless it autoscales: --wait-for-resources)."""
    r = plan.space.resources
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    per_node = {k: max((n["Resources"].get(k, 0.0) for n in nodes), default=0.0) for k in ("CPU", "GPU")}
    total = ray.cluster_resources()
    problems = []
    if r.cpus_per_worker > per_node["CPU"]:
        problems.append(f"{r.cpus_per_worker:g} CPUs per worker, but the largest node has {per_node['CPU']:g}")
    if r.gpus_per_worker > per_node["GPU"]:
        problems.append(
            f"{r.gpus_per_worker:g} GPUs per worker, but the largest node has {per_node['GPU']:g}"
            + (" (no GPU here)" if not per_node["GPU"] else "")
        )
    for key, amount in trial_needs(plan).items():
        if amount > total.get(key, 0.0) + 1e-9:
            problems.append(
                f"{amount:g} {key} for one trial ({r.workers} workers), but the cluster has {total.get(key, 0.0):g}"
            )
    if not problems:
        return
    if plan.wait_for_resources:
        print(
            f"warning: the cluster cannot hold a trial yet ({'; '.join(problems)}); waiting for the autoscaler "
            "(--wait-for-resources)",
            flush=True,
        )
        return
    raise PlanError(
        f"resources: {'; '.join(problems)}. Lower --workers/--cpus-per-worker/--gpus-per-worker, or "
        "pass --wait-for-resources if the cluster autoscales"
    )


def waiting_reason(plan: SweepPlan) -> str | None:
    """Why trials may not be reporting: placement groups (Train's worker groups) waiting for resources, with what
    one trial needs against what is free; None when nothing waits (the trials are training to their first report).
    """
    try:
        pending = list_placement_groups(filters=[("state", "=", "PENDING")], timeout=5, raise_on_missing_output=False)
    except (RayStateApiException, ConnectionError, TimeoutError) as exc:
        return f"the State API did not answer ({type(exc).__name__}); cannot tell"
    if not pending:
        return None
    need, free = trial_needs(plan), ray.available_resources()
    return (
        f"{len(pending)} worker group(s) wait for resources: one trial needs "
        + ", ".join(f"{v:g} {k}" for k, v in need.items())
        + "; free now: "
        + ", ".join(f"{free.get(k, 0.0):g} {k}" for k in need)
    )
