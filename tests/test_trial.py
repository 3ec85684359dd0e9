"""The trial's side of Ray Train: what a checkpoint holds beyond the model, and what a trial restored from one
sends first (schema.replayed says why)."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

import ray.train
import torch

from orchestrator.checkpoints import REPORTS_FILE
from orchestrator.checkpoints import load_checkpoint as _load_checkpoint
from orchestrator.retry import RetryStats
from orchestrator.tracking import schema as S
from orchestrator.trial import RaySink


class _Reports:
    """Stands in for ray.train.report: keeps each call's metrics and a copy of its checkpoint's files."""

    def __init__(self, root) -> None:
        self.root, self.calls = root, []

    def __call__(self, metrics, checkpoint=None, checkpoint_upload_fn=None):
        kept = None
        if checkpoint is not None:  # the sink's folder is temporary: keep a copy, as Train's upload would
            kept = ray.train.Checkpoint.from_directory(
                shutil.copytree(checkpoint.path, self.root / f"ckpt{len(self.calls)}")
            )
        self.calls.append((dict(metrics), kept))


def test_a_checkpoint_holds_every_report_to_it_and_a_restored_trial_resends_them(tmp_path, monkeypatch):
    reports = _Reports(tmp_path)
    monkeypatch.setattr(ray.train, "report", reports)
    trainer = SimpleNamespace(state_dict=lambda: {"w": 1})
    sink = RaySink(0, None, RetryStats(), upload=lambda ckpt, name: ckpt)
    for k in (1, 2, 3):
        sink([trainer], [], {S.EVALUATION: k, "transfer_mAP": 0.1 * k, "phase": "rescue", "final": 0.0}, False)
    checkpoint = reports.calls[-1][1]
    states, history = _load_checkpoint(checkpoint, 1)
    assert states == [{"w": 1}] and [h[S.EVALUATION] for h in history] == [1, 2, 3]
    assert history[-1] == {S.EVALUATION: 3, "transfer_mAP": 0.30000000000000004, "phase": "rescue", "final": 0.0}

    restored = RaySink(0, None, RetryStats(), upload=lambda ckpt, name: ckpt)
    restored.resend(checkpoint, history)
    metrics, new_checkpoint = reports.calls[-1]
    assert new_checkpoint is None  # the checkpoint is Train's already: only its report goes again
    assert metrics[S.EVALUATION] == 3 and metrics["checkpoint_path"] == checkpoint.path
    assert [r[S.EVALUATION] for r in S.replayed(metrics)] == [1, 2]
    restored([trainer], [], {S.EVALUATION: 4, "transfer_mAP": 0.4, "final": 1.0}, True)
    _, history = _load_checkpoint(reports.calls[-1][1], 1)
    assert [h[S.EVALUATION] for h in history] == [1, 2, 3, 4]  # the history goes on in the resumed attempt


def test_other_ranks_resend_an_empty_report_and_an_old_checkpoint_has_no_history(tmp_path, monkeypatch):
    reports = _Reports(tmp_path)
    monkeypatch.setattr(ray.train, "report", reports)
    RaySink(1, None, RetryStats(), upload=None).resend(SimpleNamespace(path="/x"), [{S.EVALUATION: 1}])
    assert reports.calls == [({}, None)]  # Train needs every rank's report; rank 0's carries the metrics
    old = tmp_path / "old"
    old.mkdir()
    torch.save({"w": 2}, old / "state.pt")
    assert _load_checkpoint(ray.train.Checkpoint.from_directory(str(old)), 1) == ([{"w": 2}], [])
    assert not (old / REPORTS_FILE).exists()
