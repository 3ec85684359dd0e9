"""Repeats with common random numbers: a trial's seeds train in turns, each exactly as it would alone."""

from __future__ import annotations

import pytest

from adin_core.config import TrainConfig
from adin_core.data.memory import EvalTarget, TrainingData, held_out_val
from adin_core.data.synthetic import generate_benchmark
from adin_core.evaluation import EvaluationHook, Evaluator
from adin_core.repeats import ObjectiveWindow, SeedGroup, aggregate, averaged_name, seed_list
from adin_core.train import ADINTrainer


@pytest.fixture(scope="module")
def setup():
    bench = generate_benchmark("tiny", seed=0)
    train, val = held_out_val(bench.source.train)
    data = TrainingData(train, val, "camera", name="tiny")
    sel = bench.targets["select"]
    cfg = TrainConfig(
        backbone="small_cnn",
        image_height=32,
        image_width=16,
        batch_size=32,
        epochs=2,
        pretrain_id_epochs=0.5,
        pretrain_nuisance_epochs=0.25,
        check_every=5,
        refresh_steps=5,
        seed=3,
    )
    return data, sel, cfg


def _evaluator(sel) -> Evaluator:
    return Evaluator(select=[EvalTarget("sel", sel.query, sel.gallery)], every_steps=8)


def test_each_seed_trains_as_it_would_alone_and_the_group_reports_their_mean(setup):
    data, sel, cfg = setup
    seeds = seed_list(cfg, 2)
    assert seeds == [3, 4]
    reports = []
    group = SeedGroup(
        [ADINTrainer(cfg.replace(seed=s), data) for s in seeds],
        _evaluator(sel),
        lambda trainers, reps, metrics, final: reports.append((metrics, final)),
    )
    group.run()
    alone = []
    trainer = ADINTrainer(
        cfg.replace(seed=4), data, hooks=[EvaluationHook(_evaluator(sel), lambda t, r, m, f: alone.append(m))]
    )
    trainer.run()
    assert reports[-1][1] and not any(final for _, final in reports[:-1])
    assert len(reports) == len(alone)  # one group report per evaluation of a seed
    last = reports[-1][0]
    assert last["seed1/transfer_mAP"] == pytest.approx(alone[-1]["transfer_mAP"], abs=1e-9)  # seed 4, in turns
    assert last["transfer_mAP"] == pytest.approx((last["seed0/transfer_mAP"] + last["seed1/transfer_mAP"]) / 2)
    assert last["transfer_mAP_se"] == pytest.approx(abs(last["seed0/transfer_mAP"] - last["seed1/transfer_mAP"]) / 2)
    assert last["seeds"] == 2.0 and last["final"] == 1.0


def test_aggregate_of_one_seed_is_that_seed():
    m = {"transfer_mAP": 0.3, "phase": "done", "id_acc": 0.9}
    assert aggregate([m]) == {**m, "seeds": 1.0}


def test_the_window_reports_each_seeds_mean_of_its_last_evaluations_and_a_restore_rebuilds_it():
    window = ObjectiveWindow("transfer_mAP", 2, 2)
    assert window.key == averaged_name("transfer_mAP", 2) == "transfer_mAP_avg2"
    history = [window.aggregated([{"transfer_mAP": a}, {"transfer_mAP": b}]) for a, b in [(0.1, 0.5), (0.3, 0.5)]]
    third = window.aggregated([{"transfer_mAP": 0.6}, {"transfer_mAP": 0.2}])
    assert history[0]["seed0/transfer_mAP_avg2"] == pytest.approx(0.1)  # one evaluation so far: itself
    assert third["seed0/transfer_mAP_avg2"] == pytest.approx(0.45) and third["seed1/transfer_mAP_avg2"] == 0.35
    assert third["transfer_mAP_avg2"] == pytest.approx(0.4) and third["transfer_mAP_avg2_se"] == pytest.approx(0.05)
    assert third["transfer_mAP"] == pytest.approx(0.4) and third["seed0/transfer_mAP"] == 0.6  # the raw one stays
    resumed = ObjectiveWindow("transfer_mAP", 2, 2)
    resumed.restore(history)  # a checkpoint's reports: the same window as the run that never stopped
    assert resumed.aggregated([{"transfer_mAP": 0.6}, {"transfer_mAP": 0.2}]) == third
    one = ObjectiveWindow("transfer_mAP", 3, 1)
    one.restore([{"transfer_mAP": 0.2}, {"transfer_mAP": 0.4}])  # one seed: its reports carry the value itself
    assert one.aggregated([{"transfer_mAP": 0.9}])["transfer_mAP_avg3"] == pytest.approx(0.5)
    assert ObjectiveWindow("transfer_mAP", 1, 2).aggregated([{"transfer_mAP": 0.1}, {"transfer_mAP": 0.3}]) == (
        aggregate([{"transfer_mAP": 0.1}, {"transfer_mAP": 0.3}])
    )
    with pytest.raises(ValueError, match="average_last"):
        ObjectiveWindow("transfer_mAP", 0, 1)


def test_a_group_averaging_its_last_evaluations_reports_both_values(setup):
    data, sel, cfg = setup
    reports = []
    group = SeedGroup(
        [ADINTrainer(cfg.replace(seed=s), data) for s in seed_list(cfg, 2)],
        Evaluator(select=[EvalTarget("sel", sel.query, sel.gallery)], every_steps=3),
        lambda trainers, reps, metrics, final: reports.append(metrics),
        average_last=2,
    )
    group.run()
    raw = [(m["seed0/transfer_mAP"], m["seed1/transfer_mAP"]) for m in reports]
    assert len(raw) >= 3
    for i, m in enumerate(reports):
        window = raw[max(0, i - 1) : i + 1]
        for k in range(2):
            assert m[f"seed{k}/transfer_mAP_avg2"] == pytest.approx(sum(w[k] for w in window) / len(window))
        assert m["transfer_mAP_avg2"] == pytest.approx(
            (m["seed0/transfer_mAP_avg2"] + m["seed1/transfer_mAP_avg2"]) / 2
        )
