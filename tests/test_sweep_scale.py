"""bench/sweep_scale.py: the stand-in's space is one the sweep accepts and searches as the bench says (no shared
pretraining, ASHA over --evals evaluations), its reports read as a real trial's do, and (rehearsal tier) the whole
sweep runs around the stand-in trial through `Sweep(trial=..., callbacks=...)`."""

import argparse
import importlib.util
import pathlib
import sys

import pytest

from adin_core.repeats import aggregate
from orchestrator.plan import make_plan
from orchestrator.results import per_seed_values
from orchestrator.sweep import parse_args
from orchestrator.tracking import schema

_spec = importlib.util.spec_from_file_location(
    "sweep_scale", pathlib.Path(__file__).parents[1] / "bench" / "sweep_scale.py"
)
ss = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = ss
_spec.loader.exec_module(ss)


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    """The plan of the bench's space at 10 trials x 8 evaluations, 4 at once (its data generated once)."""
    tmp = tmp_path_factory.mktemp("sweep_scale")
    args = argparse.Namespace(trials=10, evals=8, concurrent=4, workers=1, cpus_per_trial=None)
    space = ss.write_space(args, str(tmp))
    common = ["--storage", str(tmp / "s"), "--data-root", str(tmp / "d")]
    return make_plan(parse_args(["--space", space, *common, "--tracking-uri", f"sqlite:///{tmp}/m.db"]))


def test_the_written_space_is_a_valid_sweep_that_trains_nothing_in_common(plan):
    space = plan.space
    assert space.search.num_samples == 10 and space.search.max_concurrent == 4 and space.search.seeds == ss.SEEDS
    assert space.scheduler.type == "asha" and space.scheduler.max_t == 8
    assert not space.shares_pretraining  # lr_backbone acts from the first step: no pretraining stage to measure
    assert space.verify.seeds == 0
    assert [name for name, _ in space.search.start_from] == ["defaults"]
    assert 4 * space.resources.cpus_per_worker + 4 * 0.01 <= 2.0  # the slots fit on 2 CPUs


def test_the_stand_in_reports_what_a_real_trial_reports(plan):
    corner = {p.name: p.corners()[0] for p in plan.space.params}
    report = ss.curve(ss.quality(plan, corner), "k", 8, 8)
    seeds = per_seed_values(report, "transfer_mAP")
    assert len(seeds) == ss.SEEDS
    assert report["transfer_mAP"] == pytest.approx(sum(seeds) / len(seeds))
    expected = aggregate([{"transfer_mAP": v} for v in seeds])
    assert report["transfer_mAP_se"] == pytest.approx(expected["transfer_mAP_se"])
    assert all(schema.EVALUATION != k for k in report)  # the worker adds the index and `final` itself


def test_the_curve_rises_and_ranks_settings_by_their_distance_from_the_optimum(plan):
    params = [p for p in plan.space.params if p.type != "categorical"]

    def at(u):  # every parameter at the same normalised position
        out = {}
        for p in params:
            lo, hi = float(p.low), float(p.high)
            out[p.name] = lo * (hi / lo) ** u if p.log else lo + u * (hi - lo)
        return out

    near, far = ss.quality(plan, at(ss.OPTIMUM)), ss.quality(plan, at(1.0))
    assert near > far + 0.1
    early, late = (ss.curve(near, "k", e, 20)["transfer_mAP"] for e in (1, 20))
    assert late > early + 0.1
    assert ss.curve(near, "k", 5, 20) == ss.curve(near, "k", 5, 20)  # seeded: a rerun reports the same


@pytest.mark.rehearsal
def test_the_bench_runs_the_sweep_around_the_stand_in(tmp_path, capsys):
    code = ss.main(["--trials", "3", "--evals", "2", "--eval-s", "0.2", "--concurrent", "2", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "== sweep_scale: 3 trials" in out and "driver time per result" in out
    assert "winner: trial" in out  # the sweep's own wrap-up ran on the stand-in's checkpoints
