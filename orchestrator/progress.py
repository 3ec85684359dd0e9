"""What the sweep prints while it runs. In a terminal: a live table of trials (state, evaluations, the objective, the
camera probe, the searched parameters), redrawn in place, and for a trial that has waited long for resources, what it
waits for. Into a file or a pipe (a log, `ray job logs`): one line per trial event (started, evaluated, finished,
pruned, diverged, failed), never the whole table again."""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Sequence

from orchestrator.tracking import schema
from orchestrator.tracking.callback import LiveCallback

WAIT_WARNING_S = 60.0  # a trial with no report after this long gets a reason in the table


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_table(head: Sequence[str], lines: Sequence[Sequence[Any]]) -> str:
    rows = [list(head)] + [[_fmt(c) for c in line] for line in lines]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


class ProgressTable(LiveCallback):
    """A Tune callback: in a terminal (`live`), the table redrawn in place when a trial ends and at most every
    `every_s` seconds otherwise; elsewhere a line per trial event."""

    def __init__(
        self,
        sweep: str,
        metric: str,
        params: list[str],
        *,
        every_s: float = 15.0,
        waiting_reason: Callable[[], str | None] | None = None,
        log: Callable[[str], None] = print,
        live: bool | None = None,
    ) -> None:
        self.metric, self.params, self.every_s = metric, params, every_s
        self.waiting_reason, self.log = waiting_reason, log
        self.live = sys.stdout.isatty() if live is None else live
        self.rows: dict[str, dict[str, Any]] = {}
        self.last = 0.0
        self.drawn = 0  # lines of the table last drawn (a terminal redraws over them)
        self.register(f"progress:{sweep}")

    def _event(self, trial, what: str) -> None:
        if not self.live:
            self.log(f"{time.strftime('%H:%M:%S')} trial {trial.trial_id} {what}")

    def _row(self, trial, status: str, result: dict | None = None) -> None:
        row = self.rows.setdefault(
            trial.trial_id,
            {
                "status": "PENDING",
                "evals": 0,
                "obj": None,
                "probe": None,
                "config": trial.config,
                "since": time.monotonic(),
            },
        )
        row["status"] = status
        if result:
            row["evals"] = schema.evaluation_of(result)
            row["obj"] = result.get(self.metric, row["obj"])
            row["probe"] = result.get("probe/camera_acc", row["probe"])

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._row(trial, "RUNNING")
        self.rows[trial.trial_id]["since"] = time.monotonic()
        shown = ", ".join(f"{p}={_fmt(trial.config[p])}" for p in self.params if p in (trial.config or {}))
        start = (trial.config or {}).get(schema.START_POINT_KEY)
        self._event(trial, f"started: {shown}" + (f" (start point {start})" if start else ""))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._row(trial, "RUNNING", result)
        row = self.rows[trial.trial_id]
        if result.get(schema.DIVERGED):
            row["status"] = "DIVERGED"
        elif self.metric in result:
            row["final"] = bool(result.get(schema.FINAL))
            self._event(
                trial,
                f"evaluation {row['evals']}: {self.metric} {result[self.metric]:.4f}"
                + ("" if row["probe"] is None else f", camera probe {row['probe']:.3f}"),
            )
        self._print()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        row = self.rows.get(trial.trial_id, {})
        status = "DIVERGED" if row.get("status") == "DIVERGED" else ("FINISHED" if row.get("final") else "PRUNED")
        self._row(trial, status)
        self._event(
            trial,
            {
                "FINISHED": "finished",
                "PRUNED": f"stopped early (pruned) at evaluation {row.get('evals')}",
                "DIVERGED": "diverged (its weights went non-finite)",
            }[status],
        )
        self._print(force=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._row(trial, "ERROR")
        self._event(trial, "failed (its error is in the sweep's storage: error.txt)")
        self._print(force=True)

    def on_step_end(self, iteration, trials, **info) -> None:
        for trial in trials:
            if trial.trial_id not in self.rows and trial.status == "PENDING":
                self._row(trial, "PENDING")
        self._print()

    def table(self) -> str:
        head = ["trial", "status", "evals", self.metric, "probe camera", *self.params]
        lines = [
            [
                tid,
                r["status"],
                r["evals"],
                "-" if r["obj"] is None else f"{r['obj']:.4f}",
                "-" if r["probe"] is None else f"{r['probe']:.3f}",
                *[r["config"].get(p, "") for p in self.params],
            ]
            for tid, r in list(self.rows.items())[:30]
        ]
        return format_table(head, lines)

    def _print(self, force: bool = False) -> None:
        if not self.live or (not force and time.monotonic() - self.last < self.every_s):
            return
        self.last = time.monotonic()
        out = self.table()
        now = time.monotonic()
        waiting = [
            tid
            for tid, r in self.rows.items()
            if r["status"] in ("PENDING", "RUNNING") and r["evals"] == 0 and now - r["since"] > WAIT_WARNING_S
        ]
        reason = self.waiting_reason() if waiting and self.waiting_reason is not None else None
        if reason:
            oldest = max(now - self.rows[t]["since"] for t in waiting)
            out += f"\n  {len(waiting)} trial(s) without a report for up to {oldest:.0f} s: {reason}"
        if self.drawn:  # over the last drawing: cursor up to its first line, then clear to the end of the screen
            out = f"\x1b[{self.drawn}F\x1b[J" + out
        self.drawn = out.count("\n") + 1
        self.log(out)
