"""What the nuisance probe adds to a trial's evaluation.

    python bench/probe_cost.py                      # shortcut: train a model (16 epochs, ~1-2 min), then time
    python bench/probe_cost.py --epochs 0           # the same on untrained weights (the probe's easiest case)
    python bench/probe_cost.py --images 4000 --dim 2048   # also the probe alone at its subsampling cap, ResNet-50 width

A trial's evaluation (`Evaluator.evaluate`, as `orchestrator.trial` builds it) extracts the features of the select
targets and of the source's test split, ranks every target's gallery for each query, and probes the source's
features for each nuisance kind (camera and time of day on the synthetic presets). Timed here, interleaved (median
of --repeats):

* everything the evaluation does but the probe (every target's and the source's features extracted and ranked);
* the probe on the source features that work extracted (`probe_target`, exactly the evaluation's call);
* the evaluation as the product runs it (`Evaluator.evaluate`), for reference: about the sum of the two.

The probe's share is the second over the first (target: <= 10%). Timing the probe itself, rather than subtracting
two evaluations, keeps the machine's noise (tens of ms between evaluations here) out of a ~50 ms figure.

The model is trained first because a trained encoder's source features are nearly separable by camera: the probe's
fit then runs to its iteration cap, where random features let it stop early.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from adin_core.benchmark import benchmark_config, generator_config
from adin_core.data.datasets import open_benchmark
from adin_core.evaluation import Evaluator, probe_target, rank_target, score_target, target_features
from adin_core.models import ADINModel
from adin_core.probe import nuisance_probe
from adin_core.train import fit


def _median_ms(samples: list[float]) -> float:
    return 1000 * statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="shortcut")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=16, help="train this long first (0: untrained weights)")
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--data-root", default="runs/data")
    ap.add_argument("--images", type=int, default=0, help="also time the probe alone on N random features")
    ap.add_argument("--dim", type=int, default=2048, help="feature width for --images")
    args = ap.parse_args()

    config = benchmark_config(generator_config(args.preset), {"epochs": max(1, args.epochs)}, args.seed)
    size = (config.image_height, config.image_width)
    shards = open_benchmark(args.preset, args.seed, args.data_root)
    data = shards["source"].training_data(config.nuisance, size)
    if args.epochs > 0:
        t = time.perf_counter()
        model = fit(config, data).model
        print(f"trained {args.epochs} epochs in {time.perf_counter() - t:.0f} s")
    else:
        model = ADINModel(config, data.num_identities, data.num_nuisance_classes())
    model.eval()
    evaluator = Evaluator(
        select=[shards["select"].eval_target(size, name="select")],
        source=shards["source"].eval_target(size, name="source"),
    )
    source = evaluator.source

    def unprobed() -> list[torch.Tensor]:
        """Everything a trial's evaluation does but the probe; returns the source features it extracted."""
        feats = target_features(model, source, config)
        rank_target(feats, source)
        for target in evaluator.select:
            score_target(model, target, config)
        return feats

    timings: dict[str, list[float]] = {"evaluation, no probe": [], "the probe": [], "evaluation": []}
    for r in range(args.repeats):
        t = time.perf_counter()
        feats = unprobed()
        timings["evaluation, no probe"].append(time.perf_counter() - t)
        t = time.perf_counter()
        probes = probe_target(feats, source)  # what the evaluation adds: the probe on the features it extracted
        timings["the probe"].append(time.perf_counter() - t)
        t = time.perf_counter()
        evaluator.evaluate(model, config)  # the product's call, for reference: its median is about the sum
        timings["evaluation"].append(time.perf_counter() - t)
    n = sum(len(s) for s in source.images())
    print(
        f"threads {torch.get_num_threads()}; preset {args.preset}: source test split {n} images, "
        f"{config.backbone} {config.image_height}x{config.image_width}; probed: "
        + ", ".join(f"{k} ({p.classes} classes, accuracy {p.accuracy:.3f})" for k, p in probes.items())
    )
    for name, samples in timings.items():
        print(f"  {name:22s} {_median_ms(samples):6.0f} ms (median of {args.repeats})")
    ratio = statistics.median(timings["the probe"]) / statistics.median(timings["evaluation, no probe"])
    print(
        f"  the probe adds {100 * ratio:.1f}% to a trial's evaluation (target <= 10%: "
        f"{'met' if ratio <= 0.10 else 'NOT met'})"
    )
    if args.images:
        rng = np.random.default_rng(0)
        pids = np.repeat(np.arange(args.images // 8), 8)
        cams = rng.integers(0, 15, len(pids))
        feats = F.normalize(torch.randn(len(pids), args.dim), dim=1)
        t = time.perf_counter()
        nuisance_probe(feats, pids, cams)
        print(
            f"  the probe alone on {len(pids)} x {args.dim} features, 15 classes: "
            f"{(time.perf_counter() - t) * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
