"""Repeats with common random numbers: one config trained on K seeds, evaluated together.

A search that ranks configs by one seed each ranks seed noise (the seed-to-seed spread of direct-transfer mAP on
the synthetic benchmark is as large as the effects searched for). So every trial of a search can train the same K
seeds: trials are then compared on paired seeds, and the objective is the mean over them, with its standard error.

The K trainers of a trial take turns in the same process, check by check, each with its own RNG stream
(`ADINTrainer.run_check`), so seed k trains exactly as it would alone; after each has reached its next evaluation,
the group hands on the seeds' metrics averaged (and, for the key metrics, each seed's own as `seed<k>/<metric>`).
A data-parallel group runs the same turns on every rank.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np

from adin_core.config import TrainConfig
from adin_core.evaluation import OBJECTIVE, REPORT_MAP, EvaluationHook, Evaluator
from adin_core.train import ADINTrainer, CheckReport

PER_SEED_KEYS = (OBJECTIVE, REPORT_MAP, "source/mAP", "probe/camera_acc", "id_acc")  # each seed's own value is kept too


def seed_list(config: TrainConfig, repeats: int, offset: int = 0) -> list[int]:
    """The seeds of a group: `config.seed + offset + k`. Every trial of a search gets the same list."""
    return [config.seed + offset + k for k in range(repeats)]


def aggregate(per_seed: Sequence[dict[str, Any]], objective: str = OBJECTIVE) -> dict[str, Any]:
    """The seeds' metrics as one report: numeric values averaged, the objective's spread (`<objective>_sd`,
    `<objective>_se`, the standard error of the mean), and each seed's key metrics as `seed<k>/<key>`."""
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
            for key in dict.fromkeys((objective, *PER_SEED_KEYS)):
                if key in m:
                    out[f"seed{k}/{key}"] = float(m[key])
    out["seeds"] = float(n)
    return out


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
        rank: int = 0,
    ) -> None:
        self.trainers, self.sink, self.objective, self.rank = list(trainers), sink, objective, rank
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

    def restored(self) -> None:
        """After the trainers loaded a checkpoint or adopted shared pretraining: evaluations resume from the steps
        they reached (a pending check's from where its interval began)."""
        for hook, trainer in zip(self.hooks, self.trainers):
            hook.previous_step = trainer.resume_step

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
            metrics = aggregate([m for _, m, _ in latest], self.objective) if self.rank == 0 else {}
            if self.rank == 0:
                metrics["final"] = float(final)
            self.sink(self.trainers, [r for r, _, _ in latest], metrics, final)


__all__ = ["SeedGroup", "aggregate", "seed_list"]
