"""MLflow tracking of a sweep: one experiment per space, a parent run per sweep, a child run per trial.

Trials are logged from the sweep driver by a Tune callback, not from the workers: workers never need to reach
the tracking server, and credentials stay in one process. A trial that restarts (a resumed sweep, a retried
trial) finds its child run by its Tune trial id and continues it, so no trial appears twice.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import urllib.request
from typing import Any

from ray.tune import Callback

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


def redact(params: dict[str, Any]) -> dict[str, Any]:
    """Drop anything that looks like a secret before it reaches MLflow."""
    return {k: v for k, v in params.items() if not SECRET_PATTERN.search(k)}


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

    def __init__(self, tracking_uri: str, experiment: str, sweep: str) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
        self.sweep = sweep
        runs = self.client.search_runs([self.experiment_id],
                                       f"tags.`{SWEEP_TAG}` = '{sweep}' and tags.`{ROLE_TAG}` = 'sweep'")
        if runs:
            self.parent_id = runs[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
            self.resumed = True
        else:
            run = self.client.create_run(self.experiment_id, run_name=sweep,
                                         tags={SWEEP_TAG: sweep, ROLE_TAG: "sweep"})
            self.parent_id = run.info.run_id
            self.resumed = False

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.parent_id).data.params
        new = [Param(k, str(v)[:6000]) for k, v in redact(params).items() if k not in existing]
        for i in range(0, len(new), 100):
            self.client.log_batch(self.parent_id, params=new[i:i + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in redact(tags).items():
            self.client.set_tag(self.parent_id, k, str(v))

    def log_metrics(self, metrics: dict[str, float], run_id: str | None = None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, 0) for k, v in metrics.items()]
        for i in range(0, len(batch), 500):
            self.client.log_batch(run_id or self.parent_id, metrics=batch[i:i + 500])

    def log_artifact(self, path: str, artifact_path: str | None = None, run_id: str | None = None) -> None:
        self.client.log_artifact(run_id or self.parent_id, path, artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.parent_id, status)


class MLflowTrialCallback(Callback):
    """Tune callback: a child run per trial (params, per-report metrics, checkpoint path, status)."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_id: str, sweep: str,
                 fixed_params: dict[str, Any], storage_root: str) -> None:
        self.tracking_uri, self.experiment_id, self.parent_id = tracking_uri, experiment_id, parent_id
        self.sweep, self.fixed_params, self.storage_root = sweep, fixed_params, storage_root
        self._runs: dict[str, str] = {}
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
        return state

    def _run_for(self, trial) -> str:
        tid = trial.trial_id
        if tid in self._runs:
            return self._runs[tid]
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
            from mlflow.entities import Param

            params = redact({**self.fixed_params, **_sampled(trial.config)})
            batch = [Param(k, str(v)) for k, v in params.items()]
            for i in range(0, len(batch), 100):
                self.client.log_batch(run_id, params=batch[i:i + 100])
        self._runs[tid] = run_id
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._run_for(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        from mlflow.entities import Metric

        run_id = self._run_for(trial)
        step = int(result.get("training_iteration", 0))
        ts = int(time.time() * 1000)
        metrics = [Metric(k.replace("@", "_"), float(v), ts, step) for k, v in result.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and _is_trial_metric(k)]
        for i in range(0, len(metrics), 500):
            self.client.log_batch(run_id, metrics=metrics[i:i + 500])
        if result.get("checkpoint_path"):
            from orchestrator.storage import checkpoint_uri

            self.client.set_tag(run_id, "checkpoint_uri", checkpoint_uri(result["checkpoint_path"], self.storage_root))
        if "phase" in result:
            self.client.set_tag(run_id, "phase", result["phase"])

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.client.set_terminated(self._run_for(trial), "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.client.set_terminated(self._run_for(trial), "FAILED")


def _sampled(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_")}


_TUNE_BOOKKEEPING = {"timestamp", "time_this_iter_s", "time_total_s", "pid", "time_since_restore",
                     "iterations_since_restore", "done", "training_iteration"}


def _is_trial_metric(key: str) -> bool:
    return key not in _TUNE_BOOKKEEPING and not key.startswith(("config/", "date", "hostname", "node_ip"))
