"""What the sweep prints while it runs: into a log, a line per trial event; in a terminal, the table redrawn in
place."""

from __future__ import annotations

from types import SimpleNamespace

from orchestrator.progress import ProgressTable
from orchestrator.tracking import schema as S


def _trial(tid, **config):
    return SimpleNamespace(trial_id=tid, config=config, status="RUNNING")


def _events(live: bool) -> list[str]:
    out: list[str] = []
    table = ProgressTable(f"s-{live}", "transfer_mAP", ["beta"], every_s=0.0, log=out.append, live=live)
    a, b, c = _trial("aaa", beta=0.1, **{S.START_POINT_KEY: "defaults"}), _trial("bbb", beta=2.0), _trial("ccc", beta=9)
    for t in (a, b, c):
        table.on_trial_start(0, [], t)
    table.on_trial_result(0, [], a, {"transfer_mAP": 0.31, S.EVALUATION: 1, "probe/camera_acc": 0.5, S.FINAL: 0.0})
    table.on_trial_result(0, [], a, {"transfer_mAP": 0.35, S.EVALUATION: 2, S.FINAL: 1.0})
    table.on_trial_complete(0, [], a)
    table.on_trial_result(0, [], b, {"transfer_mAP": 0.20, S.EVALUATION: 1, S.FINAL: 0.0})
    table.on_trial_complete(0, [], b)
    table.on_trial_result(0, [], c, {S.DIVERGED: 1.0, S.DIVERGED_WHY: "seed 0 diverged"})
    table.on_trial_complete(0, [], c)
    return out


def test_into_a_log_every_trial_event_is_one_line_and_the_table_is_never_reprinted():
    lines = _events(live=False)
    text = "\n".join(lines)
    assert all("\n" not in line for line in lines) and "status" not in text
    assert "trial aaa started: beta=0.1 (start point defaults)" in text
    assert "trial aaa evaluation 1: transfer_mAP 0.3100, camera probe 0.500" in text
    assert "trial aaa finished" in text and "trial bbb stopped early (pruned) at evaluation 1" in text
    assert "trial ccc diverged" in text and len(lines) == 9  # 3 starts, 3 evaluations, 3 ends


def test_in_a_terminal_the_table_is_redrawn_over_itself_and_says_pruned_not_terminated():
    drawings = _events(live=True)
    assert drawings and "\x1b[" not in drawings[0] and all(d.startswith("\x1b[") for d in drawings[1:])
    last = drawings[-1]
    assert "FINISHED" in last and "PRUNED" in last and "DIVERGED" in last and "TERMINATED" not in last
