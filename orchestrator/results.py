"""A sweep's outcome: its trials as rows (from Tune's results or from MLflow), the one rule that picks the winner
(the sweep's report and `orchestrator.best` both use it), and the plots of the search."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import optuna

from orchestrator.space import Objective, SearchSpace
from orchestrator.tracking import schema


@dataclass(frozen=True)
class TrialRow:
    trial: str
    objective: float | None
    outcome: str  # finished | pruned | diverged | failed | killed (see schema.OUTCOMES)
    evals: int = 0
    params: dict[str, Any] = field(default_factory=dict)  # the searched parameters
    checkpoint: str | None = None  # URI
    order: float = 0.0  # when the trial started: plots draw the search in this order
    probe: float | None = None  # the camera probe's accuracy at the trial's last evaluation
    spread: float | None = None  # the objective's standard error over the trial's seeds (search.seeds > 1)
    note: str = ""  # why it ended as it did, when that needs saying (a diverged trial's seed, step and losses)
    per_seed: tuple[float, ...] = ()  # the objective on each of the trial's seeds (the same seeds for every trial)
    start_point: str = ""  # the name of the start point it is (search.start_from), if it is one


def _order(objective: Objective):
    """Best first, equal objectives by trial id: the one order of the leaderboard and the winner, whatever order
    the rows came in (Tune's results and MLflow's search list trials differently)."""
    sign = -1.0 if objective.mode == "max" else 1.0
    return lambda r: (r.objective is None, sign * (r.objective or 0.0), r.trial)


@dataclass(frozen=True)
class WinnerChoice:
    """What the winner rule chose, and why (printed under the leaderboard)."""

    row: TrialRow | None
    incumbent: TrialRow | None = None  # the best start point that finished
    lead: float = 0.0  # the winner's mean paired lead over the incumbent, in the objective's direction
    se: float | None = None  # its standard error; None: one seed a trial, no paired spread to weigh the lead by
    held_back: tuple[str, ...] = ()  # trials ahead of the incumbent by less than promote_se standard errors

    def why(self, promote_se: float) -> str:
        if self.row is None:
            return "no trial finished"
        if self.incumbent is None:
            return "the best finished trial (no start point finished)"
        if self.row is self.incumbent:
            held = (
                f"; {len(self.held_back)} trial(s) ahead of it by less than {promote_se:g} standard errors of their "
                f"paired lead stay behind it: {', '.join(self.held_back)}"
                if self.held_back
                else ""
            )
            return f"the start point `{self.incumbent.start_point}`{held}"
        if self.se is None:
            return (
                f"ahead of the start point `{self.incumbent.start_point}` by {self.lead:+.4f}, with one seed a trial: "
                f"no paired standard error, so the best objective wins and promote_se {promote_se:g} cannot hold "
                "back a lead inside the noise (search.seeds >= 2 lets it)"
            )
        return (
            f"ahead of the start point `{self.incumbent.start_point}` by {self.lead:+.4f} (standard error "
            f"{self.se:.4f} over the paired seeds: more than {promote_se:g} of them)"
        )


def _eligible(rows: Iterable[TrialRow]) -> list[TrialRow]:
    """Trials that trained their whole budget (a pruned trial's objective is from an earlier rung, not comparable),
    left a checkpoint and a finite objective (a diverged trial reports none)."""
    return [
        r
        for r in rows
        if r.outcome == "finished" and r.objective is not None and r.checkpoint and math.isfinite(r.objective)
    ]


def choose_winner(rows: Iterable[TrialRow], objective: Objective, promote_se: float = 0.0) -> WinnerChoice:
    """The one winner rule, of the sweep's report and `orchestrator.best` alike.

    Among the trials that trained their whole budget, the best start point (search.start_from) is the incumbent.
    Another trial wins only if it leads the incumbent on their paired seeds by more than `promote_se` standard
    errors of that lead: with a few seeds a trial, the best of many noisy trials is mostly the luckiest, and a
    setting no better than the one we ship must not be crowned over it. The standard error is the larger of the
    trial's own (sd of its per-seed leads / sqrt(seeds)) and the one pooled over every finished trial, so two seeds
    that happen to agree do not make a lead look certain. Among the trials that pass, the best objective wins.
    Without a start point that finished, or with one seed a trial (no paired spread), the best objective wins.
    Ties go to the smaller trial id."""
    eligible = sorted(_eligible(rows), key=_order(objective))
    if not eligible:
        return WinnerChoice(None)
    starts = [r for r in eligible if r.start_point]
    if not starts:
        return WinnerChoice(eligible[0])
    incumbent = starts[0]
    sign = 1.0 if objective.mode == "max" else -1.0
    k = len(incumbent.per_seed)
    leads = {
        r.trial: [sign * (a - b) for a, b in zip(r.per_seed, incumbent.per_seed)]
        for r in eligible
        if r is not incumbent and len(r.per_seed) == k
    }
    if k < 2 or not leads:
        return WinnerChoice(eligible[0], incumbent, sign * (eligible[0].objective - incumbent.objective))
    variances = {t: float(np_var(d)) for t, d in leads.items()}
    pooled = sum(variances.values()) / len(variances)
    passed, held = [], []
    for r in eligible:
        if r is incumbent or r.trial not in leads:
            continue
        lead, se = sum(leads[r.trial]) / k, math.sqrt(max(variances[r.trial], pooled) / k)
        if lead > promote_se * se and lead > 0:
            passed.append((r, lead, se))
        elif lead > 0:
            held.append(r.trial)
    if not passed:
        return WinnerChoice(incumbent, incumbent, held_back=tuple(held))
    row, lead, se = min(passed, key=lambda x: _order(objective)(x[0]))
    return WinnerChoice(row, incumbent, lead, se, tuple(held))


@dataclass(frozen=True)
class SettingSignal:
    """How much of the spread between the finished trials' objectives comes from their settings, and how much from
    how each setting fared on its seeds.

    The trials train the same seeds (common random numbers), so a seed that is good for every setting is not noise;
    what is noise is a setting's luck on a seed. A two-way analysis of variance of the trials x seeds objectives
    separates the two. `share` is the estimated part of the variance of the trials' mean objectives that the
    settings explain: near 0, the best trial is the luckiest one, and no search (nor early stopping, which ranks on
    the same noise sooner) can do better than chance; the winner rule's incumbent then stays, as it should."""

    trials: int
    seeds: int
    share: float  # 0..1: the settings' estimated share of the variance of the trials' mean objectives
    setting_sd: float  # the estimated sd of the settings' own mean objectives (0 when the noise explains it all)
    noise_se: float  # the sd of one trial's mean objective from its seeds' luck (setting x seed)
    f: float  # the settings' F statistic
    p: float  # its p-value: no difference between the settings

    def line(self) -> str:
        remedy = (
            "more seeds a trial (search.seeds) or a space whose settings differ more would let a search tell them apart"
        )
        if self.p >= 0.05:
            verdict = "they do not differ beyond their seeds' luck (at 5%): the best trial is mostly the luckiest; "
        elif self.share < 0.5:
            verdict = "they differ, but less than their seeds' luck moves them: the best trial is partly the luckiest; "
        else:
            verdict, remedy = "the search can tell these settings apart", ""
        verdict += remedy
        return (
            f"settings against noise: {100 * self.share:.0f}% of the spread between the {self.trials} finished "
            f"trials' objectives is their settings (sd {self.setting_sd:.4f} between settings, {self.noise_se:.4f} "
            f"from a trial's {self.seeds} seeds; F {self.f:.2f}, p {self.p:.2g}): {verdict}"
        )

    def metrics(self) -> dict[str, float]:
        return {
            "search/setting_share": self.share,
            "search/setting_sd": self.setting_sd,
            "search/noise_se": self.noise_se,
            "search/setting_p": self.p,
        }


def setting_signal(rows: Iterable[TrialRow]) -> SettingSignal | None:
    """The settings' share of the finished trials' spread (`SettingSignal`); None with fewer than 3 finished trials
    or one seed a trial (nothing to tell a setting's luck from the setting)."""
    from scipy.stats import f as f_dist

    eligible = [r for r in _eligible(rows) if len(r.per_seed) >= 2]
    if not eligible:
        return None
    k = max({len(r.per_seed) for r in eligible}, key=lambda n: sum(len(r.per_seed) == n for r in eligible))
    y = [list(r.per_seed) for r in eligible if len(r.per_seed) == k]
    n = len(y)
    if n < 3:
        return None
    grand = sum(map(sum, y)) / (n * k)
    trial_means = [sum(row) / k for row in y]
    seed_means = [sum(row[j] for row in y) / n for j in range(k)]
    ms_settings = k * sum((m - grand) ** 2 for m in trial_means) / (n - 1)
    ms_noise = sum((y[i][j] - trial_means[i] - seed_means[j] + grand) ** 2 for i in range(n) for j in range(k)) / (
        (n - 1) * (k - 1)
    )
    if ms_noise <= 0.0:
        f, p, share = (math.inf, 0.0, 1.0) if ms_settings > 0 else (0.0, 1.0, 0.0)
    else:
        f = ms_settings / ms_noise
        p = float(f_dist.sf(f, n - 1, (n - 1) * (k - 1)))
        share = max(0.0, 1.0 - 1.0 / f) if f > 0 else 0.0
    return SettingSignal(
        trials=n,
        seeds=k,
        share=share,
        setting_sd=math.sqrt(max(0.0, ms_settings - ms_noise) / k),
        noise_se=math.sqrt(ms_noise / k),
        f=f,
        p=p,
    )


def np_var(values: Sequence[float]) -> float:
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1)


