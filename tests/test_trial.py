"""The trial's side of Ray: what a checkpoint holds beyond the model, what a trial restored from one sends first
(schema.replayed says why), and a one-worker loop in its Tune trial's own process (orchestrator.loop_context)."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import ray.train
import torch

from orchestrator.checkpoints import REPORTS_FILE
from orchestrator.checkpoints import load_checkpoint as _load_checkpoint
from orchestrator.loop_context import LoopContext
from orchestrator.retry import RetryStats
from orchestrator.tracking import schema as S
from orchestrator.trial import RaySink


class _Reports(LoopContext):
    """A loop's context that keeps each report's metrics and a copy of its checkpoint's files."""

    def __init__(self, root, rank: int = 0) -> None:
        self.root, self.rank, self.calls = root, rank, []

    def report(self, metrics, directory=None, copy=None):
        kept = None
        if directory is not None:  # the sink's folder is temporary: keep a copy, as the upload would
            kept = ray.train.Checkpoint.from_directory(shutil.copytree(directory, self.root / f"ckpt{len(self.calls)}"))
        self.calls.append((dict(metrics), kept))


def test_a_checkpoint_holds_every_report_to_it_and_a_restored_trial_resends_them(tmp_path):
    reports = _Reports(tmp_path)
    trainer = SimpleNamespace(state_dict=lambda: {"w": 1})
    sink = RaySink(reports, None, RetryStats(), copy=None)
    for k in (1, 2, 3):
        sink([trainer], [], {S.EVALUATION: k, "transfer_mAP": 0.1 * k, "phase": "rescue", "final": 0.0}, False)
    checkpoint = reports.calls[-1][1]
    states, history = _load_checkpoint(checkpoint, 1)
    assert states == [{"w": 1}] and [h[S.EVALUATION] for h in history] == [1, 2, 3]
    assert history[-1] == {S.EVALUATION: 3, "transfer_mAP": 0.30000000000000004, "phase": "rescue", "final": 0.0}

    restored = RaySink(reports, None, RetryStats(), copy=None)
    restored.resend(checkpoint, history)
    metrics, new_checkpoint = reports.calls[-1]
    assert new_checkpoint is None  # the checkpoint is Train's already: only its report goes again
    assert metrics[S.EVALUATION] == 3 and metrics["checkpoint_path"] == checkpoint.path
    assert [r[S.EVALUATION] for r in S.replayed(metrics)] == [1, 2]
    restored([trainer], [], {S.EVALUATION: 4, "transfer_mAP": 0.4, "final": 1.0}, True)
    _, history = _load_checkpoint(reports.calls[-1][1], 1)
    assert [h[S.EVALUATION] for h in history] == [1, 2, 3, 4]  # the history goes on in the resumed attempt


def test_other_ranks_resend_an_empty_report_and_an_old_checkpoint_has_no_history(tmp_path):
    reports = _Reports(tmp_path, rank=1)
    RaySink(reports, None, RetryStats(), copy=None).resend(SimpleNamespace(path="/x"), [{S.EVALUATION: 1}])
    assert reports.calls == [({}, None)]  # Train needs every rank's report; rank 0's carries the metrics
    old = tmp_path / "old"
    old.mkdir()
    torch.save({"w": 2}, old / "state.pt")
    assert _load_checkpoint(ray.train.Checkpoint.from_directory(str(old)), 1) == ([{"w": 2}], [])
    assert not (old / REPORTS_FILE).exists()


def _one_worker_loop(config: dict) -> None:
    """A Tune trial's function running a loop in its own process, as a one-worker trial does: three reports with
    checkpoints copied by the caller's copy; the first attempt dies after the second."""
    import json
    import os
    import tempfile

    from orchestrator.loop_context import TuneProcess
    from orchestrator.trial import _copy_checkpoint

    ctx = TuneProcess(use_gpu=False, keep=2)
    first, start = 1, ctx.checkpoint()
    if start is not None:
        with start.as_directory() as folder, open(os.path.join(folder, "k.json")) as fh:
            first = json.load(fh)["k"] + 1
    for k in range(first, 4):
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, "k.json"), "w") as fh:
                json.dump({"k": k}, fh)
            copied: list[str] = []

            def copy(fs, source, dest):
                _copy_checkpoint(fs, source, dest)
                copied.append(dest)

            metrics = {"k": k, "resumed_from": first - 1}
            ctx.report(metrics, tmp, copy if k != 3 else None)  # the last through Tune's own copy
            assert metrics["checkpoint_path"] == ray.tune.get_context().get_storage().checkpoint_fs_path
        assert ctx.device().type == "cpu" and (ctx.rank, ctx.world) == (0, 1)
        assert k == 3 or os.path.basename(copied[0]) == os.path.basename(
            ray.tune.get_context().get_storage().checkpoint_fs_path
        )
        if k == 2 and config["marker"] and not os.path.exists(config["marker"]):
            open(config["marker"], "w").close()
            raise RuntimeError("the trial's process died")


