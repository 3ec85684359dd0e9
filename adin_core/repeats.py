"""Repeats with common random numbers: one config trained on K seeds, evaluated together.

A search that ranks configs by one seed each ranks seed noise (the seed-to-seed spread of direct-transfer mAP on
the synthetic benchmark is as large as the effects searched for). So every trial of a search can train the same K
seeds: trials are then compared on paired seeds, and the objective is the mean over them, with its standard error.

The K trainers of a trial take turns in the same process, check by check, each with its own RNG stream
(`ADINTrainer.run_check`), so seed k trains exactly as it would alone; after each has reached its next evaluation,
the group hands on the seeds' metrics averaged (and, for the key metrics, each seed's own as `seed<k>/<metric>`).
A data-parallel group runs the same turns on every rank.

The adversarial phase makes a trial's objective move between consecutive evaluations by as much as settings differ
(on `shortcut`, +/-0.05 select mAP), so a search that reads one evaluation ranks that wobble. With `average_last`
n > 1 the group also reports, per seed, the mean of the objective over its last n evaluations, as
`<objective>_avg<n>` (Ray Tune's `last-n-avg` scope, made a reported metric so ASHA's rungs and the sampler see it
too); the raw value is reported as before.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from adin_core.config import TrainConfig
from adin_core.evaluation import OBJECTIVE, REPORT_MAP, EvaluationHook, Evaluator
from adin_core.train import ADINTrainer, CheckReport

PER_SEED_KEYS = (OBJECTIVE, REPORT_MAP, "source/mAP", "probe/camera_acc", "id_acc")  # each seed's own value is kept too


def seed_list(config: TrainConfig, repeats: int, offset: int = 0) -> list[int]:
    """The seeds of a group: `config.seed + offset + k`. Every trial of a search gets the same list."""
    return [config.seed + offset + k for k in range(repeats)]


def averaged_name(metric: str, n: int) -> str:
    """The reported name of `metric` averaged over a trial's last `n` evaluations (n == 1: the metric itself)."""
    return metric if n == 1 else f"{metric}_avg{n}"


def aggregate(
    per_seed: Sequence[dict[str, Any]], objective: str = OBJECTIVE, also: Sequence[str] = ()
) -> dict[str, Any]:
    """The seeds' metrics as one report: numeric values averaged, the objective's spread (`<objective>_sd`,
    `<objective>_se`, the standard error of the mean), and each seed's key metrics (and `also`) as `seed<k>/<key>`."""
    out: dict[str, Any] = {}
    keys = [k for k in per_seed[0] if all(k in m for m in per_seed)]
    for key in keys:
        values = [m[key] for m in per_seed]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[key] = float(np.mean(values))
        else:
            out[key] = values[0]  # e.g. the phase: seed 0's
    n = len(per_seed)
    if n > 1 and objective in out:
        values = np.array([m[objective] for m in per_seed], dtype=float)
        sd = float(values.std(ddof=1))
        out[f"{objective}_sd"] = sd
        out[f"{objective}_se"] = sd / math.sqrt(n)
        for k, m in enumerate(per_seed):
            for key in dict.fromkeys((objective, *also, *PER_SEED_KEYS)):
                if key in m:
                    out[f"seed{k}/{key}"] = float(m[key])
    out["seeds"] = float(n)
    return out


