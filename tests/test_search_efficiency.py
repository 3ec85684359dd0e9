"""bench/search_efficiency.py's bookkeeping: epochs counted in the order trials ended, the budget cut, only trials
that trained their whole budget competing for "best so far"; and the pure parts of select_noise and reach_power."""

import importlib.util
import math
import pathlib
import sys

import pytest

from orchestrator.results import TrialRow
from orchestrator.space import Objective


def _bench(name):
    """A bench script as a module (bench/ is not a package); registered, so dataclasses and the scripts' own
    imports of each other find it."""
    spec = importlib.util.spec_from_file_location(name, pathlib.Path(__file__).parents[1] / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


se = _bench("search_efficiency")


def _t(name, ended, epochs, objective, finished=True):
    row = TrialRow(name, objective, "finished" if finished else "pruned", checkpoint=f"/ckpt/{name}")
    return se.TrialEnd(row, ended, epochs)


def test_best_so_far_against_epochs_spent_within_the_budget():
    ends = [
        _t("a", 1, 32, 0.20),
        _t("b", 2, 8, 0.90, finished=False),
        _t("c", 3, 32, 0.25),
        _t("d", 4, 32, 0.22),
        _t("e", 5, 32, 0.40),
    ]
    points = se.curve(ends, budget=104, objective=Objective(mode="max"))
    assert [(spent, t.objective, t.trial) for spent, t in points] == [
        (32, 0.20, "a"),
        (40, 0.20, "a"),
        (72, 0.25, "c"),
        (104, 0.25, "c"),
    ]  # e is past the budget; b was stopped
    assert se.epochs_to_reach(points, 0.25, Objective(mode="max")) == 72
    assert se.epochs_to_reach(points, 0.30, Objective(mode="max")) is None


def test_minimised_objectives_count_lower_as_better():
    points = se.curve([_t("a", 1, 10, 0.5), _t("b", 2, 10, 0.3)], budget=100, objective=Objective(mode="min"))
    assert [t.objective for _, t in points] == [0.5, 0.3]
    assert se.epochs_to_reach(points, 0.4, Objective(mode="min")) == 20


def test_steer_counts_only_the_trials_the_search_chose_in_sd_of_random_search():
    random = [({"beta": b}, v) for b, v in [(0.1, 0.30), (0.2, 0.32), (0.3, 0.34), (0.4, 0.36)]]  # sd 0.0258
    searched = [({"beta": 0.1}, 0.30), ({"beta": 0.2}, 0.32), ({"beta": 0.05}, 0.37), ({"beta": 0.06}, 0.39)]
    value, own = se.steer(random, searched, 1.0)
    assert own == 2  # the shared random start is not the search's choice
    assert value == pytest.approx((0.38 - 0.33) / 0.0258199, rel=1e-4)
    assert se.steer(random, searched, -1.0)[0] == pytest.approx(-value)  # lower is better: the same lead counts against
    value, own = se.steer(random, searched[:3], 1.0)
    assert own == 1 and math.isnan(value)  # one trial of its own says nothing


def test_each_method_gets_its_own_space_file(tmp_path):
    base = {
        "name": "thresholds",
        "search": {"sampler": "tpe", "num_samples": 8, "seed": 0, "seeds": 2},
        "verify": {"seeds": 3},
    }
    path = se.write_space(base, "random", 2, 5, str(tmp_path))
    raw = se.yaml.safe_load(open(path))
    assert raw["name"] == "search-eff-random-s2"
    assert raw["search"] == {"sampler": "random", "num_samples": 5, "seed": 2, "seeds": 2}
    assert raw["verify"] == {"seeds": 0} and base["verify"] == {"seeds": 3}  # the base is left as it was
    with pytest.raises(KeyError):
        se.write_space(base, "hyperband", 0, 5, str(tmp_path))
    # the TPE arms get the random start they are given, whatever their trial count; random search takes none
    asha = se.yaml.safe_load(open(se.write_space(base, "tpe+asha", 0, 16, str(tmp_path), random_start=4)))
    assert asha["search"]["num_samples"] == 16 and asha["search"]["startup_trials"] == 4
    rnd = se.yaml.safe_load(
        open(
            se.write_space(
                {**base, "search": {**base["search"], "startup_trials": 3}},
                "random",
                0,
                8,
                str(tmp_path),
                random_start=4,
            )
        )
    )
    assert "startup_trials" not in rnd["search"]


def test_rank_agreement_by_evaluation():
    """What a rung at each evaluation can know: identical scores (trials still the same model) say so, a ranking
    that is the final one reversed reads -1, the final one +1; evaluations too few trials reached are left out."""
    curves = [
        {1: 0.1, 2: 0.9, 3: 0.1, 4: 0.1},
        {1: 0.1, 2: 0.5, 3: 0.2, 4: 0.2},
        {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.3},
        {1: 0.1, 4: 0.4},
    ]
    assert se.agreement(curves, last=4) == {1: None, 2: pytest.approx(-1.0), 3: pytest.approx(1.0)}
    assert se.agreement(curves[:2], last=4) == {}


def test_select_noise_scores_random_trials_on_every_select_target(tmp_path):
    sn = _bench("select_noise")
    import yaml

    from orchestrator.space import load_space

    base = yaml.safe_load(open(pathlib.Path(__file__).parents[1] / "search_spaces" / "thresholds.yaml"))
    path = sn.write_space(base, "sn", ["synthetic:tiny/select", "synthetic:tiny/report"], 5, 3, str(tmp_path))
    space = load_space(path)  # a valid space: random, no ASHA, no verification, no start points, the same seeds
    assert space.search.sampler == "random" and space.search.num_samples == 5 and space.search.seed == 3
    assert space.search.seeds == base["search"]["seeds"] and not space.search.start_from
    assert space.scheduler.type == "none" and space.verify.seeds == 0
    assert space.targets.select == ("synthetic:tiny/select", "synthetic:tiny/report")
    assert sn.windowed({1: 0.1, 2: 0.2, 3: 0.3, 4: 0.7}, 4) == pytest.approx(0.4)  # the last 3 up to evaluation 4
    assert sn.windowed({1: 0.1, 2: 0.2}, 1) == pytest.approx(0.1)  # fewer before it: those there are


def test_reach_power_counts_the_shipped_budget_and_tells_a_sure_search_from_chance():
    """bench/reach_power.py: the budget as search_efficiency counts it, and the model's two ends: a search whose own
    first draw is far better than anything random draws meets the headline every time when it shares no random start;
    one no better than chance, sharing half its draws with random search, about as often as random's best falls in
    the shared half and survives the rung."""
    from orchestrator.space import load_space

    rp = _bench("reach_power")
    b = rp.budget_of(load_space("search_spaces/thresholds.yaml"), None)
    assert (b.samples, b.random_start, b.pretrain, b.full, b.stopped, b.reduction_factor) == (8, 4, 8, 24, 8, 2)
    assert b.random_epochs == 200
    sure = rp.Budget(8, 0, 8, 24, 8, 2)
    assert rp.chance(sure, rho=1.0, steer=50.0, draws=200) == 1.0
    blind = rp.chance(b, rho=0.5, steer=0.0, draws=4000)
    assert 0.3 < blind < 0.5  # random's best is in the shared 4 half the time, and must survive the rung
    assert rp.chance(b, rho=0.5, steer=3.0, draws=4000) > blind
    assert rp.median_met(0.5, 3) == pytest.approx(0.5) and rp.median_met(1.0, 3) == 1.0
    assert rp.median_met(0.0, 3) == 0.0