def test_a_one_worker_loop_reports_checkpoints_to_tune_from_its_own_process_and_resumes_from_them(tmp_path):
    """No TorchTrainer: the checkpoint Tune records is the one the caller's copy wrote (its retries are ours), the
    failed attempt resumes from it, and the loop keeps `checkpoints_to_keep` of them, those of the attempt before
    the failure included (Tune deletes none: it would save its whole state every that many checkpoints of a
    trial, loop_context.TuneProcess). The next trial reuses the actor
    (reuse_actors, as a sweep's one-worker trials do) and starts from nothing of the last one's."""
    import os

    import ray
    from ray import tune

    ray.init(address="local", num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(_one_worker_loop, {"cpu": 1}),
            param_space={"marker": tune.grid_search([str(tmp_path / "failed-once"), ""])},
            tune_config=tune.TuneConfig(max_concurrent_trials=1, reuse_actors=True),
            run_config=tune.RunConfig(
                name="one-worker",
                storage_path=str(tmp_path / "storage"),
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=1),
            ),
        )
        result, after = sorted(tuner.fit(), key=lambda r: -len(r.config["marker"]))
    finally:
        ray.shutdown()
    assert result.error is None and result.metrics["k"] == 3 and result.metrics["resumed_from"] == 2
    assert after.error is None and after.metrics["k"] == 3 and after.metrics["resumed_from"] == 0
    assert after.metrics["pid"] == result.metrics["pid"]  # the same process: the actor was reused
    assert result.metrics["checkpoint_path"] == result.checkpoint.path  # where the sweep finds it
    trial_dir = os.path.dirname(result.checkpoint.path)
    kept = sorted(n for n in os.listdir(trial_dir) if n.startswith("checkpoint_"))
    assert kept == ["checkpoint_000001", "checkpoint_000002"]  # three written, two kept
    with result.checkpoint.as_directory() as folder, open(os.path.join(folder, "k.json")) as fh:
        assert fh.read() == '{"k": 3}'


def test_a_one_worker_trial_whose_recorded_checkpoint_is_gone_starts_again_and_says_so(tmp_path, monkeypatch):
    """A driver that died without saving its state can name a checkpoint the trial has deleted since: the trial
    is told nothing to resume from (not a crash on a missing folder), with a warning naming the path; an existing
    one is resumed from, and the checkpoints before it become the trial's to delete (checkpoint_000000, older than
    the last `keep` at the restore, is not this attempt's to know)."""
    import os

    import pyarrow.fs as pafs
    import pytest
    import ray.tune

    from orchestrator.loop_context import TuneProcess

    trial_dir = tmp_path / "trial"
    for i in range(3):
        (trial_dir / f"checkpoint_{i:06d}").mkdir(parents=True)
    storage = SimpleNamespace(storage_filesystem=pafs.LocalFileSystem(), trial_fs_path=str(trial_dir))
    recorded = {"path": str(trial_dir / "checkpoint_000007")}
    context = SimpleNamespace(get_storage=lambda: storage, get_trial_id=lambda: "t1")
    monkeypatch.setattr(ray.tune, "get_context", lambda: context)
    monkeypatch.setattr(
        ray.tune, "get_checkpoint", lambda: ray.tune.Checkpoint(filesystem=storage.storage_filesystem, **recorded)
    )
    with pytest.warns(UserWarning, match="checkpoint_000007 is gone"):
        assert TuneProcess(use_gpu=False, keep=2).checkpoint() is None
    recorded["path"] = str(trial_dir / "checkpoint_000002")
    ctx = TuneProcess(use_gpu=False, keep=2)
    assert ctx.checkpoint().path == recorded["path"]
    assert list(ctx._kept) == [str(trial_dir / "checkpoint_000001"), str(trial_dir / "checkpoint_000002")]

    # the next report deletes the oldest before Tune takes it: a trial Tune stops there (ASHA) never returns
    class Stopped(Exception):
        pass

    def stop(*_args, **_kwargs):
        raise Stopped

    monkeypatch.setattr(ray.tune, "report", stop)
    storage.current_checkpoint_index = 2
    (tmp_path / "new").mkdir()
    with pytest.raises(Stopped):
        ctx.report({"k": 3}, str(tmp_path / "new"), copy=lambda fs, source, dest: os.makedirs(dest))
    assert sorted(os.listdir(trial_dir)) == ["checkpoint_000000", "checkpoint_000002", "checkpoint_000003"]


def test_a_one_worker_loop_without_a_keep_deletes_no_checkpoint(tmp_path, monkeypatch):
    """`keep` None (a pretraining stage's loop) keeps every checkpoint, before and after the report."""
    import os

    import pyarrow.fs as pafs
    import ray.tune

    from orchestrator.loop_context import TuneProcess

    trial_dir = tmp_path / "trial"
    trial_dir.mkdir()
    storage = SimpleNamespace(
        storage_filesystem=pafs.LocalFileSystem(), trial_fs_path=str(trial_dir), current_checkpoint_index=-1
    )

    def report(metrics, checkpoint=None):
        storage.current_checkpoint_index += 1
        storage.checkpoint_dir_name = f"checkpoint_{storage.current_checkpoint_index:06d}"

    monkeypatch.setattr(ray.tune, "get_context", lambda: SimpleNamespace(get_storage=lambda: storage))
    monkeypatch.setattr(ray.tune, "report", report)
    ctx = TuneProcess(use_gpu=False, keep=None)
    (tmp_path / "new").mkdir()
    for k in range(4):
        ctx.report({"k": k}, str(tmp_path / "new"), copy=lambda fs, source, dest: os.makedirs(dest))
    assert sorted(os.listdir(trial_dir)) == [f"checkpoint_{i:06d}" for i in range(4)]
