"""The tracking queue: one outage policy for the sweep's parent run and its trials, writes in order, never
blocking Tune's loop; the Tune callback that feeds it; and the names both sides use."""

from __future__ import annotations

import pickle
import time
from types import SimpleNamespace

import pytest

from orchestrator.retry import Backoff
from orchestrator.tracking import SweepRun, TrackingError, TrackingQueue, experiment_id
from orchestrator.tracking import schema as S
from orchestrator.tracking.callback import MLflowTrialCallback

FAST = Backoff(first_s=0.05, max_s=0.1, budget_s=5, jitter=0)


class FlakyClient:
    """An MlflowClient whose calls fail like an unreachable server while `down`, or answer slowly."""

    def __init__(self, client) -> None:
        self.client, self.down, self.delay = client, False, 0.0

    def __getattr__(self, name):
        fn = getattr(self.client, name)

        def call(*a, **k):
            time.sleep(self.delay)
            if self.down:
                raise ConnectionRefusedError(f"[Errno 111] Connection refused ({name})")
            return fn(*a, **k)

        return call


def _trial(tid: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=tid, config={"beta": 0.5, "adv_loss": "kl"})


def _sweep(tmp_path, name="sweep-1", backoff=FAST, log=None):
    uri = f"sqlite:///{tmp_path}/m.db"
    queue = TrackingQueue(uri, backoff, log=log or (lambda m: None))
    parent = SweepRun(queue, experiment_id(uri, "faults", backoff), name)
    parent.open()
    cb = MLflowTrialCallback(
        queue,
        parent.experiment_id,
        name,
        trial_params=lambda c: {**c, "epochs": 4},
        run_name=lambda tid, c: f"{tid} beta={c['beta']}",
        checkpoint_uri=lambda p: f"file://{p}",
    )
    return uri, queue, parent, cb


def test_writes_wait_out_an_outage_in_order_and_the_outage_is_recorded(tmp_path):
    logs: list[str] = []
    uri, queue, parent, cb = _sweep(tmp_path, log=logs.append)
    flaky = FlakyClient(queue.client)
    queue._client = flaky
    flaky.down = True
    trial = _trial("t1")
    cb.on_trial_start(0, [], trial)
    for step in (1, 2):
        cb.on_trial_result(
            0,
            [],
            trial,
            {
                "training_iteration": step,
                "transfer_mAP": 0.1 * step,
                "final": 0,
                "checkpoint_path": f"{tmp_path}/ckpt{step}",
                "faults/storage_retries": 2,
            },
        )
    parent.set_tags({"adin.note": "written during the outage"})
    assert not queue.drain(timeout=0.5) and len(queue) >= 4
    assert any("unreachable" in m for m in logs)

    # a resumed sweep gets the queue back with the callback's state (what Tune saves)
    state = pickle.loads(pickle.dumps(cb.get_state()))
    assert len(state["queue"]["pending"]) == len(queue)

    flaky.down = False
    cb.on_trial_result(0, [], trial, {"training_iteration": 3, "transfer_mAP": 0.3, "final": 1})
    cb.on_trial_complete(0, [], trial)
    assert queue.drain(timeout=10) and any("back after" in m for m in logs)
    client = queue.client.client
    (run,) = client.search_runs([parent.experiment_id], f"tags.`{S.ROLE}` = '{S.ROLE_TRIAL}'")
    history = client.get_metric_history(run.info.run_id, "transfer_mAP")
    assert [m.step for m in history] == [1, 2, 3] and run.info.status == "FINISHED"
    assert run.data.tags[S.CHECKPOINT].endswith("ckpt2") and run.data.tags[S.OUTCOME] == "finished"
    assert run.data.params["beta"] == "0.5" and run.data.params["epochs"] == "4"  # the full config
    assert run.data.tags[S.RUN_NAME] == "t1 beta=0.5"
    tags = client.get_run(parent.run_id).data.tags
    assert tags["adin.note"] == "written during the outage"
    assert '"service": "mlflow"' in tags[S.FAULTS] and '"t1": {"faults/storage_retries": 2.0}' in tags[S.FAULTS]
    assert queue.outages[0]["seconds"] >= 0.4


