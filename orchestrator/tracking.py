"""MLflow tracking of a sweep: one experiment per space, a parent run per sweep, a child run per trial.

Trials are logged from the sweep driver by a Tune callback, not from the workers: workers never need to reach
the tracking server, and credentials stay in one process. A trial that restarts (a resumed sweep, a retried
trial) finds its child run by its Tune trial id and continues it, so no trial appears twice.

A tracking server that goes away mid-sweep must not stall the sweep: the callback queues its writes, retries
them with backoff on later events (never blocking Tune's loop for long), writes them in order once the server is
back, and records the outage on the parent run (`adin.faults`). The parent run's own writes retry within the
sweep's retry budget.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import subprocess
import time
import urllib.request
from typing import Any, Callable

from ray.tune import Callback

from orchestrator.retry import Backoff, call_with_backoff

SECRET_PATTERN = re.compile(r"(secret|password|token|access_key|credential)", re.IGNORECASE)
SWEEP_TAG = "adin.sweep"
TRIAL_TAG = "adin.trial_id"
ROLE_TAG = "adin.role"


class TrackingError(RuntimeError):
    """The tracking server cannot be used; the message names the URI."""


def check_tracking_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (seconds, not minutes of retries) when an HTTP tracking server is down."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
                if resp.status != 200:
                    raise TrackingError(f"MLflow tracking server {uri} answered {resp.status} on /health")
        except OSError as exc:
            raise TrackingError(f"MLflow tracking server {uri} is unreachable: {exc}") from None
    elif uri.startswith("sqlite:///"):
        os.makedirs(os.path.dirname(os.path.abspath(uri[len("sqlite:///"):])) or ".", exist_ok=True)


def _healthy(uri: str) -> bool:
    try:
        check_tracking_uri(uri, timeout=3.0)
        return True
    except TrackingError:
        return False


def is_outage(uri: str, exc: BaseException) -> bool:
    """Whether a failed tracking call is worth retrying: the server does not answer (not: it refused the call)."""
    if isinstance(exc, (OSError, TrackingError)):
        return True
    return uri.startswith(("http://", "https://")) and not _healthy(uri)


def redact(params: dict[str, Any]) -> dict[str, Any]:
    """Drop anything that looks like a secret before it reaches MLflow."""
    return {k: v for k, v in params.items() if not SECRET_PATTERN.search(k)}


def log_batched(client, run_id: str, *, params: dict[str, Any] | None = None, metrics: list | None = None) -> None:
    """Params (redacted, values cut to MLflow's 6000 characters) and metrics in MLflow's batch-size limits."""
    from mlflow.entities import Param

    batch = [Param(k, str(v)[:6000]) for k, v in redact(params or {}).items()]
    for i in range(0, len(batch), 100):
        client.log_batch(run_id, params=batch[i:i + 100])
    metrics = metrics or []
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])


def code_version() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True,
                               timeout=5)
        if rev.returncode == 0:
            return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import version

    return f"adin-sweeps {version('adin-sweeps')}"


class SweepTracker:
    """The parent run of one sweep, found again by name on --resume."""

    def __init__(self, tracking_uri: str, experiment: str, sweep: str, backoff: Backoff | None = None) -> None:
        from mlflow.tracking import MlflowClient

        self.client = _RetryingClient(MlflowClient(tracking_uri), tracking_uri, backoff or Backoff())
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
        runs = self.client.search_runs([self.experiment_id],
                                       f"tags.`{SWEEP_TAG}` = '{sweep}' and tags.`{ROLE_TAG}` = 'sweep'")
        if runs:
            self.parent_id = runs[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
        else:
            run = self.client.create_run(self.experiment_id, run_name=sweep,
                                         tags={SWEEP_TAG: sweep, ROLE_TAG: "sweep"})
            self.parent_id = run.info.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        existing = self.client.get_run(self.parent_id).data.params  # a resumed sweep logged them already
        log_batched(self.client, self.parent_id, params={k: v for k, v in params.items() if k not in existing})

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in redact(tags).items():
            self.client.set_tag(self.parent_id, k, str(v))

    def log_metrics(self, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        log_batched(self.client, self.parent_id, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()])

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.parent_id, path, artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.parent_id, status)


class _RetryingClient:
    """An MlflowClient whose calls retry with backoff while the server is down (for the parent run's writes).

    The budget is spent once per outage: after a call gave up, later calls fail at once (TrackingError) while the
    server is still down, so a sweep whose tracking server never returns ends in one budget, not one per call.
    """

    def __init__(self, client, uri: str, backoff: Backoff) -> None:
        self._client, self._uri, self._backoff = client, uri, backoff
        self._gave_up = False

    def __getattr__(self, name: str):
        fn = getattr(self._client, name)
        if not callable(fn):
            return fn

        def call(*args, **kwargs):
            from mlflow.exceptions import MlflowException

            if self._gave_up and not _healthy(self._uri):
                raise TrackingError(f"MLflow tracking server {self._uri} is still unreachable")
            try:
                result = call_with_backoff(lambda: fn(*args, **kwargs), service="tracking", what=f"MLflow {name}",
                                           retry_on=(MlflowException, OSError),
                                           transient=lambda exc: is_outage(self._uri, exc), backoff=self._backoff)
            except (MlflowException, OSError) as exc:
                if not is_outage(self._uri, exc):
                    raise
                self._gave_up = True
                raise TrackingError(f"MLflow tracking server {self._uri} unreachable for "
                                    f"{self._backoff.budget_s:g} s ({name}): {exc}") from None
            self._gave_up = False
            return result
        return call


class MLflowTrialCallback(Callback):
    """Tune callback: a child run per trial (params, per-report metrics, checkpoint path, status).

    Writes go through a queue: while the server is down they wait (retried with backoff at later events), and
    they reach MLflow in order once it is back. The queue is part of the callback's state, which Tune saves with
    the sweep, so a sweep resumed after an outage still writes them.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_id: str, sweep: str,
                 fixed_params: dict[str, Any], storage_root: str, backoff: Backoff | None = None,
                 log: Callable[[str], None] = print) -> None:
        self.tracking_uri, self.experiment_id, self.parent_id = tracking_uri, experiment_id, parent_id
        self.sweep, self.fixed_params, self.storage_root = sweep, fixed_params, storage_root
        self.backoff = backoff or Backoff()
        self.log = log
        self._runs: dict[str, str] = {}
        self._pending: list[tuple] = []
        self._outage: dict[str, Any] | None = None
        self._next_try = 0.0
        self.outages: list[dict[str, Any]] = []
        self.trial_faults: dict[str, dict[str, float]] = {}
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def __getstate__(self) -> dict[str, Any]:  # Tune checkpoints callbacks; the client is rebuilt
        state = dict(self.__dict__)
        state["_client"] = None
        state["log"] = print
        return state

    _STATE = ("_runs", "_pending", "outages", "trial_faults")

    def get_state(self) -> dict[str, Any] | None:
        """Saved by Tune with the sweep: writes still queued (an outage) are sent by a resumed sweep."""
        return {k: getattr(self, k) for k in self._STATE}

    def set_state(self, state: dict[str, Any]) -> None:
        for k in self._STATE:
            setattr(self, k, state.get(k, getattr(self, k)))

    # --- the queue ---------------------------------------------------------------------------------------------
    def _submit(self, *op) -> None:
        self._pending.append(op)
        self.flush()

    def flush(self, wait: bool = False) -> bool:
        """Write queued ops in order; on an outage, stop and try again later (wait: keep trying, within the
        backoff budget). True when nothing is left."""
        from mlflow.exceptions import MlflowException

        waited = 0.0
        while self._pending:
            now = time.monotonic()
            if now < self._next_try:
                if not wait or waited + (self._next_try - now) > self.backoff.budget_s:
                    return False
                time.sleep(self._next_try - now)
                waited += self._next_try - now
            try:
                self._apply(self._pending[0])
            except (MlflowException, OSError) as exc:
                if not is_outage(self.tracking_uri, exc):
                    self.log(f"[tracking] dropped a write MLflow refused ({self._pending[0][0]}): {exc}")
                    self._pending.pop(0)
                    continue
                self._start_outage(exc)
                continue
            self._pending.pop(0)
        if self._outage is not None:
            self._end_outage()  # queues the outage's record for the parent run
            return self.flush(wait)
        return True

    def _start_outage(self, exc: BaseException) -> None:
        if self._outage is None:
            self._outage = {"service": "mlflow", "uri": self.tracking_uri, "attempts": 0,
                            "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                            "t0": time.monotonic(), "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            self.log(f"[tracking] MLflow at {self.tracking_uri} is unreachable; {len(self._pending)} write(s) "
                     "queued, retrying with backoff (trials go on)")
        delay = self.backoff.delay(self._outage["attempts"])
        self._outage["attempts"] += 1
        self._next_try = time.monotonic() + delay

    def _end_outage(self) -> None:
        outage, self._outage = self._outage, None
        seconds = time.monotonic() - outage.pop("t0")
        outage["seconds"] = round(seconds, 1)
        self.outages.append(outage)
        self.log(f"[tracking] MLflow is back after {seconds:.0f} s ({outage['attempts']} retries); queued writes "
                 "sent")
        self._pending.append(("parent_faults",))
        self._next_try = 0.0

    def _apply(self, op: tuple) -> None:
        kind, *args = op
        if kind == "run":
            self._open_run(*args)
        elif kind == "metrics":
            tid, metrics = args
            log_batched(self.client, self._runs[tid], metrics=metrics)
        elif kind == "tag":
            tid, key, value = args
            self.client.set_tag(self._runs[tid], key, value)
        elif kind == "end":
            tid, status = args
            self.client.set_terminated(self._runs[tid], status)
        elif kind == "parent_faults":
            self.client.set_tag(self.parent_id, "adin.faults", json.dumps(self.faults_summary()))
        else:
            raise ValueError(f"unknown tracking op {kind!r}")

    def _open_run(self, tid: str, params: dict[str, Any]) -> None:
        if tid in self._runs:
            return
        found = self.client.search_runs(
            [self.experiment_id],
            f"tags.`mlflow.parentRunId` = '{self.parent_id}' and tags.`{TRIAL_TAG}` = '{tid}'")
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            run = self.client.create_run(self.experiment_id, run_name=f"{self.sweep}/{tid}", tags={
                "mlflow.parentRunId": self.parent_id, TRIAL_TAG: tid, SWEEP_TAG: self.sweep, ROLE_TAG: "trial"})
            run_id = run.info.run_id
            log_batched(self.client, run_id, params=params)
        self._runs[tid] = run_id

    def faults_summary(self) -> dict[str, Any]:
        return {"tracking_outages": self.outages, "trials": self.trial_faults}

    # --- Tune events -------------------------------------------------------------------------------------------
    def _ensure_run(self, trial) -> None:
        if not any(op[0] == "run" and op[1] == trial.trial_id for op in self._pending) \
                and trial.trial_id not in self._runs:
            self._submit("run", trial.trial_id, redact({**self.fixed_params, **_sampled(trial.config)}))

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._ensure_run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        from mlflow.entities import Metric

        self._ensure_run(trial)
        tid = trial.trial_id
        step = int(result.get("training_iteration", 0))
        ts = int(time.time() * 1000)
        metrics = [Metric(k.replace("@", "_"), float(v), ts, step) for k, v in result.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and _is_trial_metric(k)]
        faults = {k: float(v) for k, v in result.items() if k.startswith("faults/") and v}
        if faults:
            self.trial_faults[tid] = faults
        ops: list[tuple] = [("metrics", tid, metrics)]
        if result.get("checkpoint_path"):
            from orchestrator.storage import checkpoint_uri

            ops.append(("tag", tid, "checkpoint_uri", checkpoint_uri(result["checkpoint_path"], self.storage_root)))
        if "phase" in result:
            ops.append(("tag", tid, "phase", result["phase"]))
        self._pending.extend(ops)
        self.flush()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._ensure_run(trial)
        self._submit("end", trial.trial_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._ensure_run(trial)
        self._submit("end", trial.trial_id, "FAILED")

    def on_step_end(self, iteration, trials, **info) -> None:
        if self._pending and time.monotonic() >= self._next_try:
            self.flush()

    def on_experiment_end(self, trials, **info) -> None:
        if self.trial_faults or self.outages:
            self._pending.append(("parent_faults",))  # the final summary
        if not self.flush(wait=True):
            self.log(f"[tracking] {len(self._pending)} write(s) could not reach MLflow at {self.tracking_uri} "
                     f"(down since {self._outage['since']}); the trials' results are kept in the sweep storage "
                     f"{self.storage_root}/{self.sweep}, and `--resume {self.sweep}` sends them")


def _sampled(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_")}


_TUNE_BOOKKEEPING = {"timestamp", "time_this_iter_s", "time_total_s", "pid", "time_since_restore",
                     "iterations_since_restore", "done", "training_iteration"}


def _is_trial_metric(key: str) -> bool:
    return key not in _TUNE_BOOKKEEPING and not key.startswith(("config/", "date", "hostname", "node_ip"))
