"""The one winner rule, shared by the sweep's report and `orchestrator.best`, and the plots' trial order."""

from __future__ import annotations

import statistics

import pytest

from orchestrator.results import SettingSignal, TrialRow, pick_winner, rank, setting_signal, study_of
from orchestrator.space import Objective, parse_space
from tests.test_space import BASE


def _rows():
    return [
        TrialRow("a", 0.30, "finished", 4, {"beta": 1.0, "adv_loss": "kl"}, "/c/a", order=3),
        TrialRow("b", 0.50, "pruned", 1, {"beta": 2.0, "adv_loss": "ne"}, "/c/b", order=1),  # early rung: no
        TrialRow("c", 0.20, "finished", 4, {"beta": 3.0, "adv_loss": "kl"}, "/c/c", order=2),
        TrialRow("d", 0.90, "failed", 2, {"beta": 4.0, "adv_loss": "kl"}, "/c/d", order=4),
        TrialRow("e", 0.40, "finished", 4, {"beta": 5.0, "adv_loss": "kl"}, None, order=5),
    ]  # no checkpoint


def test_the_winner_is_the_best_finished_trial_with_a_checkpoint_by_metric_and_mode():
    assert pick_winner(_rows(), Objective("transfer_mAP", "max")).trial == "a"
    assert pick_winner(_rows(), Objective("probe/camera_acc", "min")).trial == "c"
    assert pick_winner([r for r in _rows() if r.outcome != "finished"], Objective()) is None
    assert [r.trial for r in rank(_rows(), Objective("m", "min"))][:2] == ["c", "a"]