def pick_winner(rows: Iterable[TrialRow], objective: Objective, promote_se: float = 0.0) -> TrialRow | None:
    """The winner's row (`choose_winner`), or None when no trial finished."""
    return choose_winner(rows, objective, promote_se).row


def rank(rows: Sequence[TrialRow], objective: Objective) -> list[TrialRow]:
    """Best first (ties by trial id); trials without an objective last."""
    return sorted(rows, key=_order(objective))


def rows_from_results(results, space: SearchSpace, checkpoint_uri) -> list[TrialRow]:
    """Tune's ResultGrid as rows. A trial that ended without its final report was pruned (or stopped by an
    interrupt: `interrupted` marks the ones that did not end)."""
    rows = []
    for r in results:
        m = r.metrics or {}
        if r.error:
            outcome = "failed"
        elif m.get(schema.DIVERGED):
            outcome = "diverged"
        elif m.get(schema.FINAL):
            outcome = "finished"
        else:
            outcome = "pruned"
        ckpt = m.get("checkpoint_path")
        rows.append(
            TrialRow(
                trial=str(m.get("trial_id") or (r.path or "?").rsplit("_", 1)[-1]),
                objective=m.get(space.objective.key),
                outcome=outcome,
                evals=schema.evaluation_of(m),
                params=space.sampled(r.config or {}),
                checkpoint=checkpoint_uri(ckpt) if ckpt else None,
                order=float(m.get("timestamp", 0)) - float(m.get("time_total_s", 0)),
                probe=m.get("probe/camera_acc"),
                spread=m.get(f"{space.objective.key}_se"),
                note=str(m.get(schema.DIVERGED_WHY, "")),
                per_seed=per_seed_values(m, space.objective.key),
                start_point=str((r.config or {}).get(schema.START_POINT_KEY, "")),
            )
        )
    return rows


