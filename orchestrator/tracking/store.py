"""MLflow writes of a sweep, through one queue with one outage policy, and the sweep's parent run.

Every write (the parent run's and every trial's) is a typed operation on a `TrackingQueue`. A writer thread applies
them in order, so a Tune callback only appends (microseconds) and never waits on MLflow. While the server does not
answer, the thread retries with backoff (trials go on; the writes wait, in order) and records the outage; a call
the server refuses is dropped with a log line instead of blocking the queue. Where the sweep needs its writes done
(the parent run at the start, everything at the end) it waits for the queue to drain, for at most one retry
budget; past it the sweep ends with a TrackingError naming the server. The queue's pending writes are part of the
Tune callback's saved state, so `--resume` sends what an outage kept back.

MLflow and SQLAlchemy are imported inside the functions that use them, on purpose: a trial's Ray workers import
this module through the plan and never write to MLflow (the import costs each process about two seconds).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any, Callable

from orchestrator.retry import Backoff, call_with_backoff
from orchestrator.tracking import schema

DEFAULT_TRACKING_URI = "sqlite:///runs/mlflow.db"  # the embedded default: an SQLite file beside the sweeps
SECRET_PATTERN = re.compile(r"(secret|password|token|access_key|credential)", re.IGNORECASE)
TRACKING_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "file")


class TrackingError(RuntimeError):
    """The tracking server cannot be used; the message names the URI."""


def check_tracking_uri(uri: str, timeout: float = 5.0, *, must_exist: bool = False) -> None:
    """Fail fast (seconds, not minutes of retries): an unknown scheme, a server or database that does not answer,
    a missing database driver, or an SQLite file that cannot be created or is not one. `must_exist`: a reader
    (`orchestrator.best`) needs the SQLite file to be there already (opening it would create an empty one)."""
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme.split("+")[0] not in TRACKING_SCHEMES:
        raise TrackingError(
            f"--tracking-uri {uri!r}: the scheme {scheme + '://' if scheme else '(none)'} is not one "
            "MLflow stores runs in; use sqlite:///FILE, http(s)://HOST:PORT or postgresql://..."
        )
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
                if resp.status != 200:
                    raise TrackingError(f"MLflow tracking server {uri} answered {resp.status} on /health")
        except OSError as exc:
            raise TrackingError(f"MLflow tracking server {uri} is unreachable: {exc}") from None
    elif scheme == "sqlite":
        path = uri[len("sqlite:///") :]
        folder = os.path.dirname(os.path.abspath(path)) or "."
        if must_exist and not os.path.isfile(path):
            raise TrackingError(f"--tracking-uri {uri}: no tracking database at {path} (did a sweep run with it?)")
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise TrackingError(f"--tracking-uri {uri}: cannot create {folder}: {exc.strerror or exc}") from None
        if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
            raise TrackingError(f"--tracking-uri {uri}: {path if os.path.exists(path) else folder} is not writable")
        _check_sqlite_file(uri, path)
    elif scheme.split("+")[0] in ("postgresql", "mysql"):
        _check_database(uri, timeout)


def _check_sqlite_file(uri: str, path: str) -> None:
    """An existing file must be an SQLite database (MLflow would fail on it only once Ray had started)."""
    if os.path.isdir(path):
        raise TrackingError(f"--tracking-uri {uri}: {path} is a folder; give an SQLite file")
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        with open(path, "rb") as fh:
            if fh.read(16) != b"SQLite format 3\x00":
                raise TrackingError(f"--tracking-uri {uri}: {path} is not an SQLite database")


def _check_database(uri: str, timeout: float) -> None:
    """A database URL must name an installed driver and answer within `timeout` (MLflow would wait minutes)."""
    import sqlalchemy  # deferred on purpose (module docstring)

    shown = without_password(uri)
    try:
        engine = sqlalchemy.create_engine(uri, connect_args={"connect_timeout": max(1, int(timeout))})
    except ModuleNotFoundError as exc:
        hint = " (postgresql+psycopg2://..., with pip install -e '.[cluster]')" if uri.startswith("postgresql") else ""
        raise TrackingError(
            f"--tracking-uri {shown}: its database driver is not installed ({exc}); name an installed one{hint}"
        ) from None
    except Exception as exc:  # a malformed URL
        raise TrackingError(f"--tracking-uri {shown}: not a database URL SQLAlchemy reads ({exc})") from None
    try:
        with engine.connect():
            pass
    except Exception as exc:  # refused, unknown host, authentication, no such database
        first = str(getattr(exc, "orig", exc)).strip().splitlines()[0][:200]
        raise TrackingError(f"MLflow tracking database {shown} is unreachable: {first}") from None
    finally:
        engine.dispose()


def without_password(uri: str) -> str:
    """A URL with its password (if any) as ***: fit to show or to store."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.password:
        netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@")
        return urllib.parse.urlunsplit(parsed._replace(netloc=netloc))
    return uri


