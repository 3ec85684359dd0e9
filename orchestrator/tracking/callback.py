"""The Tune callback that turns trial events into MLflow writes (a child run per trial). It only forwards: the
writes go through the sweep's `TrackingQueue`, so Tune's loop never waits on MLflow. Ray is imported here alone,
so `orchestrator.best` and the rest of tracking work without it.

Tune pickles a sweep's callbacks with its state and, on `--resume`, would bring back the first run's objects; our
callbacks pickle as a reference to the live callback of the same sweep instead (`LiveCallback`), so a resumed
sweep keeps one queue for its parent run and its trials, and one live table.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable

from ray.tune import Callback

from orchestrator.tracking import schema
from orchestrator.tracking.store import (
    EndRun,
    LogInput,
    LogMetrics,
    OpenRun,
    RecordFaults,
    SetTags,
    TrackingQueue,
    items,
    redact,
)

_LIVE: dict[str, Callback] = {}

SUMMARY = {schema.EVALUATION, "probe/camera_acc", "grip/adv_to_id"}  # with the objective: a trial's summary
_TUNE_BOOKKEEPING = {
    "timestamp",
    "time_this_iter_s",
    "time_total_s",
    "pid",
    "time_since_restore",
    "iterations_since_restore",
    "done",
    "training_iteration",
}


def _live_callback(key: str) -> Callback:
    return _LIVE.get(key) or Callback()  # unpickled outside a sweep (nothing registered): inert


def live_callback(key: str) -> Callback | None:
    """The callback registered under `key` in this process, if any."""
    return _LIVE.get(key)


class LiveCallback(Callback):
    """A callback registered under a key; pickling it yields whatever callback is live under that key then."""

    live_key: str

    def register(self, key: str) -> "LiveCallback":
        self.live_key = key
        _LIVE[key] = self
        return self

    def __reduce__(self):
        return (_live_callback, (self.live_key,))


def trial_metric(key: str) -> bool:
    return key not in _TUNE_BOOKKEEPING and not key.startswith(("config/", "date", "hostname", "node_ip"))


class MLflowTrialCallback(LiveCallback):
    """A child run per trial: its full TrainConfig as parameters, every report's metrics, its latest checkpoint,
    phase and outcome as tags."""

    def __init__(
        self,
        queue: TrackingQueue,
        experiment_id: str,
        sweep: str,
        *,
        trial_params: Callable[[dict[str, Any]], dict[str, Any]],
        run_name: Callable[[str, dict[str, Any]], str],
        checkpoint_uri: Callable[[str], str],
        inputs: tuple[LogInput, ...] = (),
        metric: str = schema.OBJECTIVE,
    ) -> None:
        self.queue, self.experiment_id, self.sweep, self.metric = queue, experiment_id, sweep, metric
        self.inputs = inputs  # the sweep's datasets, logged on every trial's run (the runs table's Dataset column)
        self.trial_params, self.run_name, self.checkpoint_uri = trial_params, run_name, checkpoint_uri
        self.final: dict[str, bool] = {}
        self.diverged: dict[str, str] = {}  # trial id -> why it stopped
        self.last: dict[str, dict[str, float]] = {}  # trial id -> its last evaluation's key figures (its summary)
        self.logged: dict[str, int] = {}  # trial id -> the last evaluation logged
        self.opened: set[str] = set()
        self.ended: set[str] = set()
        self.result_seconds: list[float] = []  # time spent in on_trial_result (what Tune's loop waited)
        self.register(f"tracking:{sweep}")

    def get_state(self) -> dict[str, Any] | None:
        """Saved by Tune with the sweep: writes still queued (an outage) are sent by a resumed sweep."""
        return {
            "queue": self.queue.state(),
            "final": dict(self.final),
            "opened": sorted(self.opened),
            "ended": sorted(self.ended),
            "logged": dict(self.logged),
            "diverged": dict(self.diverged),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.queue.restore(state.get("queue", {}))
        self.final.update(state.get("final", {}))
        self.opened.update(state.get("opened", []))
        self.ended.update(state.get("ended", []))
        self.logged.update(state.get("logged", {}))
        self.diverged.update(state.get("diverged", {}))

    def _open(self, trial, again: bool = False) -> None:
        """Open the trial's run once; `again` (a trial restarting, e.g. after --resume) marks it running anew. The
        datasets go with the first opening only (Tune starts every trial with `on_trial_start`, so `again` alone
        cannot tell a first start from a restart)."""
        first = trial.trial_id not in self.opened
        if not first and not again:
            return
        self.opened.add(trial.trial_id)
        self.ended.discard(trial.trial_id)
        parent = self.queue.run_ids["sweep"]
        self.queue.submit(
            OpenRun(
                trial.trial_id,
                self.experiment_id,
                self.run_name(trial.trial_id, trial.config),
                find=((schema.PARENT, parent), (schema.TRIAL, trial.trial_id)),
                tags=(
                    (schema.SWEEP, self.sweep),
                    (schema.ROLE, schema.ROLE_TRIAL),
                    *(
                        [(schema.START_POINT, trial.config[schema.START_POINT_KEY])]
                        if (trial.config or {}).get(schema.START_POINT_KEY)
                        else []
                    ),
                ),
                params=items(redact(self.trial_params(trial.config))),
            ),
            *[replace(i, key=trial.trial_id) for i in self.inputs if first],
        )

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._open(trial, again=True)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        """Logs each evaluation once, at its index: one a resumed trial resends (schema.replayed) is logged only if
        this run never got it, and a trial that redoes evaluations after a restart keeps the first values."""
        t0 = time.perf_counter()
        self._open(trial)
        tid = trial.trial_id
        if result.get(schema.DIVERGED):  # its last report: no evaluation, the reason (RaySink.diverged)
            self.diverged[tid] = str(result.get(schema.DIVERGED_WHY, "diverged"))
            self.final[tid] = False
            self.queue.submit(SetTags(tid, ((schema.DIVERGED_REASON, self.diverged[tid]),)))
            self.result_seconds.append(time.perf_counter() - t0)
            return
        ts = int(time.time() * 1000)
        for report in (*schema.replayed(result), result):
            step = schema.evaluation_of(report)
            if step <= self.logged.get(tid, 0):
                continue
            self.logged[tid] = step
            metrics = tuple(
                (k, float(v), ts, step)
                for k, v in report.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and trial_metric(k)
            )
            self.queue.submit(LogMetrics(tid, metrics))
        self.last.setdefault(tid, {}).update(  # the latest value of each (a grip only where adversarial steps ran)
            {
                k: float(v)
                for k, v in result.items()
                if (k in SUMMARY or k == self.metric or k.startswith("seed"))
                and isinstance(v, (int, float))
                and not isinstance(v, bool)
            }
        )
        faults = {k: float(v) for k, v in result.items() if k.startswith("faults/") and v}
        if faults:
            self.queue.trial_faults[tid] = faults
        tags = {}
        if result.get("checkpoint_path"):
            tags[schema.CHECKPOINT] = self.checkpoint_uri(result["checkpoint_path"])
        if "phase" in result:
            tags[schema.PHASE] = result["phase"]
        self.final[tid] = bool(result.get(schema.FINAL))
        if tags:
            self.queue.submit(SetTags(tid, items(tags)))
        self.result_seconds.append(time.perf_counter() - t0)

    def _end(self, trial, outcome: str, status: str) -> None:
        self._open(trial)
        self.ended.add(trial.trial_id)
        self.queue.submit(
            SetTags(trial.trial_id, ((schema.OUTCOME, outcome), (schema.NOTE, self._summary(trial, outcome)))),
            EndRun(trial.trial_id, status),
        )

    def _summary(self, trial, outcome: str) -> str:
        """The trial run's description: how it ended and its key figures, at the top of its page in the UI."""
        last, tid = self.last.get(trial.trial_id, {}), trial.trial_id
        start = (trial.config or {}).get(schema.START_POINT_KEY)
        lines = [
            f"**{outcome}**"
            + (f" (start point `{start}`)" if start else "")
            + (f" after {last[schema.EVALUATION]:.0f} evaluations" if schema.EVALUATION in last else "")
        ]
        if tid in self.diverged:
            lines.append(self.diverged[tid])
        for key, label in (
            (self.metric, self.metric),
            ("probe/camera_acc", "camera probe"),
            ("grip/adv_to_id", "grip of the adversary (||beta dL_adv/df|| / ||dL_I/df||)"),
        ):
            if key in last:
                seeds = sorted(v for k, v in last.items() if k.startswith("seed") and k.endswith("/" + key))
                lines.append(
                    f"- {label}: {last[key]:.4f}"
                    + (f" (seeds: {', '.join(f'{v:.4f}' for v in seeds)})" if len(seeds) > 1 else "")
                )
        return "\n".join(lines)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        # a trial that completes without its final report was stopped early by the scheduler (ASHA), or diverged
        # MLflow's status icons tell them apart: a pruned trial did not train its budget, as a killed one did not
        if trial.trial_id in self.diverged:
            self._end(trial, "diverged", "FAILED")
        elif self.final.get(trial.trial_id):
            self._end(trial, "finished", "FINISHED")
        else:
            self._end(trial, "pruned", "KILLED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._end(trial, "failed", "FAILED")

    def close_unfinished(self) -> None:
        """An interrupted sweep: the trials that had not ended are closed as KILLED (a resume reopens them)."""
        for tid in sorted(self.opened - self.ended):
            self.queue.submit(SetTags(tid, ((schema.OUTCOME, "killed"),)), EndRun(tid, "KILLED"))

    def on_experiment_end(self, trials, **info) -> None:
        if self.queue.trial_faults or self.queue.outages:
            self.queue.submit(RecordFaults("sweep"))
