"""adin_core.evaluation: the cadence of evaluations during training, what an evaluation holds, and the probe on the
same features that retrieval uses."""

from __future__ import annotations

import numpy as np
import pytest

from adin_core.config import TrainConfig
from adin_core.data.memory import EvalTarget, TrainingData, held_out_val
from adin_core.data.synthetic import generate_benchmark
from adin_core.evaluation import OBJECTIVE, EvaluationHook, Evaluator, target_scores
from adin_core.train import fit


@pytest.fixture(scope="module")
def bench():
    return generate_benchmark("tiny", seed=0)


def test_cadence_is_the_first_check_at_or_past_each_multiple_and_the_end():
    ev = Evaluator(every_steps=50)
    checks = [20, 40, 60, 80, 100, 120, 133]
    due, previous = [], 0
    for step in checks:
        if ev.due(step, previous, final=step == 133):
            due.append(step)
        previous = step
    assert due == [60, 100, 133]
    assert Evaluator(every_steps=0).due(40, 20, final=False) is False  # 0: only at the end
    assert Evaluator(every_steps=50).due(140, 120, final=False) is False  # a resumed run at 120 waits for 150


def test_the_evaluation_index_comes_from_the_step_so_a_resume_numbers_as_the_uninterrupted_run():
    ev = Evaluator(every_steps=50)
    assert [ev.index(s, 133) for s in (60, 100, 133)] == [1, 2, 3]  # the cadence above: 3 evaluations
    assert [ev.index(s, 150) for s in (50, 100, 150)] == [1, 2, 3]  # the end on a multiple is not a 4th
    assert ev.index(20, 133) == 1  # never 0, even for an early report
    assert Evaluator(every_steps=0).index(133, 133) == 1  # only at the end: one evaluation


def test_the_hook_evaluates_at_its_cadence_with_probe_grip_and_objective(bench):
    train, val = held_out_val(bench.source.train)
    data = TrainingData(train, val, "camera", name="tiny")
    src, sel = bench.source, bench.targets["select"]
    ev = Evaluator(
        select=[EvalTarget("sel", sel.query, sel.gallery)],
        source=EvalTarget("source", src.query, src.gallery),
        report=[EvalTarget("rep", bench.targets["report"].query, bench.targets["report"].gallery)],
        every_steps=10,
    )
    seen = []
    hook = EvaluationHook(ev, lambda trainer, report, metrics, final: seen.append((report.step, metrics, final)))
    cfg = TrainConfig(
        backbone="small_cnn",
        image_height=32,
        image_width=16,
        batch_size=32,
        epochs=3,
        pretrain_id_epochs=1,
        pretrain_nuisance_epochs=0.5,
        check_every=5,
        refresh_steps=5,
    )
    fit(cfg, data, hooks=[hook])
    steps = [s for s, _, _ in seen]
    assert steps == sorted(steps) and seen[-1][2] and all(not f for _, _, f in seen[:-1])
    assert all(b // 10 > a // 10 for a, b in zip(steps, steps[1:-1]))  # one evaluation per multiple crossed
    last = seen[-1][1]
    assert last[OBJECTIVE] == last["select/sel/mAP"]
    assert {"source/mAP", "probe/camera_acc", "probe/camera_chance", "probe/time_acc", "phase", "final"} <= set(last)
    assert "report/rep/mAP" in last and not any(k.startswith("report/") for _, m, _ in seen[:-1] for k in m)
    assert any("grip/adv_to_id" in m for _, m, _ in seen)  # adversarial steps happened between evaluations
    assert target_scores(last, "select") == {
        "sel": {k: last[f"select/sel/{k}"] for k in ("rank1", "rank5", "rank10", "mAP", "mINP")}
    }
    assert 0 <= last["probe/camera_chance"] <= 1 and np.isfinite(last["probe/camera_acc"])


def test_scoring_at_the_end_only_keeps_the_cadence_of_reports_and_the_same_final_scores(bench):
    """The verification's evaluator: every cadence point still reaches the sink (a driver checkpoints there), only
    the end is scored, and the end's scores are those of an evaluator scoring all along (scoring reads the model,
    it never trains it)."""
    train, val = held_out_val(bench.source.train)
    data = TrainingData(train, val, "camera", name="tiny")
    sel, rep = bench.targets["select"], bench.targets["report"]
    cfg = TrainConfig(
        backbone="small_cnn",
        image_height=32,
        image_width=16,
        batch_size=32,
        epochs=4,
        pretrain_id_epochs=1,
        pretrain_nuisance_epochs=0.5,
        check_every=5,
        refresh_steps=5,
    )
    runs = {}
    for during in (True, False):
        ev = Evaluator(
            select=[EvalTarget("sel", sel.query, sel.gallery)],
            source=EvalTarget("source", bench.source.query, bench.source.gallery),
            report=[EvalTarget("rep", rep.query, rep.gallery)],
            every_steps=5,
            score_during=during,
        )
        seen = []
        fit(cfg, data, hooks=[EvaluationHook(ev, lambda t, r, m, f: seen.append((r.step, m, f)))])
        runs[during] = seen
    assert [s for s, _, _ in runs[False]] == [s for s, _, _ in runs[True]] and len(runs[False]) > 2
    for _, m, final in runs[False][:-1]:
        assert not final and "id_acc" in m and "phase" in m
        assert not any(k.startswith(("select/", "source/", "probe/", "report/")) or k == OBJECTIVE for k in m)
    scored, unscored = runs[True][-1][1], runs[False][-1][1]
    assert unscored["final"] == 1.0 and "report/rep/mAP" in unscored
    assert set(unscored) == set(scored)
    clock = ("phase_seconds/", "seconds", "time")  # wall-clock figures differ between any two runs
    assert {k: v for k, v in unscored.items() if not k.startswith(clock)} == {
        k: v for k, v in scored.items() if not k.startswith(clock)
    }


def test_target_names_cannot_break_metric_keys(bench):
    with pytest.raises(ValueError, match="without '/'"):
        EvalTarget("market1501/v1", bench.source.query, bench.source.gallery)
