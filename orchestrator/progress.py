"""The sweep's live table of trials (state, evaluations, latest objective, key parameters) and its leaderboard."""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback

from orchestrator.trial import OBJECTIVE


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_table(rows: dict[str, dict], params: list[str], limit: int = 30) -> str:
    head = ["trial", "status", "evals", OBJECTIVE] + params
    lines = [head]
    for tid, r in list(rows.items())[:limit]:
        obj = "-" if r["obj"] is None else f"{r['obj']:.4f}"
        lines.append([tid, r["status"], str(r["iter"]), obj] + [_fmt(r["config"].get(p, "")) for p in params])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in lines)


class ProgressTable(Callback):
    """A Tune callback printing the table when a trial ends, and at most every `every_s` seconds otherwise."""

    def __init__(self, params: list[str], every_s: float = 15.0) -> None:
        self.params, self.every_s, self.last = params, every_s, 0.0
        self.rows: dict[str, dict] = {}

    def _row(self, trial, status: str, result: dict | None = None) -> None:
        row = self.rows.setdefault(trial.trial_id, {"status": "PENDING", "iter": 0, "obj": None,
                                                    "config": trial.config})
        row["status"] = status
        if result:
            row["iter"] = result.get("training_iteration", row["iter"])
            row["obj"] = result.get(OBJECTIVE, row["obj"])

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._row(trial, "RUNNING")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self._row(trial, "RUNNING", result)
        self._print()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._row(trial, "TERMINATED")
        self._print(force=True)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._row(trial, "ERROR")
        self._print(force=True)

    def _print(self, force: bool = False) -> None:
        if not force and time.time() - self.last < self.every_s:
            return
        self.last = time.time()
        print(format_table(self.rows, self.params), flush=True)