class ObjectiveWindow:
    """Each seed's last `n` values of the objective, and their mean reported as `averaged_name(objective, n)`."""

    def __init__(self, objective: str, n: int, seeds: int) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"average_last must be a whole number of evaluations >= 1, got {n!r}")
        self.objective, self.n, self.key = objective, n, averaged_name(objective, n)
        self.values: list[list[float]] = [[] for _ in range(seeds)]

    def add(self, per_seed: Sequence[dict[str, Any]], fresh: Mapping[int, bool] | None = None) -> list[dict[str, Any]]:
        """The seeds' metrics with the windowed objective added (n == 1: unchanged). `fresh`: which seeds these are
        (by index) and whether each evaluated anew; one that did not (it finished before the others) keeps its
        window. None: all seeds, all fresh."""
        if self.n == 1:
            return list(per_seed)
        out = []
        for (k, new), m in zip((fresh or dict.fromkeys(range(len(per_seed)), True)).items(), per_seed):
            m = dict(m)
            if self.objective in m:
                if new:
                    self.values[k] = (self.values[k] + [float(m[self.objective])])[-self.n :]
                m[self.key] = float(np.mean(self.values[k]))
            out.append(m)
        return out

    def aggregated(self, per_seed: Sequence[dict[str, Any]], fresh: Mapping[int, bool] | None = None) -> dict[str, Any]:
        """One evaluation of the seeds as a group reports it: their windows move (`add`), then `aggregate` (its
        spread and per-seed values for the windowed objective and the raw one)."""
        return aggregate(self.add(per_seed, fresh), self.key, also=(self.objective,))

    def restore(self, history: Sequence[dict[str, Any]]) -> None:
        """The windows as they stood after these reports (the group's own aggregated ones: each seed's raw
        objective is `seed<k>/<objective>`, or the objective itself for one seed)."""
        self.values = [[] for _ in self.values]
        if self.n == 1:
            return
        for report in history:
            if len(self.values) == 1:
                raw = [report.get(self.objective)]
            else:
                raw = [report.get(f"seed{k}/{self.objective}") for k in range(len(self.values))]
            for k, v in enumerate(raw):
                if v is not None:
                    self.values[k] = (self.values[k] + [float(v)])[-self.n :]


class SeedGroup:
    """K trainers of one config (seeds differ), evaluated at the same cadence; `sink(trainers, reports, metrics,
    final)` gets each evaluation of the group: every trainer's latest report and the aggregated metrics (empty
    off rank 0)."""

    def __init__(
        self,
        trainers: Sequence[ADINTrainer],
        evaluator: Evaluator,
        sink: Callable[..., None],
        *,
        objective: str = OBJECTIVE,
        average_last: int = 1,
        rank: int = 0,
    ) -> None:
        self.trainers, self.sink, self.objective, self.rank = list(trainers), sink, objective, rank
        self.window = ObjectiveWindow(objective, average_last, len(self.trainers))
        self._latest: list[tuple[CheckReport, dict[str, Any], bool] | None] = [None] * len(self.trainers)
        self._fresh = [False] * len(self.trainers)
        self.hooks = []
        for k, trainer in enumerate(self.trainers):
            hook = EvaluationHook(evaluator, self._keeper(k), rank=rank, start_step=trainer.resume_step)
            trainer.hooks.append(hook)
            self.hooks.append(hook)

    def _keeper(self, k: int):
        def keep(trainer, report: CheckReport, metrics: dict[str, Any], final: bool) -> None:
            self._latest[k] = (report, metrics, final)
            self._fresh[k] = True

        return keep

    def restored(self, history: Sequence[dict[str, Any]] = ()) -> None:
        """After the trainers loaded a checkpoint or adopted shared pretraining: evaluations resume from the steps
        they reached (a pending check's from where its interval began), and the objective's window from the
        reports made before (`history`, as `ObjectiveWindow.aggregated` made them)."""
        for hook, trainer in zip(self.hooks, self.trainers):
            hook.previous_step = trainer.resume_step
        self.window.restore(history)

    @property
    def done(self) -> bool:
        return all(t.schedule.done for t in self.trainers)

    def run(self) -> None:
        """Until every seed has trained its whole schedule: each trains to its next evaluation, then the group
        reports."""
        while not self.done:
            self._fresh = [False] * len(self.trainers)
            for k, trainer in enumerate(self.trainers):
                while not trainer.schedule.done and not self._fresh[k]:
                    trainer.run_check()
            if not any(self._fresh):
                return
            latest = [x for x in self._latest if x is not None]
            final = self.done
            fresh = {k: f for k, (x, f) in enumerate(zip(self._latest, self._fresh)) if x is not None}
            metrics = self.window.aggregated([m for _, m, _ in latest], fresh) if self.rank == 0 else {}
            if self.rank == 0:
                metrics["final"] = float(final)
            self.sink(self.trainers, [r for r, _, _ in latest], metrics, final)


__all__ = ["ObjectiveWindow", "SeedGroup", "aggregate", "averaged_name", "seed_list"]