def test_every_trial_run_lists_the_sweeps_datasets_once(tmp_path):
    """The runs table's Dataset column: each trial's run carries the sweep's datasets, also when Tune starts the
    trial again (a restart, a resumed sweep), without listing them twice."""
    from orchestrator.tracking.store import LogInput

    uri, queue, parent, cb = _sweep(tmp_path)
    cb.inputs = (
        LogInput("trial", "src/v1", "abc123", "/data/src/v1", "training"),
        LogInput("trial", "sel/v1", "def456", "s3://b/sel/v1", "select"),
    )
    trial = _trial("t1")
    cb.on_trial_start(0, [], trial)
    cb.on_trial_result(0, [], trial, {"training_iteration": 1, "transfer_mAP": 0.2, "final": 0})
    resumed = MLflowTrialCallback(
        queue,
        parent.experiment_id,
        "sweep-1",
        trial_params=lambda c: c,
        run_name=lambda tid, c: tid,
        checkpoint_uri=lambda p: p,
        inputs=cb.inputs,
    )
    resumed.set_state(pickle.loads(pickle.dumps(cb.get_state())))
    resumed.on_trial_start(0, [], trial)  # the trial restarts in the resumed sweep
    assert queue.drain(timeout=10)
    (run,) = queue.client.search_runs([parent.experiment_id], f"tags.`{S.ROLE}` = '{S.ROLE_TRIAL}'")
    inputs = [(d.dataset.name, d.dataset.digest, [t.value for t in d.tags]) for d in run.inputs.dataset_inputs]
    assert sorted(inputs) == [("sel/v1", "def456", ["select"]), ("src/v1", "abc123", ["training"])]


def test_a_trial_stopped_early_is_tagged_pruned_and_an_interrupted_one_killed(tmp_path):
    uri, queue, parent, cb = _sweep(tmp_path)
    pruned, running = _trial("p1"), _trial("r1")
    for t in (pruned, running):
        cb.on_trial_start(0, [], t)
        cb.on_trial_result(0, [], t, {"training_iteration": 1, "transfer_mAP": 0.2, "final": 0})
    cb.on_trial_complete(0, [], pruned)  # completed without its final report: ASHA stopped it
    cb.close_unfinished()
    assert queue.drain(timeout=10)
    client = queue.client
    runs = {
        r.data.tags[S.TRIAL]: r
        for r in client.search_runs([parent.experiment_id], f"tags.`{S.ROLE}` = '{S.ROLE_TRIAL}'")
    }
    # a pruned trial did not train its budget: not the green FINISHED of a finished one (its outcome tag says why)
    assert runs["p1"].data.tags[S.OUTCOME] == "pruned" and runs["p1"].info.status == "KILLED"
    assert runs["r1"].data.tags[S.OUTCOME] == "killed" and runs["r1"].info.status == "KILLED"


def test_a_resumed_trials_resent_reports_fill_what_tune_never_took_and_each_evaluation_is_logged_once(tmp_path):
    """The sweep stopped while evaluation 3 was still on its way to Tune; the trial resumes from checkpoint 3 and
    resends it with 1-2. The run gets 3 (and its checkpoint), nothing twice, and a redone 4 keeps its first value."""
    import json

    uri, queue, parent, cb = _sweep(tmp_path)
    trial = _trial("t1")
    reports = [{S.EVALUATION: k, "transfer_mAP": 0.1 * k, "final": 0} for k in (1, 2, 3)]
    cb.on_trial_start(0, [], trial)
    for r in reports[:2]:
        cb.on_trial_result(
            0, [], trial, dict(r, training_iteration=r[S.EVALUATION], checkpoint_path=f"/c/ckpt{r[S.EVALUATION]}")
        )
    cb.close_unfinished()
    resumed = MLflowTrialCallback(
        queue,
        parent.experiment_id,
        "sweep-1",
        trial_params=lambda c: c,
        run_name=lambda tid, c: tid,
        checkpoint_uri=lambda p: p,
    )
    resumed.set_state(pickle.loads(pickle.dumps(cb.get_state())))
    resumed.on_trial_start(0, [], trial)
    resumed.on_trial_result(
        0,
        [],
        trial,
        dict(reports[2], training_iteration=1, checkpoint_path="/c/ckpt3", **{S.REPLAY: json.dumps(reports[:2])}),
    )
    resumed.on_trial_result(0, [], trial, {S.EVALUATION: 4, "transfer_mAP": 0.4, "final": 0, "training_iteration": 2})
    resumed.on_trial_result(0, [], trial, {S.EVALUATION: 4, "transfer_mAP": 0.9, "final": 0, "training_iteration": 1})
    resumed.on_trial_result(0, [], trial, {S.EVALUATION: 5, "transfer_mAP": 0.5, "final": 1, "training_iteration": 2})
    resumed.on_trial_complete(0, [], trial)
    assert queue.drain(timeout=10)
    client = queue.client
    (run,) = client.search_runs([parent.experiment_id], f"tags.`{S.ROLE}` = '{S.ROLE_TRIAL}'")
    history = [(m.step, round(m.value, 3)) for m in client.get_metric_history(run.info.run_id, "transfer_mAP")]
    assert history == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4), (5, 0.5)]
    assert run.data.tags[S.CHECKPOINT] == "/c/ckpt3" and run.data.tags[S.OUTCOME] == "finished"
    assert S.REPLAY not in run.data.metrics and S.REPLAY not in run.data.params


