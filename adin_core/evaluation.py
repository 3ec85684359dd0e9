"""What a trained model is judged by: direct transfer, the source's own cross-camera test, and the nuisance probe.

* **Direct transfer**: retrieval (CMC, mAP, mINP; torchreid protocol, `metrics`) on other datasets' test splits,
  with no adaptation. The objective of a search, `transfer_mAP`, is the mean mAP over the `select` targets; the
  `report` targets are scored for a chosen model only, so they never steer a choice.
* **The source's own test split**: retrieval across the cameras the model was trained on (`source/*`), and, on
  the very same features, the nuisance probe (`probe/<kind>_acc`, `probe/<kind>_chance`; `probe`): how much of the
  camera (and time of day) a linear classifier still reads from the features, on identities it was not fitted on.

`Evaluator` bundles the targets with a cadence, so `python -m adin_core`, a Ray trial, the sweep's winner and the
export all score a model the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from adin_core.config import TrainConfig
from adin_core.data.memory import EvalTarget, ReIDArrays
from adin_core.features import extract_features
from adin_core.metrics import evaluate_features, evaluate_vehicleid
from adin_core.models import ADINModel
from adin_core.probe import ProbeResult, Reader, nuisance_probe
from adin_core.schedule import Phase

OBJECTIVE = "transfer_mAP"
EVALUATION = "evaluation"  # the evaluation's index (1, 2, ...), from the training step: stays right across a resume
REPORT_MAP = "report_mAP"  # the mean mAP over the report targets, when they are scored (verification, the end)
PROBE_KINDS = ("camera", "time")  # the base nuisance kinds; camera_x_time is their product


def probe_labels(split: ReIDArrays) -> dict[str, np.ndarray]:
    """The nuisance kinds a split can be probed for, as raw labels (the probe indexes the classes itself)."""
    out = {}
    if len(np.unique(split.camids)) >= 2:
        out["camera"] = split.camids
    if split.has_time and len(np.unique(split.timeperiods)) >= 2:
        out["time"] = split.timeperiods
    return out


def _concat(parts: Sequence[ReIDArrays], attr: str) -> np.ndarray:
    return np.concatenate([getattr(p, attr) for p in parts])


def target_features(
    model: ADINModel, target: EvalTarget, config: TrainConfig, device: torch.device | str = "cpu"
) -> list[torch.Tensor]:
    """The retrieval features of a target's splits (query, then gallery when it has one)."""
    kwargs = dict(
        batch_size=config.eval_batch_size,
        image_size=(config.image_height, config.image_width),
        device=device,
        amp=config.amp,
    )
    return [extract_features(model, split.images, **kwargs) for split in target.images()]


def probe_target(
    feats: Sequence[torch.Tensor], target: EvalTarget, reader: Reader | None = None
) -> dict[str, ProbeResult]:
    """The nuisance probe (or another linear `reader`) for every kind the target's labels allow, on the features
    of all its splits together."""
    splits = target.images()
    all_feats, pids = torch.cat(list(feats)), _concat(splits, "pids")
    merged = ReIDArrays(
        np.zeros((len(pids), 1, 1, 3), np.uint8), pids, _concat(splits, "camids"), _concat(splits, "timeperiods")
    )
    return {
        kind: nuisance_probe(all_feats, pids, labels, reader=reader) for kind, labels in probe_labels(merged).items()
    }


def rank_target(feats: Sequence[torch.Tensor], target: EvalTarget) -> dict[str, float]:
    """Rank-1/5/10, mAP and mINP of a target's extracted features (`target_features`): its protocol's ranking."""
    if target.gallery is None:
        result = evaluate_vehicleid(feats[0], target.query.pids)
    else:
        q, g = target.query, target.gallery
        result = evaluate_features(feats[0], feats[1], q.pids, g.pids, q.camids, g.camids)
    return {k: float(v) for k, v in result.summary().items()}


def score_target(
    model: ADINModel,
    target: EvalTarget,
    config: TrainConfig,
    device: torch.device | str = "cpu",
    *,
    probe: bool = False,
) -> tuple[dict[str, float], dict[str, ProbeResult]]:
    """Rank-1/5/10, mAP and mINP on one target and, with `probe`, the nuisance probe on the same features."""
    feats = target_features(model, target, config, device)
    return rank_target(feats, target), probe_target(feats, target) if probe else {}