def absolute_tracking_uri(uri: str) -> str:
    """sqlite:///relative.db -> sqlite:////absolute/relative.db: a resumed sweep or a Ray job in another working
    folder then finds the same store."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///") :])
    return uri


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
    from mlflow.entities import Param  # deferred on purpose (module docstring)

    batch = [Param(k, str(v)[:6000]) for k, v in redact(params or {}).items()]
    for i in range(0, len(batch), 100):
        client.log_batch(run_id, params=batch[i : i + 100])
    metrics = metrics or []
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])


def code_version() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
        if rev.returncode == 0:
            return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass

    return f"adin-sweeps {version('adin-sweeps')}"


# ------------------------------------------------------------------------------------------------------------
# operations: plain, picklable values (they are saved with the sweep while an outage holds them back)
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpenRun:
    """Find the run of `key` (the sweep, or a trial) by its tags, or create it: a resumed sweep or a restarted trial
    continues its own run. `params` are logged when the run is created."""

    key: str
    experiment_id: str
    name: str
    find: tuple[tuple[str, str], ...]  # tags that identify the run
    tags: tuple[tuple[str, str], ...] = ()
    params: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class LogParams:
    key: str
    params: tuple[tuple[str, str], ...]  # only those the run does not have yet (a resumed sweep logged them)


@dataclass(frozen=True)
class LogMetrics:
    key: str
    metrics: tuple[tuple[str, float, int, int], ...]  # (name, value, timestamp ms, step)


@dataclass(frozen=True)
class SetTags:
    key: str
    tags: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class LogArtifact:
    key: str
    path: str  # a local file that stays until the queue has drained
    artifact_path: str | None = None


@dataclass(frozen=True)
class LogInput:
    """A dataset as an MLflow input (fills the runs table's Dataset column)."""

    key: str
    name: str
    digest: str
    source: str
    context: str  # "training", "select", "report"


@dataclass(frozen=True)
class SetExperimentTag:
    experiment_id: str
    tag: str
    value: str
    key: str = ""  # not a run's


@dataclass(frozen=True)
class EndRun:
    key: str
    status: str  # FINISHED | FAILED | KILLED


@dataclass(frozen=True)
class RecordFaults:
    """The parent run's `adin.faults` tag, written from what the queue knows when it is applied."""

    key: str


Op = OpenRun | LogParams | LogMetrics | SetTags | LogArtifact | LogInput | EndRun | RecordFaults | SetExperimentTag


def items(mapping: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple((str(k), str(v)) for k, v in mapping.items())


# ------------------------------------------------------------------------------------------------------------
class TrackingQueue:
    """Tracking writes, applied in order by a writer thread, waiting out outages (see the module docstring)."""

    def __init__(self, uri: str, backoff: Backoff | None = None, log: Callable[[str], None] = print) -> None:
        self.uri, self.backoff, self.log = uri, backoff or Backoff(), log
        self.run_ids: dict[str, str] = {}
        self.outages: list[dict[str, Any]] = []
        self.trial_faults: dict[str, dict[str, float]] = {}
        self._pending: deque[Op] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._outage: dict[str, Any] | None = None
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient  # deferred on purpose (module docstring)

            self._client = MlflowClient(self.uri)
        return self._client

    # --- the caller's side ----------------------------------------------------------------------------------
    def submit(self, *ops: Op) -> None:
        """Queue writes; returns at once."""
        with self._cond:
            self._pending.extend(ops)
            self._cond.notify_all()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, daemon=True, name="mlflow-writer")
                self._thread.start()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued write is applied (True), or `timeout` seconds (default: the retry budget)."""
        deadline = time.monotonic() + (self.backoff.budget_s if timeout is None else timeout)
        with self._cond:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
        return True

    def write(self, *ops: Op, what: str) -> None:
        """Queue writes and wait for them (one retry budget); a TrackingError names the server otherwise."""
        self.submit(*ops)
        if not self.drain():
            raise TrackingError(
                f"MLflow tracking server {self.uri} unreachable for {self.backoff.budget_s:g} s "
                f"({what}); {len(self)} write(s) are kept with the sweep's state"
            )

    def __len__(self) -> int:
        with self._cond:
            return len(self._pending)

    @property
    def in_outage(self) -> dict[str, Any] | None:
        return self._outage

    def state(self) -> dict[str, Any]:
        with self._cond:
            return {
                "pending": list(self._pending),
                "run_ids": dict(self.run_ids),
                "outages": list(self.outages),
                "trial_faults": dict(self.trial_faults),
            }

    def restore(self, state: dict[str, Any]) -> None:
        """A resumed sweep takes over what its interrupted run had queued (writes an outage kept back)."""
        with self._cond:
            self.run_ids.update(state.get("run_ids", {}))
            self.outages = list(state.get("outages", [])) + self.outages
            self.trial_faults.update(state.get("trial_faults", {}))
            queued = [op for op in state.get("pending", []) if op not in self._pending]
            self._pending.extendleft(reversed(queued))
        if queued:
            self.submit()

    def faults_summary(self) -> dict[str, Any]:
        return {"tracking_outages": self.outages, "trials": self.trial_faults}

    # --- the writer thread ------------------------------------------------------------------------------------
    def _work(self) -> None:
        from mlflow.exceptions import MlflowException  # deferred on purpose (module docstring)

        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                op = self._pending[0]
            try:
                self._apply(op)
            except (MlflowException, OSError, KeyError) as exc:
                if isinstance(exc, KeyError) or not is_outage(self.uri, exc):
                    self.log(f"[tracking] dropped a write MLflow refused ({type(op).__name__}): {exc}")
                else:
                    self._wait_out(exc)
                    continue
            with self._cond:
                self._pending.popleft()
                self._cond.notify_all()
            if self._outage is not None:
                self._end_outage()

    def _wait_out(self, exc: BaseException) -> None:
        if self._outage is None:
            self._outage = {
                "service": "mlflow",
                "uri": self.uri,
                "attempts": 0,
                "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "t0": time.monotonic(),
                "error": f"{type(exc).__name__}: {str(exc)[:300]}",
            }
            self.log(
                f"[tracking] MLflow at {self.uri} is unreachable; {len(self)} write(s) queued, retrying with "
                "backoff (trials go on)"
            )
        time.sleep(self.backoff.delay(self._outage["attempts"]))
        self._outage["attempts"] += 1

    def _end_outage(self) -> None:
        outage, self._outage = self._outage, None
        seconds = time.monotonic() - outage.pop("t0")
        outage["seconds"] = round(seconds, 1)
        self.outages.append(outage)
        self.log(f"[tracking] MLflow is back after {seconds:.0f} s ({outage['attempts']} retries); queued writes sent")
        if "sweep" in self.run_ids:
            self.submit(RecordFaults("sweep"))

    def _apply(self, op: Op) -> None:
        c = self.client
        if isinstance(op, OpenRun):
            self._open(op)
            return
        if isinstance(op, SetExperimentTag):
            c.set_experiment_tag(op.experiment_id, op.tag, op.value)
            return
        run_id = self.run_ids[op.key]
        if isinstance(op, LogMetrics):
            from mlflow.entities import Metric  # deferred on purpose (module docstring)

            log_batched(c, run_id, metrics=[Metric(k.replace("@", "_"), v, ts, step) for k, v, ts, step in op.metrics])
        elif isinstance(op, LogParams):
            existing = c.get_run(run_id).data.params
            log_batched(c, run_id, params={k: v for k, v in op.params if k not in existing})
        elif isinstance(op, SetTags):
            from mlflow.entities import RunTag  # deferred on purpose (module docstring)

            c.log_batch(run_id, tags=[RunTag(k, v[:8000]) for k, v in redact(dict(op.tags)).items()])
        elif isinstance(op, LogArtifact):
            if os.path.exists(op.path):
                c.log_artifact(run_id, op.path, op.artifact_path)
            else:
                self.log(f"[tracking] artifact {op.path} is gone; not logged")
        elif isinstance(op, LogInput):
            from mlflow.entities import Dataset, DatasetInput, InputTag  # deferred on purpose (module docstring)

            ds = Dataset(
                name=op.name,
                digest=op.digest,
                source_type="local" if "://" not in op.source else "s3",
                source=json.dumps({"uri": op.source}),
            )
            c.log_inputs(run_id, datasets=[DatasetInput(ds, tags=[InputTag("mlflow.data.context", op.context)])])
        elif isinstance(op, EndRun):
            c.set_terminated(run_id, op.status)
        elif isinstance(op, RecordFaults):
            c.set_tag(run_id, schema.FAULTS, json.dumps(self.faults_summary()))
        else:
            raise TypeError(f"unknown tracking operation {op!r}")

    def _open(self, op: OpenRun) -> None:
        if op.key in self.run_ids:
            self.client.update_run(self.run_ids[op.key], status="RUNNING")
            return
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in op.find)
        found = self.client.search_runs([op.experiment_id], query, max_results=1)
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            run = self.client.create_run(op.experiment_id, run_name=op.name, tags=dict(op.find + op.tags))
            run_id = run.info.run_id
            log_batched(self.client, run_id, params=dict(op.params))
        self.run_ids[op.key] = run_id


def sweep_view(sweep: str, parent_run_id: str, metric: str, mode: str, params: list[str]) -> tuple[str, str]:
    """(tag key, value) of an MLflow saved view of the experiment's runs table for one sweep: the objective, its
    standard error (each wide enough for its name), the camera probe and source mAP first among the columns
    (MLflow would otherwise put Dataset before them and list metrics alphabetically, and at 1400 px the objective
    fell off the screen), then the searched parameters and each trial's outcome; only this sweep's runs (the
    view's own search filter: with several sweeps of a space in the experiment, another sweep's group could sort
    above this one's), grouped by sweep and role, so the sweep's own run and its trials are two groups, sorted by
    the objective. It appears in the UI's "Views" menu and opens from `ui_url`."""

    def col(kind: str, key: str) -> str:
        return f"{kind}.`{key}`"

    columns = [
        col("metrics", metric),
        col("metrics", f"{metric}_se"),
        col("metrics", "probe/camera_acc"),
        col("metrics", "source/mAP"),
        *[col("params", p) for p in params],
        col("tags", schema.OUTCOME),
    ]
    # wide enough for the objective's whole name and its `_se` (MLflow's default width showed `transfer_mAP_a…`
    # for both transfer_mAP_avg3 and its standard error); about 8 px a character at the table's font, plus padding
    widths = {c: 8 * len(c.split("`")[1]) + 56 for c in columns[:2]}
    state = {
        "selectedColumns": columns,
        "columnOrder": columns,
        "columnWidths": widths,
        "groupBy": {
            "aggregateFunction": "max" if mode == "max" else "min",
            "groupByKeys": [{"mode": "tag", "groupByData": schema.SWEEP}, {"mode": "tag", "groupByData": schema.ROLE}],
        },
        "runsExpanded": {parent_run_id: True},
        "searchFilter": f"tags.`{schema.SWEEP}` = '{sweep}'",  # a sweep name has no quote (plan.py checks it)
        "orderByKey": col("metrics", metric),
        "orderByAsc": mode == "min",
    }
    envelope = {"name": f"sweep {sweep}", "createdAt": int(time.time() * 1000), "state": json.dumps(state)}
    return f"{schema.VIEW_TAG_PREFIX}{schema.view_id(sweep)}", json.dumps(envelope)


def ui_url(base: str, experiment: str, sweep: str | None = None) -> str:
    """The experiment's runs table in the MLflow UI, in its model-training view, with the sweep's saved view when
    given. MLflow 3.17 chooses GenAI or model training from a setting of the browser (`mlflow.workflowType`, GenAI
    by default) that outranks the experiment's `mlflow.experimentKind` tag, so only the URL's `workflowType` makes
    it open on the runs table."""
    url = f"{base.rstrip('/')}/#/experiments/{experiment}/runs?workflowType=machine_learning"
    return url + (f"&viewStateShareKey={schema.view_id(sweep)}" if sweep else "")


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside an SQLite tracking database (runs/mlartifacts by default,
    so everything of the main job lives under ./runs, not in MLflow's ./mlruns); elsewhere the server's choice."""
    if uri.startswith("sqlite:///"):
        return "file://" + os.path.join(os.path.dirname(uri[len("sqlite:///") :]), "mlartifacts")
    return None


def experiment_id(uri: str, name: str, backoff: Backoff) -> str:
    """The experiment of a space (created on first use), opening on MLflow's runs table rather than its GenAI
    overview (the experiment tag `mlflow.experimentKind`)."""
    from mlflow.exceptions import MlflowException  # deferred on purpose (module docstring)
    from mlflow.tracking import MlflowClient  # deferred on purpose (module docstring)

    client = MlflowClient(uri)

    def get_or_create() -> str:
        exp = client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp else client.create_experiment(name, artifact_location=artifact_root(uri))
        if not exp or exp.tags.get("mlflow.experimentKind") != "custom_model_development":
            client.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
        return exp_id

    try:
        return call_with_backoff(
            get_or_create,
            service="tracking",
            what=f"opening MLflow experiment {name}",
            retry_on=(MlflowException, OSError),
            transient=lambda exc: is_outage(uri, exc),
            backoff=backoff,
        )
    except (MlflowException, OSError) as exc:
        raise TrackingError(f"MLflow tracking server {uri}: cannot open experiment {name!r}: {exc}") from None


@dataclass
class SweepRun:
    """The parent run of one sweep (found again by its name on --resume), written through the sweep's queue."""

    queue: TrackingQueue
    experiment_id: str
    sweep: str
    key: str = field(default="sweep", init=False)

    def open(self) -> str:
        self.queue.write(
            OpenRun(
                self.key,
                self.experiment_id,
                self.sweep,
                find=((schema.SWEEP, self.sweep), (schema.ROLE, schema.ROLE_SWEEP)),
            ),
            what="opening the sweep's run",
        )
        return self.run_id

    def save_view(self, metric: str, mode: str, params: list[str]) -> None:
        """The sweep's saved view of the runs table (`sweep_view`), as an experiment tag."""
        key, value = sweep_view(self.sweep, self.run_id, metric, mode, params)
        self.queue.submit(SetExperimentTag(self.experiment_id, key, value))

    @property
    def run_id(self) -> str:
        return self.queue.run_ids[self.key]

    def log_params(self, params: dict[str, Any]) -> None:
        self.queue.submit(LogParams(self.key, items(redact(params))))

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.queue.submit(SetTags(self.key, items(redact(tags))))

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        ts = int(time.time() * 1000)
        self.queue.submit(LogMetrics(self.key, tuple((k, float(v), ts, step) for k, v in metrics.items())))

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self.queue.submit(LogArtifact(self.key, path, artifact_path))

    def finish(self, status: str) -> None:
        """Close the run and wait (one retry budget) for every queued write, the trials' included."""
        self.queue.write(EndRun(self.key, status), what="closing the sweep's run")
