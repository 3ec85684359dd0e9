"""One experiment on the synthetic benchmark: train a config on a preset's source domain, then score it.

`python -m adin_core` runs one; `python -m adin_core.compare` runs arms x seeds x presets of them. The data are
the shards a sweep reads (`adin_core.data.datasets`: generated and sharded under a data root on first use, PNG, so
exactly the generated pixels), and the training defaults are the ones the shipped search spaces fix (a test keeps
them equal): a number measured here is a number a sweep's trial with the same parameters reproduces.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable

import torch

from adin_core.config import TrainConfig
from adin_core.data.datasets import open_benchmark
from adin_core.data.synthetic import PRESETS, SynthConfig
from adin_core.evaluation import EvaluationHook, Evaluator
from adin_core.train import CheckReport, fit

DEFAULT_DATA_ROOT = "runs/data"
# Training settings for the synthetic benchmark on 2 CPU cores (small CNN; image size from the preset)
SYNTHETIC_TRAINING: dict[str, Any] = {
    "backbone": "small_cnn",
    "batch_size": 32,
    "epochs": 16,
    "pretrain_id_epochs": 3,
    "pretrain_nuisance_epochs": 1,
    "check_every": 20,
    "refresh_steps": 10,
}


def generator_config(preset: str, gen: dict[str, Any] | None = None) -> SynthConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[preset], **(gen or {}))


def benchmark_config(synth: SynthConfig, overrides: dict[str, Any], seed: int) -> TrainConfig:
    values = {**SYNTHETIC_TRAINING, "image_height": synth.height, "image_width": synth.width, "seed": seed}
    values.update(overrides)
    return TrainConfig.from_dict(values)


def phase_shares(report: CheckReport) -> dict[str, float]:
    """The share of the run's steps spent in each phase, as of `report`."""
    total = max(1, sum(report.phase_steps.values()))
    return {f"phase_share/{k}": v / total for k, v in report.phase_steps.items()}


def run_benchmark(
    preset: str,
    seed: int,
    overrides: dict[str, Any] | None = None,
    *,
    data_root: str = DEFAULT_DATA_ROOT,
    gen: dict[str, Any] | None = None,
    on_check: Callable[[CheckReport], None] | None = None,
) -> dict[str, Any]:
    """Train on `preset`'s source domain (the benchmark drawn with `seed`, the run seeded by `seed` too), then score
    the model on the source's test split (with the nuisance probe) and on the `select` and `report` targets (with
    the probe on their unseen cameras too)."""
    gen = dict(gen or {})
    config = benchmark_config(generator_config(preset, gen), overrides or {}, seed)
    shards = open_benchmark(preset, seed, data_root, **gen)
    size = (config.image_height, config.image_width)
    data = shards["source"].training_data(config.nuisance, size)
    evaluator = Evaluator(
        select=[shards["select"].eval_target(size, name="select")],
        source=shards["source"].eval_target(size, name="source"),
        report=[shards["report"].eval_target(size, name="report")],
        probe_targets=True,
    )

    class _Show:
        def on_check(self, trainer, report: CheckReport) -> None:
            if on_check is not None:
                on_check(report)

    metrics: dict[str, float] = {}

    def keep(trainer, report: CheckReport, scores: dict, final: bool) -> None:
        metrics.update({k: v for k, v in scores.items() if not isinstance(v, str)}, **phase_shares(report))

    t0 = time.perf_counter()
    fit(config, data, hooks=[_Show(), EvaluationHook(evaluator, keep)])  # evaluates once, at the end
    return {
        "preset": preset,
        "seed": seed,
        "overrides": dict(overrides or {}),
        "generator": gen,
        "datasets": {d: s.name for d, s in shards.items()},
        "config": config.to_dict(),
        "metrics": metrics,
        "seconds": time.perf_counter() - t0,
        "threads": torch.get_num_threads(),
    }


__all__ = [
    "DEFAULT_DATA_ROOT",
    "SYNTHETIC_TRAINING",
    "benchmark_config",
    "generator_config",
    "phase_shares",
    "run_benchmark",
]