@dataclass
class Evaluator:
    """The targets a model is scored on, and how often during training.

    `select` feed the objective; `source` (the training dataset's own test split) gives cross-camera retrieval
    on seen cameras and the nuisance probe; `report` targets are scored only when asked (`evaluate(report=True)`;
    the hook asks at the end of training). A sweep's trials get no report targets: those never steer a choice.
    """

    select: list[EvalTarget] = field(default_factory=list)
    source: EvalTarget | None = None
    report: list[EvalTarget] = field(default_factory=list)
    every_steps: int = 0  # evaluation cadence during training; 0: only at the end
    probe_targets: bool = False  # also probe the targets' features (`<role>/<target>/probe_<kind>_acc`): does
    # invariance learned on the source's cameras carry over to cameras never seen?
    score_during: bool = True  # False: the targets are scored at the end only; the cadence's other points still
    # hand on the check's own metrics, so a driver keeps checkpointing there (the verification: only its final
    # scores count, and scoring was a third of a benchmark training's time)

    def due(self, step: int, previous_step: int, final: bool) -> bool:
        """Whether a check at `step` (the one before it at `previous_step`) is an evaluation point: the end of
        training, or the first check at or past a multiple of `every_steps`."""
        if final:
            return True
        return self.every_steps > 0 and step // self.every_steps > previous_step // self.every_steps

    def index(self, step: int, total_steps: int) -> int:
        """The number of an evaluation at `step` (1-based): what schedulers count and charts use as their x axis.
        It comes from the step, not from a count of reports, so a resumed run numbers its evaluations as the
        uninterrupted run would have."""
        if self.every_steps <= 0:
            return 1
        if step >= total_steps:
            return -(-total_steps // self.every_steps)
        return max(1, step // self.every_steps)

    def evaluate(
        self, model: ADINModel, config: TrainConfig, device: torch.device | str = "cpu", *, report: bool = False
    ) -> dict[str, float]:
        """Flat metrics: `source/<metric>`, `probe/<kind>_acc|_chance`, `select/<target>/<metric>`,
        `report/<target>/<metric>` (with `report`), and the objective `transfer_mAP` (mean select mAP)."""
        out: dict[str, float] = {}
        if self.source is not None:
            scores, probes = score_target(model, self.source, config, device, probe=True)
            out.update({f"source/{k}": v for k, v in scores.items()})
            for kind, result in probes.items():
                out.update(result.metrics(kind))
        roles = [("select", self.select)] + ([("report", self.report)] if report else [])
        for role, targets in roles:
            for t in targets:
                scores, probes = score_target(model, t, config, device, probe=self.probe_targets)
                out.update({f"{role}/{t.name}/{k}": v for k, v in scores.items()})
                for kind, result in probes.items():
                    out[f"{role}/{t.name}/probe_{kind}_acc"] = result.accuracy
                    out[f"{role}/{t.name}/probe_{kind}_chance"] = result.chance
        if self.select:
            out[OBJECTIVE] = float(np.mean([out[f"select/{t.name}/mAP"] for t in self.select]))
        if report and self.report:
            out[REPORT_MAP] = float(np.mean([out[f"report/{t.name}/mAP"] for t in self.report]))
        return out


class EvaluationHook:
    """A trainer hook that evaluates at the evaluator's cadence (and at the end) and hands the metrics on.

    `sink(trainer, report, metrics, final)` is called on every rank at each evaluation point (a data-parallel
    driver must report from all ranks); only rank 0 evaluates, so the metrics are empty elsewhere. The metrics are
    the check's own (`CheckReport.metrics`), the adversary's grip averaged over every check since the previous
    evaluation, the schedule's state, and the evaluator's scores.
    """

    def __init__(self, evaluator: Evaluator, sink, *, rank: int = 0, start_step: int = 0) -> None:
        self.evaluator, self.sink, self.rank = evaluator, sink, rank
        self.previous_step = start_step  # a resumed run starts at its checkpoint's step
        self._grips: list[dict[str, float]] = []

    def on_check(self, trainer, report) -> None:
        if report.grip:
            self._grips.append(report.grip)
        final = report.next_phase == "done"
        due = self.evaluator.due(report.step, self.previous_step, final)
        self.previous_step = report.step
        if not due:
            return
        metrics: dict[str, float | str] = {}
        if self.rank == 0:
            metrics.update({k: float(v) for k, v in report.metrics().items() if not k.startswith("grip/")})
            for key in {k for g in self._grips for k in g}:
                metrics[f"grip/{key}"] = float(np.mean([g[key] for g in self._grips if key in g]))
            if final or self.evaluator.score_during:
                metrics.update(self.evaluator.evaluate(trainer.model, trainer.config, trainer.device, report=final))
            metrics["phase"] = report.next_phase
            metrics["phase_index"] = float(list(Phase).index(Phase(report.next_phase)))  # for charts
            metrics["adversarial_rounds"] = float(trainer.schedule.rounds)
            metrics["final"] = float(final)
            metrics[EVALUATION] = float(self.evaluator.index(report.step, trainer.schedule.config.total_steps))
            metrics["world_size"] = float(trainer.world_size)
        self._grips = []
        self.sink(trainer, report, metrics, final)


def target_scores(metrics: dict[str, float], role: str) -> dict[str, dict[str, float]]:
    """`<role>/<target>/<metric>` entries of flat metrics, as {target: {metric: value}}."""
    out: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == role:
            out.setdefault(parts[1], {})[parts[2]] = value
    return out


__all__ = [
    "EvaluationHook",
    "Evaluator",
    "EvalTarget",
    "EVALUATION",
    "OBJECTIVE",
    "REPORT_MAP",
    "PROBE_KINDS",
    "probe_labels",
    "probe_target",
    "rank_target",
    "score_target",
    "target_features",
    "target_scores",
]
