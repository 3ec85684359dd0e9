"""The datasets a model is scored on, opened as the plan names them: the select and report targets (direct transfer)
and the source's own test split. One scoring for the trials, the pretraining stage, the sweep's winner and the
export, so a number means the same wherever it is printed."""

from __future__ import annotations

import torch

from adin_core.config import TrainConfig
from adin_core.data.memory import EvalTarget
from adin_core.data.shards import ShardSet
from adin_core.evaluation import score_target
from adin_core.models import ADINModel
from orchestrator.plan import Target


def open_target(target: Target, image_size: tuple[int, int]) -> EvalTarget:
    """A planned target's test split, named as the plan names it (the key of its metrics)."""
    return ShardSet.open(target.uri).eval_target(image_size, name=target.name)


def source_target(uri: str, image_size: tuple[int, int]) -> EvalTarget:
    """The training dataset's own test split: cross-camera retrieval on seen cameras, and the nuisance probe."""
    return ShardSet.open(uri).eval_target(image_size, name="source")


def score_targets(
    model: ADINModel, targets: list[EvalTarget], config: TrainConfig, device: torch.device | str = "cpu"
) -> dict[str, dict[str, float]]:
    """Rank-1/5/10, mAP and mINP per target."""
    return {t.name: score_target(model, t, config, device)[0] for t in targets}


def score_uris(model: ADINModel, config: TrainConfig, targets: dict[str, str]) -> dict[str, dict[str, float]]:
    """A model's scores on shard sets given as {uri: name} (on the CPU)."""
    size = (config.image_height, config.image_width)
    return score_targets(model, [open_target(Target(u, n), size) for u, n in targets.items()], config)


__all__ = ["open_target", "score_targets", "score_uris", "source_target"]
