"""The verification's bookkeeping and its sequential verdict: one Tune trial per (arm, fresh seed), gathered back
into paired arms; rounds of seeds until winner - baseline is distinguishable or the seed budget is spent, each look
at 95% / looks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from adin_core.evaluation import REPORT_MAP
from adin_core.stats import detectable_effect
from orchestrator import verify
from orchestrator.space import parse_space
from tests.test_space import BASE


def _result(arm, k, value, *, final=True, error=None, shared=0.0):
    return SimpleNamespace(
        config={"job": f"{arm}:{k}", "params": {}},
        error=error,
        metrics={REPORT_MAP: value, "final": final, "pretraining/shared_epochs": shared},
    )


def _plan(**verify_settings):
    raw = dict(BASE, verify=verify_settings, targets={**BASE["targets"], "report": ["synthetic:tiny/report"]})
    return SimpleNamespace(space=parse_space(raw, "space.yaml"))


def test_per_seed_trials_are_paired_by_seed_index_whatever_order_they_finish_in():
    plan = _plan(seeds=3)
    values = {"winner": [0.30, 0.32, 0.28], "baseline": [0.25, 0.31, 0.27], "default": [0.29, 0.35, 0.26]}
    per_seed: dict = {}
    shared = verify.collect(
        [_result(arm, k, v[k], shared=4.0) for arm, v in values.items() for k in (2, 0, 1)], per_seed
    )
    assert shared == 36.0
    out = verify.verdict(plan, {"beta": 0.5}, per_seed, [3])
    assert out.per_seed == values
    assert out.versus_baseline.mean == pytest.approx((0.05 + 0.01 + 0.01) / 3)
    assert out.versus_baseline.positive == 3 and out.versus["default"].positive == 2
    assert out.versus_baseline.level == 0.95 and out.looks == 1


def test_a_missing_or_unfinished_seed_leaves_the_winner_unverified():
    plan = _plan(seeds=2)
    full = [_result(arm, k, 0.3) for arm in ("winner", "baseline", "default") for k in range(2)]
    per_seed: dict = {}
    verify.collect([r for r in full if r.config["job"] != "baseline:1"], per_seed)
    with pytest.raises(verify.VerificationError, match="no result for baseline seed 1"):
        verify.verdict(plan, {"beta": 0.5}, per_seed, [2])
    full[3] = _result("baseline", 1, 0.3, final=False, error=RuntimeError("worker died\ntraceback"))
    with pytest.raises(verify.VerificationError, match="'baseline', seed 1, did not finish: worker died$"):
        verify.collect(full, {})


def test_the_shipped_default_is_not_trained_again_when_it_is_the_winner():
    plan = _plan(seeds=2)
    assert verify.trained_arms(plan, {"beta": 0.5}) == ("winner", "baseline", "default")
    defaults = {"beta": 0.1, "adv_loss": "kl", "prior_temperature": 1.0}  # BASE's searched fields at TrainConfig's
    assert verify.trained_arms(plan, defaults) == ("winner", "baseline")
    per_seed: dict = {}
    verify.collect(
        [
            _result(a, k, v)
            for a, vs in {"winner": [0.4, 0.5], "baseline": [0.3, 0.45]}.items()
            for k, v in enumerate(vs)
        ],
        per_seed,
    )
    out = verify.verdict(plan, defaults, per_seed, [2])
    assert out.default_is_winner and out.versus["default"].mean == 0.0
    assert any("the winner is the shipped default" in line for line in out.lines())


def test_rounds_add_seeds_until_distinguishable_each_look_at_a_bonferroni_level():
    """Seeds 4, then 2 at a time up to 10: 4 planned looks, each interval at 98.75%. The run stops at the first
    look whose interval excludes 0, and says how small a gain its seeds could have shown."""
    plan = _plan(seeds=4, max_seeds=10, step=2)
    assert plan.space.verify.looks == 4 and plan.space.verify.level == pytest.approx(0.9875)
    gains = [0.06, 0.02, 0.08, -0.01, 0.05, 0.07, 0.04, 0.06, 0.05, 0.03]  # winner - baseline per seed
    rounds_seen = []

    class Round:
        def __init__(self, seeds):
            self.seeds = seeds

        def fit(self):
            rounds_seen.append(list(self.seeds))
            return [_result("winner", k, 0.4 + gains[k]) for k in self.seeds] + [
                _result(a, k, 0.4) for a in ("baseline", "default") for k in self.seeds
            ]

    pretrained = []
    original = verify.build_round
    verify.build_round = lambda plan, params, r, seeds, callbacks: Round(seeds)
    try:
        out = verify.run(
            plan, {"beta": 0.5}, [], stopped=lambda: False, pretrain=pretrained.append, log=lambda *_: None
        )
    finally:
        verify.build_round = original
    assert rounds_seen == pretrained == [[0, 1, 2, 3], [4, 5], [6, 7]]  # stopped at 8 seeds: distinguishable
    assert out.seeds == 8 and out.rounds == [4, 6, 8] and out.versus_baseline.distinguishable
    assert out.versus_baseline.level == pytest.approx(0.9875)
    four = verify.verdict(
        plan,
        {"beta": 0.5},
        {a: {k: 0.4 + (gains[k] if a == "winner" else 0) for k in range(4)} for a in ("winner", "baseline", "default")},
        [4],
    )
    assert not four.versus_baseline.distinguishable  # at 4 seeds the 98.75% interval still held 0
    assert out.detectable == pytest.approx(detectable_effect(out.versus_baseline.sd, 8, alpha=0.0125))
    assert "(98.75% interval)" in out.lines()[0] and "a gain over the baseline of" in out.lines()[-1]


def test_a_winner_below_the_baseline_on_most_seeds_is_said_plainly():
    plan = _plan(seeds=3)
    per_seed: dict = {}
    verify.collect(
        [_result("winner", k, 0.3) for k in range(3)]
        + [_result(a, k, 0.35) for a in ("baseline", "default") for k in range(3)],
        per_seed,
    )
    out = verify.verdict(plan, {"beta": 0.5}, per_seed, [3])
    assert out.lost_to_baseline and out.lines()[0].startswith(
        "WARNING: the winner scored below the identity-only baseline on 3 of 3 fresh seeds"
    )


def test_a_rounds_seeds_are_spread_over_the_trial_slots_and_read_back_per_seed():
    """Each trial pays Ray's start-up once: on 2 slots each arm's seeds train in one trial; with a slot for every
    (arm, seed), each is its own trial."""
    assert verify.jobs(("winner", "baseline"), [0, 1, 2, 3, 4, 5], 2) == ["winner:0,1,2,3,4,5", "baseline:0,1,2,3,4,5"]
    assert verify.jobs(("winner", "baseline", "default"), [6, 7], 2) == ["winner:6,7", "baseline:6,7", "default:6,7"]
    assert verify.jobs(("winner", "baseline"), [0, 1, 2], 16) == [
        "winner:0",
        "winner:1",
        "winner:2",
        "baseline:0",
        "baseline:1",
        "baseline:2",
    ]
    assert verify.jobs(("winner", "baseline"), [0, 1, 2, 3], 4) == [
        "winner:0,2",
        "winner:1,3",
        "baseline:0,2",
        "baseline:1,3",
    ]
    per_seed: dict = {}
    many = SimpleNamespace(
        config={"job": "winner:1,3"},
        error=None,
        metrics={
            REPORT_MAP: 0.5,
            "seed0/" + REPORT_MAP: 0.4,
            "seed1/" + REPORT_MAP: 0.6,
            "final": 1.0,
            "pretraining/shared_epochs": 8.0,
        },
    )
    assert verify.collect([many], per_seed) == 8.0
    assert per_seed == {"winner": {1: 0.4, 3: 0.6}}