def test_the_history_plot_study_is_in_trial_order():
    space = parse_space(BASE, "space.yaml")
    study = study_of(_rows(), space)
    assert [t.user_attrs["trial"] for t in study.trials] == ["b", "c", "a", "d", "e"]
    assert [t.state.name for t in study.trials] == ["PRUNED", "COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert study.best_trial.user_attrs["trial"] == "e" and study.best_trial.value == pytest.approx(0.4)


def test_ties_go_to_the_smaller_trial_id_whatever_order_the_rows_come_in():
    """The sweep (Tune's results) and `best` (MLflow's search) list trials in different orders; on a tie they once
    crowned different trials (4f88e91f vs 4faaa171)."""
    tied = [
        TrialRow("4faaa171", 0.5, "finished", 4, checkpoint="/c/1"),
        TrialRow("4f88e91f", 0.5, "finished", 4, checkpoint="/c/2"),
        TrialRow("00000000", 0.4, "finished", 4, checkpoint="/c/3"),
    ]
    for rows in (tied, tied[::-1], tied[1:] + tied[:1]):
        assert pick_winner(rows, Objective()).trial == "4f88e91f"
        assert [r.trial for r in rank(rows, Objective())] == ["4f88e91f", "4faaa171", "00000000"]


def test_a_diverged_trial_or_a_non_finite_objective_never_wins():
    rows = [
        TrialRow("a", float("nan"), "finished", 4, checkpoint="/c/a"),
        TrialRow("b", None, "diverged", 3, checkpoint="/c/b", note="seed 0 diverged at step 40"),
        TrialRow("c", 0.1, "finished", 4, checkpoint="/c/c"),
    ]
    assert pick_winner(rows, Objective()).trial == "c"
    assert pick_winner(rows[:2], Objective()) is None


def _paired(trial, per_seed, start="", outcome="finished"):
    return TrialRow(
        trial,
        sum(per_seed) / len(per_seed),
        outcome,
        4,
        checkpoint=f"/c/{trial}",
        per_seed=tuple(per_seed),
        start_point=start,
    )


def test_the_start_point_stays_the_winner_unless_a_trial_leads_it_by_more_than_its_standard_errors():
    """The best of many noisy trials is mostly the luckiest: a trial replaces the best start point only when its
    paired lead exceeds promote_se standard errors (the larger of its own and the pooled one)."""
    from orchestrator.results import choose_winner

    start = _paired("s", [0.40, 0.30], start="defaults")
    lucky = _paired("a", [0.47, 0.31])  # +0.04 on average, but +0.07 and +0.01: se 0.03
    steady = _paired("b", [0.46, 0.36])  # +0.06 on both seeds: its own se is 0, the pooled one is not
    worse = _paired("c", [0.35, 0.25])
    choice = choose_winner([start, lucky, worse], Objective(), promote_se=2.0)
    assert choice.row is start and choice.held_back == ("a",)
    assert "the start point `defaults`" in choice.why(2.0) and "stay behind it: a" in choice.why(2.0)
    choice = choose_winner([start, lucky, steady, worse], Objective(), promote_se=1.0)
    pooled = ((0.06**2 / 2) + 0 + 0) / 3  # variances of the leads: a 0.0018, b 0, c 0
    assert choice.row is steady and choice.se == pytest.approx((pooled / 2) ** 0.5)
    assert "ahead of the start point `defaults` by +0.0600" in choice.why(1.0)
    assert choose_winner([start, lucky, steady], Objective(), promote_se=0.0).row is steady  # plain best then
    # a pruned or failed start point is no incumbent: the best finished trial wins, as without start points
    assert choose_winner([_paired("s", [0.9, 0.9], "defaults", "pruned"), lucky, worse], Objective(), 2.0).row is lucky
    # minimising: a lead is a decrease
    low = _paired("d", [0.20, 0.10])
    assert choose_winner([_paired("s", [0.4, 0.3], "defaults"), low], Objective("m", "min"), 0.0).row is low


def test_with_one_seed_a_trial_the_winner_line_says_no_standard_error_guarded_the_lead():
    """One seed a trial leaves no paired spread: the best objective wins, and the line says so rather than print a
    standard error of 0."""
    from orchestrator.results import choose_winner

    start, better = _paired("s", [0.40], start="defaults"), _paired("a", [0.43])
    choice = choose_winner([start, better], Objective(), promote_se=2.0)
    assert choice.row is better and choice.se is None and choice.lead == pytest.approx(0.03)
    assert "no paired standard error" in choice.why(2.0) and "0.0000" not in choice.why(2.0)


def test_the_winner_is_never_worse_than_the_best_start_point():
    import random

    from orchestrator.results import choose_winner

    rng = random.Random(0)
    for _ in range(200):
        rows = [_paired(f"t{i}", [rng.random(), rng.random()], start="defaults" if i < 2 else "") for i in range(8)]
        best_start = max(r.objective for r in rows if r.start_point)
        for se in (0.0, 1.0, 2.0):
            assert choose_winner(rows, Objective(), se).row.objective >= best_start - 1e-12


def _grid(values: list[list[float]]) -> list[TrialRow]:
    """Finished trials with these per-seed objectives (one row a trial, one column a seed)."""
    return [
        TrialRow(f"t{i}", sum(v) / len(v), "finished", 8, {}, f"/ck/{i}", per_seed=tuple(v))
        for i, v in enumerate(values)
    ]


def test_setting_signal_tells_settings_that_differ_from_seeds_luck():
    import random

    rng = random.Random(0)
    seed_effect = [0.0, 0.05, -0.03]  # a seed good or bad for every setting is not noise (common random numbers)
    apart = _grid([[0.02 * i + s + rng.gauss(0, 0.002) for s in seed_effect] for i in range(8)])
    lucky = _grid([[s + rng.gauss(0, 0.02) for s in seed_effect] for _ in range(8)])
    strong, weak = setting_signal(apart), setting_signal(lucky)
    assert strong.trials == 8 and strong.seeds == 3
    assert strong.share > 0.95 and strong.p < 1e-6
    assert abs(strong.setting_sd - 0.02 * statistics.stdev(range(8))) < 0.005
    assert strong.noise_se < 0.003  # the seeds' own effect is not counted as noise
    assert weak.share < 0.5 and weak.p > 0.01
    assert (
        "mostly the luckiest" in weak.line()
        and weak.line().endswith("tell them apart")
        and "can tell these settings apart" in strong.line()
    )
    between = SettingSignal(trials=8, seeds=2, share=0.4, setting_sd=0.01, noise_se=0.012, f=1.7, p=0.03)
    assert "differ, but less than their seeds' luck" in between.line()  # real, yet smaller than the noise
    assert set(strong.metrics()) == {"search/setting_share", "search/setting_sd", "search/noise_se", "search/setting_p"}


def test_setting_signal_needs_three_finished_trials_with_seeds():
    assert setting_signal(_grid([[0.3], [0.4], [0.5]])) is None  # one seed a trial
    assert setting_signal(_grid([[0.3, 0.31], [0.4, 0.41]])) is None  # two trials
    rows = _grid([[0.3, 0.31], [0.4, 0.41], [0.5, 0.52]]) + [
        TrialRow("p", 0.9, "pruned", 3, {}, "/ck/p", per_seed=(0.9, 0.9)),  # a pruned trial's objective is earlier
    ]
    assert setting_signal(rows).trials == 3


def test_the_sweep_prints_and_logs_the_settings_share_under_its_winner(capsys):
    from types import SimpleNamespace

    from orchestrator import report
    from orchestrator.results import choose_winner

    plan = SimpleNamespace(space=parse_space(BASE, "space.yaml"), sweep="s")
    rows = _grid([[0.30 + 0.02 * i, 0.32 + 0.02 * i + 0.001 * (-1) ** i] for i in range(4)])
    report.winner(plan, choose_winner(rows, plan.space.objective))
    logged = report.settings_against_noise(rows)
    out = capsys.readouterr().out.splitlines()
    assert out[-2].startswith("winner: trial t3")
    assert out[-1].startswith("settings against noise: 100% of the spread between the 4 finished trials'")
    assert logged["search/setting_share"] == pytest.approx(1.0, abs=0.01)
    assert report.settings_against_noise(rows[:2]) == {} and not capsys.readouterr().out  # two trials: no estimate
    note = report._note(plan, rows, rows[3], {})  # the sweep run's description in MLflow
    assert "\nSettings against noise: 100% of the spread" in note
    assert note.index("**Verification**") < note.index("Settings against noise")  # the verdict stays on top