def test_the_callback_never_waits_on_mlflow(tmp_path):
    """A slow server (0.3 s a call) costs Tune's loop nothing: on_trial_result only queues."""
    uri, queue, parent, cb = _sweep(tmp_path)
    slow = FlakyClient(queue.client)
    slow.delay = 0.3
    queue._client = slow
    trial = _trial("t1")
    cb.on_trial_start(0, [], trial)
    for step in range(1, 21):
        cb.on_trial_result(0, [], trial, {"training_iteration": step, "transfer_mAP": 0.01 * step})
    assert max(cb.result_seconds) < 0.02, cb.result_seconds
    assert len(queue) > 10  # the writes are still on their way
    slow.delay = 0.0
    assert queue.drain(timeout=20)


def test_parent_writes_give_up_after_one_budget(tmp_path):
    uri, queue, parent, cb = _sweep(tmp_path, backoff=Backoff(first_s=0.05, max_s=0.1, budget_s=0.5, jitter=0))
    flaky = FlakyClient(queue.client)
    queue._client = flaky
    flaky.down = True
    t0 = time.perf_counter()
    with pytest.raises(TrackingError, match="unreachable for 0.5 s \\(closing the sweep's run\\)"):
        parent.finish("FINISHED")
    assert 0.45 <= time.perf_counter() - t0 < 3


def test_callbacks_pickle_as_the_live_callback_of_their_sweep(tmp_path):
    """Tune pickles callbacks with the sweep and restores them on --resume: the resumed sweep's own callback (its
    queue, its parent run) must be the one Tune calls."""
    _, _, _, old = _sweep(tmp_path, name="s-live")
    blob = pickle.dumps(old)
    _, _, _, new = _sweep(tmp_path, name="s-live")  # the resumed driver registers its callback
    assert pickle.loads(blob) is new
    assert type(pickle.loads(pickle.dumps(_sweep(tmp_path, name="s-other")[3]))) is MLflowTrialCallback


def test_experiment_opens_on_the_runs_table(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/m.db"
    exp = experiment_id(uri, "kind", FAST)
    assert MlflowClient(uri).get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment_id(uri, "kind", FAST) == exp


def test_bad_tracking_uris_are_refused_before_any_work(tmp_path):
    from orchestrator.tracking import check_tracking_uri

    with pytest.raises(TrackingError, match="scheme foo:// is not one MLflow stores runs in"):
        check_tracking_uri("foo://x")
    with pytest.raises(TrackingError, match="cannot create /proc/x|not writable"):
        check_tracking_uri("sqlite:////proc/x/mlflow.db")
    with pytest.raises(TrackingError, match="unreachable"):
        check_tracking_uri("http://127.0.0.1:9", timeout=1)


def test_the_sweeps_saved_view_puts_the_objective_first_wide_enough_for_its_name():
    import json

    from orchestrator.tracking.store import sweep_view

    key, value = sweep_view("s1", "run0", "transfer_mAP_avg3", "max", ["beta"])
    state = json.loads(json.loads(value)["state"])
    assert key == "mlflow.sharedViewState.adin-s1" and state["orderByKey"] == "metrics.`transfer_mAP_avg3`"
    assert state["columnOrder"][:2] == ["metrics.`transfer_mAP_avg3`", "metrics.`transfer_mAP_avg3_se`"]
    # MLflow's default column showed both as `transfer_mAP_a…` at 1400 px (scripts/ui_check.py's screenshot)
    assert state["columnWidths"]["metrics.`transfer_mAP_avg3_se`"] >= 8 * len("transfer_mAP_avg3_se") + 40
    assert state["groupBy"]["aggregateFunction"] == "max" and "params.`beta`" in state["selectedColumns"]
    assert state["searchFilter"] == "tags.`adin.sweep` = 's1'"  # another sweep of the space is not in the view
