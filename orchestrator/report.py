"""What a sweep says when it ends: the leaderboard and the winner, the faults it survived, where its time went, where
to look next, and the verdict where people look (the sweep's run description and the winner's model card)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

from orchestrator.best import ExportError, winner_card
from orchestrator.plan import SweepPlan
from orchestrator.progress import format_table
from orchestrator.results import TrialRow, WinnerChoice, rank, setting_signal
from orchestrator.tracking import schema as S
from orchestrator.tracking.store import DEFAULT_TRACKING_URI, absolute_tracking_uri, ui_url


def _objective_cell(row: TrialRow) -> str:
    if row.objective is None:
        return "-"
    return f"{row.objective:.4f}" + (f" +/- {row.spread:.4f}" if row.spread is not None else "")


def leaderboard(plan: SweepPlan, rows: Sequence[TrialRow]) -> None:
    """Every trial, best first, with why a diverged one stopped."""
    space = plan.space
    names, metric = [p.name for p in space.params], space.objective.key
    seeds = f"; mean over {space.search.seeds} seeds +/- standard error" if space.search.seeds > 1 else ""
    print(f"\nleaderboard ({space.objective.describe()}{seeds})")
    print(
        format_table(
            ["trial", "outcome", "evals", metric, "probe camera", *names, "start"],
            [
                [
                    r.trial,
                    r.outcome,
                    r.evals,
                    _objective_cell(r),
                    "-" if r.probe is None else f"{r.probe:.3f}",
                    *[r.params.get(n, "") for n in names],
                    r.start_point or "-",
                ]
                for r in rank(rows, space.objective)
            ],
        )
    )
    for r in rows:
        if r.note:
            print(f"  {r.trial} {r.outcome}: {r.note}")


def faults(summary: dict[str, Any]) -> None:
    """What went wrong and was survived (also on the parent run as the tag `adin.faults`)."""
    if not summary["tracking_outages"] and not summary["trials"]:
        return
    print("\nfaults survived")
    for o in summary["tracking_outages"]:
        print(f"  MLflow unreachable from {o['since']} for {o['seconds']:.0f} s ({o['attempts']} retries)")
    for tid, f in sorted(summary["trials"].items()):
        print(f"  trial {tid}: " + ", ".join(f"{k.removeprefix('faults/')} {v:g}" for k, v in sorted(f.items())))


def interrupted(plan: SweepPlan, rows: Sequence[TrialRow], code: int) -> None:
    done = sum(r.outcome in ("finished", "pruned", "diverged") for r in rows)
    print(
        f"\ninterrupted (exit {code}) with {done} of {plan.space.search.num_samples} trials done; the sweep is "
        f"marked partial. Continue with:\n  {plan.resume_command()}",
        file=sys.stderr,
    )


def no_winner(plan: SweepPlan, rows: Sequence[TrialRow]) -> None:
    failed = sum(r.outcome == "failed" for r in rows)
    diverged = sum(r.outcome == "diverged" for r in rows)
    print(
        f"\nerror: no trial finished ({failed} failed, {diverged} diverged, {len(rows) - failed - diverged} stopped "
        f"early); nothing to export. The trials' errors are in {plan.sweep_uri}/*/error.txt",
        file=sys.stderr,
    )


def winner(plan: SweepPlan, choice: WinnerChoice) -> None:
    print(f"\nwinner: trial {choice.row.trial}, {choice.why(plan.space.search.promote_se)}")


def settings_against_noise(rows: Sequence[TrialRow]) -> dict[str, float]:
    """Whether the trials' settings differed beyond their seeds' luck (`results.setting_signal`), printed under the
    winner's scores; its metrics, for the sweep's run ({} when it cannot be told)."""
    signal = setting_signal(rows)
    if signal is None:
        return {}
    print(signal.line())
    return signal.metrics()


@dataclass
class Timings:
    """Where the sweep's time went, in seconds, and what shared pretraining spared (seed-epochs)."""

    checks: float = 0.0
    ray_start: float = 0.0
    pretraining: float = 0.0  # the search's stage; the verification's is inside its own time
    trials: float = 0.0
    verification: float = 0.0
    wrap_up: float = 0.0
    total: float = 0.0
    seeds_pretrained: int = 0
    epochs_pretrained: float = 0.0
    epochs_shared: float = 0.0  # what the trainings that started from shared pretraining did not train
    tracking_waits: list[float] = field(default_factory=list)  # seconds each result held Tune's loop in tracking

    def metrics(self) -> dict[str, float]:
        out = {
            f"timing/{k}_s": getattr(self, k)
            for k in ("checks", "ray_start", "pretraining", "trials", "verification", "wrap_up", "total")
        }
        out.update(
            {
                "pretraining/seed_epochs_trained": self.epochs_pretrained,
                "pretraining/seed_epochs_saved": self.epochs_shared - self.epochs_pretrained,
            }
        )
        waits = sorted(self.tracking_waits)
        if waits:
            out.update(
                {
                    "timing/tracking_result_ms_median": 1000 * waits[len(waits) // 2],
                    "timing/tracking_result_ms_max": 1000 * waits[-1],
                }
            )
        return out

    def line(self, seeds: int) -> str:
        m, waits = self.metrics(), sorted(self.tracking_waits)
        sharing = (
            f"shared pretraining {self.pretraining:.1f} s ({self.seeds_pretrained} seed(s) pretrained once in "
            f"all, {self.epochs_pretrained:g} seed-epochs; the trainings that started from them did not "
            f"retrain {m['pretraining/seed_epochs_saved']:g} seed-epochs), "
            if self.epochs_shared
            else ""
        )
        tracking = (
            f"; MLflow tracking held Tune's loop {m['timing/tracking_result_ms_median']:.1f} ms a result "
            f"(median of {len(waits)}, max {m['timing/tracking_result_ms_max']:.1f} ms)"
            if waits
            else ""
        )
        return (
            f"times: input checks {self.checks:.1f} s, Ray start {self.ray_start:.1f} s, {sharing}trials "
            f"{self.trials:.1f} s (repeats: {100 * (seeds - 1) / seeds:.0f}% of it, {seeds} seeds a trial), "
            f"verification {self.verification:.1f} s ({100 * self.verification / max(self.total, 1e-9):.0f}% "
            f"of the sweep), wrap-up {self.wrap_up:.1f} s, total {self.total:.0f} s{tracking}"
        )


def hints(plan: SweepPlan, experiment_id: str) -> None:
    """Where to look next: the runs in MLflow, the study in Optuna, the export."""
    uri = plan.tracking_uri
    if uri.startswith(("http://", "https://")):
        print(f"\nthe sweep in MLflow:  {ui_url(uri, experiment_id, plan.sweep)}")
    else:
        print(
            f"\nthe sweep in MLflow:  mlflow ui --backend-store-uri {uri} --workers 1   then open\n"
            f"                      {ui_url('http://127.0.0.1:5000', experiment_id, plan.sweep)}"
        )
    print(f"the study in Optuna:  optuna-dashboard {plan.study_storage}")
    tracking = "" if uri == absolute_tracking_uri(DEFAULT_TRACKING_URI) else f" --tracking-uri {uri}"
    print(
        f"export the winner:    python -m orchestrator.best --export runs/winner-{plan.sweep} --sweep "
        f"{plan.sweep}{tracking}"
    )


def _note(plan: SweepPlan, rows: Sequence[TrialRow], row: TrialRow, verification: dict) -> str:
    metric, names = plan.space.objective.key, [p.name for p in plan.space.params]
    board = [
        "| trial | outcome | " + metric + " | " + " | ".join(names) + " | start |",
        "|" + " --- |" * (4 + len(names)),
    ]
    for r in rank(rows, plan.space.objective)[:8]:
        obj = "-" if r.objective is None else f"{r.objective:.4f}" + (f" ± {r.spread:.4f}" if r.spread else "")
        board.append(
            f"| {r.trial} | {r.outcome} | {obj} | "
            + " | ".join(str(r.params.get(n, "")) for n in names)
            + f" | {r.start_point or '-'} |"
        )
    verdict = verification.get("summary") or ["not verified"]
    signal = setting_signal(rows)
    said = signal.line() if signal else ""
    return "\n".join(
        [
            f"**Winner: trial `{row.trial}`** ({metric} {row.objective:.4f}); exported with "
            f"`python -m orchestrator.best --export DIR --sweep {plan.sweep}`",
            "",
            "**Verification** (report-target mAP, fresh seeds):",
            "",
            *[f"- {line}" for line in verdict],
            "",
            f"**Leaderboard** ({metric}, best first):",
            "",
            *board,
            "",
            *([said[:1].upper() + said[1:] + ".", ""] if said else []),
            "The winner's model card: artifact `card/model_card.md`.",
        ]
    )


def publish_verdict(plan: SweepPlan, parent, rows: Sequence[TrialRow], row: TrialRow, folder: str) -> None:
    """The verdict where people look: the parent run's description (the winner, the verification, the leaderboard's
    top rows) and the winner's model card on it (`card/model_card.md`); a winner below the baseline on most fresh
    seeds is the last line the sweep prints."""
    if not parent.queue.drain():
        return  # the tracking server is away: the queued writes reach it later, the card with the export
    try:
        _, _, card, md = winner_card(plan.tracking_uri, plan.sweep)
    except (ExportError, OSError) as exc:
        print(f"warning: no model card on the sweep's run ({exc})", file=sys.stderr)
        return
    path = os.path.join(folder, "model_card.md")
    with open(path, "w") as fh:
        fh.write(md)
    parent.log_artifact(path, "card")
    verification = card.get("verification") or {}
    parent.set_tags({S.NOTE: _note(plan, rows, row, verification)})
    if verification.get("lost_to_baseline"):
        base = verification["winner_minus_baseline"]
        print(
            f"\nWARNING: the winner scored below the identity-only baseline on {base['seeds'] - base['positive']} "
            f"of {base['seeds']} fresh seeds ({base['mean']:+.3f} mAP): the search found no setting that beats not "
            "using ADIN here",
            file=sys.stderr,
        )


__all__ = [
    "Timings",
    "faults",
    "hints",
    "interrupted",
    "leaderboard",
    "no_winner",
    "publish_verdict",
    "settings_against_noise",
    "winner",
]