def per_seed_values(metrics: dict[str, Any], metric: str) -> tuple[float, ...]:
    """The objective on each of a trial's seeds (`seed<k>/<metric>`, reported when it trains several)."""
    out = []
    while f"seed{len(out)}/{metric}" in metrics:
        out.append(float(metrics[f"seed{len(out)}/{metric}"]))
    return tuple(out)


def study_of(rows: Sequence[TrialRow], space: SearchSpace):
    """An in-memory Optuna study of the trials, in the order they started: the plots' source when the study of
    record cannot be read (its storage gone)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {p.name: p.distribution() for p in space.params}
    study = optuna.create_study(direction="maximize" if space.objective.mode == "max" else "minimize")
    for row in sorted(rows, key=lambda r: r.order):
        if row.objective is None:
            continue
        params = {k: v for k, v in row.params.items() if k in dists}
        states = {"finished": optuna.trial.TrialState.COMPLETE, "failed": optuna.trial.TrialState.FAIL}
        state = states.get(row.outcome, optuna.trial.TrialState.PRUNED)
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions={k: dists[k] for k in params},
                state=state,
                value=row.objective if state == optuna.trial.TrialState.COMPLETE else None,
                intermediate_values={max(0, row.evals - 1): row.objective},
                user_attrs={"trial": row.trial},
            )
        )
    return study


PNG_PLOTS = ("optimization_history", "param_importances", "parallel_coordinate")
HTML_PLOTS = ("optimization_history", "intermediate_values", "timeline", "param_importances", "parallel_coordinate")


PLOT_TITLES = {
    "optimization_history": "the objective in trial order",
    "param_importances": "parameter importance",
    "parallel_coordinate": "parallel coordinates",
    "intermediate_values": "every trial's evaluations",
    "timeline": "the trials in time",
}


def save_plots(study, out_dir: str, log=print, metric: str | None = None) -> list[str]:
    """The search in pictures: PNGs (history in trial order, parameter importances, parallel coordinates) and one
    interactive page, `search.html` (the same plus every trial's intermediate values and the timeline). Each says
    how many trials it rests on: importances and parallel coordinates use the trials that trained their whole
    budget (a pruned trial's last value is from an earlier rung, not comparable); the history and the evaluations
    show every trial."""
    import matplotlib  # deferred on purpose: the plotting stack (matplotlib, plotly) loads only to draw plots

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization as interactive
    import optuna.visualization.matplotlib as vis

    states = [t.state for t in study.trials]
    done = states.count(optuna.trial.TrialState.COMPLETE)
    pruned = states.count(optuna.trial.TrialState.PRUNED)
    label = metric or "objective"
    rests = {
        name: (
            f"{done} trials that trained their whole budget" + (f"; {pruned} pruned left out" if pruned else "")
            if name in ("param_importances", "parallel_coordinate")
            else f"{len(states)} trials ({done} finished, {pruned} pruned)"
        )
        for name in PLOT_TITLES
    }
    with warnings.catch_warnings():  # few trials: Optuna and matplotlib warn about what a plot can show
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        paths = [p for name in PNG_PLOTS if (p := _png(vis, plt, study, name, label, rests[name], out_dir, log))]
        figures = [f for name in HTML_PLOTS if (f := _figure(interactive, study, name, label, rests[name], log))]
    if figures:
        path = os.path.join(out_dir, "search.html")
        with open(path, "w") as fh:  # plotly.js once, embedded: the page works offline
            fh.write("<html><head><meta charset='utf-8'><title>search</title></head><body>")
            for i, fig in enumerate(figures):
                fh.write(fig.to_html(full_html=False, include_plotlyjs=i == 0))
            fh.write("</body></html>")
        paths.append(path)
    return paths


def _png(vis, plt, study, name: str, label: str, rests: str, out_dir: str, log) -> str | None:
    try:
        getattr(vis, f"plot_{name}")(study, target_name=label)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. too few trials for importances
        log(f"  (no {name} plot: {exc})")
        return None
    fig = plt.gcf()
    fig.set_size_inches(12 if name == "parallel_coordinate" else 9, 5.5)
    fig.axes[0].set_title(f"{PLOT_TITLES[name]}: {label}, from {rests}", fontsize=11)
    for ax in fig.axes:  # the parallel plot's axis names and ticks: readable at the saved size
        ax.tick_params(axis="both", labelsize=9)
    fig.tight_layout()
    path = os.path.join(out_dir, f"{name}.png")
    fig.savefig(path, dpi=100)
    plt.close("all")
    return path


def _figure(interactive, study, name: str, label: str, rests: str, log):
    try:
        kwargs = {} if name in ("intermediate_values", "timeline") else {"target_name": label}
        fig = getattr(interactive, f"plot_{name}")(study, **kwargs)
        fig.update_layout(title=f"{PLOT_TITLES[name]}: {label}, from {rests}")
        return fig
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        log(f"  (no interactive {name} plot: {exc})")
        return None


__all__ = [
    "SettingSignal",
    "TrialRow",
    "WinnerChoice",
    "choose_winner",
    "per_seed_values",
    "pick_winner",
    "rank",
    "rows_from_results",
    "save_plots",
    "setting_signal",
    "study_of",
]
