"""Backoff, and the tracking queue that outlives an MLflow outage (the fault tests run these against real services)."""

from __future__ import annotations

import pickle
import time
from types import SimpleNamespace

import pytest

from orchestrator.retry import Backoff, RetryStats, call_with_backoff
from orchestrator.tracking import MLflowTrialCallback, SweepTracker


def test_backoff_retries_then_succeeds_and_records_the_wait():
    calls, sleeps, stats = [], [], RetryStats()

    def flaky():
        calls.append(1)
        if len(calls) < 4:
            raise ConnectionRefusedError("endpoint down")
        return "ok"

    out = call_with_backoff(flaky, service="storage", what="upload", retry_on=(OSError,),
                            backoff=Backoff(first_s=1, max_s=3, jitter=0), stats=stats, sleep=sleeps.append,
                            log=lambda m: None)
    assert out == "ok" and sleeps == [1, 2, 3]
    assert stats.metrics() == {"faults/storage_retries": 3.0, "faults/storage_wait_s": 6.0}
    assert "endpoint down" in stats.last_error["storage"]


def test_backoff_gives_up_after_its_budget_and_never_retries_a_permanent_error():
    sleeps: list[float] = []
    with pytest.raises(ConnectionRefusedError):
        call_with_backoff(lambda: (_ for _ in ()).throw(ConnectionRefusedError("down")), service="s", what="w",
                          retry_on=(OSError,), backoff=Backoff(first_s=1, max_s=4, budget_s=10, jitter=0),
                          sleep=sleeps.append, log=lambda m: None)
    assert sleeps == [1, 2, 4] and sum(sleeps) <= 10  # the next wait (4) would pass the budget
    sleeps.clear()
    with pytest.raises(PermissionError):
        call_with_backoff(lambda: (_ for _ in ()).throw(PermissionError("denied")), service="s", what="w",
                          retry_on=(OSError,), transient=lambda exc: not isinstance(exc, PermissionError),
                          sleep=sleeps.append, log=lambda m: None)
    assert sleeps == []


class FlakyClient:
    """An MlflowClient whose calls fail like an unreachable server while `down`."""

    def __init__(self, client) -> None:
        self.client, self.down = client, False

    def __getattr__(self, name):
        fn = getattr(self.client, name)

        def call(*a, **k):
            if self.down:
                raise ConnectionRefusedError(f"[Errno 111] Connection refused ({name})")
            return fn(*a, **k)
        return call


def _trial(tid: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=tid, config={"beta": 0.5, "adv_loss": "kl"})


def test_tracking_writes_wait_out_an_outage_in_order_and_the_outage_is_recorded(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    tracker = SweepTracker(uri, "faults", "sweep-1")
    logs: list[str] = []
    cb = MLflowTrialCallback(uri, tracker.experiment_id, tracker.parent_id, "sweep-1", {"epochs": 4},
                             storage_root=str(tmp_path), backoff=Backoff(first_s=0.05, max_s=0.1, budget_s=5),
                             log=logs.append)
    flaky = FlakyClient(cb.client)
    cb._client = flaky
    flaky.down = True
    trial = _trial("t1")
    cb.on_trial_start(0, [], trial)
    for step in (1, 2):
        cb.on_trial_result(0, [], trial, {"training_iteration": step, "transfer_mAP": 0.1 * step,
                                          "checkpoint_path": f"{tmp_path}/ckpt{step}", "faults/storage_retries": 2})
    cb.on_step_end(0, [])
    assert cb._pending and any("unreachable" in m for m in logs)
    assert not tracker.client.search_runs([tracker.experiment_id], "tags.`adin.role` = 'trial'")

    # a resumed sweep gets the queue back with the callback's state
    restored = MLflowTrialCallback(uri, tracker.experiment_id, tracker.parent_id, "sweep-1", {"epochs": 4},
                                   storage_root=str(tmp_path), backoff=Backoff(first_s=0.05, max_s=0.1, budget_s=5))
    restored.set_state(pickle.loads(pickle.dumps(cb.get_state())))
    assert len(restored._pending) == len(cb._pending)

    time.sleep(0.5)
    flaky.down = False
    cb.on_trial_complete(0, [], trial)
    assert cb._pending == [] and any("back after" in m for m in logs)
    (run,) = tracker.client.search_runs([tracker.experiment_id], "tags.`adin.role` = 'trial'")
    history = tracker.client.get_metric_history(run.info.run_id, "transfer_mAP")
    assert [m.step for m in history] == [1, 2] and run.info.status == "FINISHED"
    assert run.data.tags["checkpoint_uri"].endswith("ckpt2") and run.data.params["beta"] == "0.5"
    faults = tracker.client.get_run(tracker.parent_id).data.tags["adin.faults"]
    assert '"service": "mlflow"' in faults and '"t1": {"faults/storage_retries": 2.0}' in faults
    assert cb.outages[0]["seconds"] >= 0.4


class DownClient:
    def __getattr__(self, name):
        def call(*a, **k):
            raise ConnectionRefusedError(f"[Errno 111] Connection refused ({name})")
        return call


def test_parent_run_writes_spend_one_budget_per_outage_then_fail_fast():
    from orchestrator.tracking import TrackingError, _RetryingClient

    client = _RetryingClient(DownClient(), "http://127.0.0.1:9", Backoff(first_s=0.05, max_s=0.1, budget_s=0.5))
    t0 = time.perf_counter()
    with pytest.raises(TrackingError, match="unreachable for 0.5 s \\(set_tag\\)"):
        client.set_tag("run", "k", "v")
    first = time.perf_counter() - t0
    t1 = time.perf_counter()
    with pytest.raises(TrackingError, match="still unreachable"):
        client.log_metric("run", "m", 1.0)
    assert first >= 0.3 and time.perf_counter() - t1 < first  # the second call did not wait out a budget
