"""Shared pretraining's bookkeeping without Ray: what a snapshot's key holds, which snapshots are worth making, a
damaged snapshot refused by its digest, and the evaluations inside pretraining replayed as a trial's reports."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from adin_core.repeats import ObjectiveWindow
from orchestrator import pretraining
from orchestrator.layout import SweepLayout
from orchestrator.plan import Target
from orchestrator.space import parse_space
from tests.test_space import BASE


def _plan(tmp_path, workers=1, files=None, **fixed):
    raw = dict(BASE, fixed={**BASE["fixed"], **fixed}, resources={"workers": workers})
    return SimpleNamespace(
        space=parse_space(raw, "space.yaml"),
        layout=SweepLayout(str(tmp_path), "sweep"),
        source="/data/src/v1",
        select=(Target("/data/sel/v1", "sel"),),
        data_versions={
            "/data/src/v1": {"files": files or {"a.parquet": "1"}},
            "/data/sel/v1": {"files": {"b.parquet": "2"}},
        },
    )


def test_a_key_changes_with_whatever_determines_pretraining_and_nothing_else(tmp_path):
    plan = _plan(tmp_path)
    config = plan.space.train_config({"adv_loss": "kl", "beta": 0.5, "prior_temperature": 1.0})
    key = pretraining.snapshot_key(plan, config, evaluate=True)
    same = [
        config.replace(beta=3.0, adv_loss="ne", i_trigger=0.9, n_trigger=0.5),
        config.replace(adv_loss="none"),
        config.replace(seed=7),
    ]  # the seed is the snapshot's folder, not its key
    assert {pretraining.snapshot_key(plan, c, evaluate=True) for c in same} == {key}
    other = [
        pretraining.snapshot_key(plan, config.replace(lr_heads=0.05), True),
        pretraining.snapshot_key(plan, config.replace(nuisance="time"), True),
        pretraining.snapshot_key(plan, config.replace(shuffle_nuisance=True), True),
        pretraining.snapshot_key(plan, config, evaluate=False),  # the verification's: no evaluations inside
        pretraining.snapshot_key(_plan(tmp_path, workers=2), config, True),
        pretraining.snapshot_key(_plan(tmp_path, files={"a.parquet": "changed"}), config, True),
    ]
    assert key not in other and len(set(other)) == len(other)


def test_snapshots_are_made_for_what_two_or_more_trainings_share_and_not_twice(tmp_path):
    plan = _plan(tmp_path)
    winner = plan.space.train_config({"adv_loss": "kl", "beta": 0.5, "prior_temperature": 1.0})
    baseline, lonely = winner.replace(adv_loss="none"), winner.replace(lr_heads=0.05)
    jobs = pretraining.jobs_for(plan, [(winner, [1000, 1001]), (baseline, [1000, 1001]), (lonely, [1000])], False)
    assert [(j.seed, j.consumers, j.config["adv_loss"]) for j in jobs] == [(1000, 2, "kl"), (1001, 2, "kl")]
    assert pretraining.jobs_for(plan, [(baseline, [1]), (baseline, [1])], False) == []  # no adversarial producer
    loc = pretraining.snapshot_location(plan, jobs[0].key, 1000)
    pretraining.save(loc, {"w": torch.ones(2)}, {"reports": [], "epochs": 4.0})
    assert [j.seed for j in pretraining.jobs_for(plan, [(winner, [1000, 1001]), (baseline, [1000, 1001])], False)] == [
        1001
    ]  # the stored one is not made again (a resumed sweep)
    assert pretraining.available(plan, baseline, [1000], False) and not pretraining.available(
        plan, winner, [1000, 1001], False
    )


def test_a_damaged_snapshot_is_refused_by_its_digest(tmp_path):
    plan = _plan(tmp_path)
    loc = pretraining.snapshot_location(plan, "k", 0)
    pretraining.save(loc, {"w": torch.arange(4.0)}, {"reports": [], "epochs": 1.5})
    state, record = pretraining.load(loc)
    assert torch.equal(state["w"], torch.arange(4.0)) and record["epochs"] == 1.5 and len(record["sha256"]) == 64
    path = tmp_path / "sweep" / "pretrained" / "k" / "seed-0" / "state.pt"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(pretraining.SnapshotError, match="does not match the sha256"):
        pretraining.load(loc)


def test_the_evaluations_inside_pretraining_are_replayed_as_the_seeds_mean():
    records = [
        {"reports": [{"transfer_mAP": 0.2, "evaluation": 1.0, "phase": "pretrain_id"}]},
        {"reports": [{"transfer_mAP": 0.4, "evaluation": 1.0, "phase": "pretrain_id"}]},
    ]
    (report,) = pretraining.replay(records, ObjectiveWindow("transfer_mAP", 1, 2).aggregated)
    assert report["transfer_mAP"] == pytest.approx(0.3) and report["seed1/transfer_mAP"] == 0.4
    assert report["evaluation"] == 1.0 and report["final"] == 0.0
    with pytest.raises(pretraining.SnapshotError, match="different numbers of evaluations"):
        pretraining.replay([records[0], {"reports": []}], ObjectiveWindow("transfer_mAP", 1, 2).aggregated)
