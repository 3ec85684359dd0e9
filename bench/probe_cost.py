"""What the nuisance probe adds to an evaluation: the source test split scored with and without it.

    python bench/probe_cost.py                       # the synthetic `shortcut` preset's source test split
    python bench/probe_cost.py --images 4000 --dim 2048   # the probe alone at its subsampling cap, ResNet-50 width

An evaluation extracts the split's features and ranks the gallery for every query; the probe reuses those
features and fits two small logistic regressions. Target: the probe adds <= 10% to the evaluation. Both are
timed interleaved (median of --repeats), so drift in the machine's speed hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from adin_core.benchmark import benchmark_config
from adin_core.data.memory import EvalTarget
from adin_core.data.synthetic import generate_benchmark
from adin_core.evaluation import score_target
from adin_core.models import ADINModel
from adin_core.probe import nuisance_probe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="shortcut")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--images", type=int, default=0, help="also time the probe alone on N random features")
    ap.add_argument("--dim", type=int, default=2048, help="feature width for --images")
    args = ap.parse_args()

    bench = generate_benchmark(args.preset, seed=0)
    config = benchmark_config(bench.config, {}, 0)
    model = ADINModel(config, 10, {"camera": bench.config.num_cameras})
    src = EvalTarget("source", bench.source.query, bench.source.gallery)
    plain, probed = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        score_target(model, src, config)
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        score_target(model, src, config, probe=True)
        probed.append(time.perf_counter() - t)
    p, q = statistics.median(plain), statistics.median(probed)
    n = len(src.query) + len(src.gallery)
    print(f"threads {torch.get_num_threads()}; preset {args.preset}: source test split {n} images, "
          f"{config.backbone} {config.image_height}x{config.image_width}")
    print(f"  evaluation without the probe: {p * 1000:.0f} ms (median of {args.repeats})")
    print(f"  evaluation with the probe:    {q * 1000:.0f} ms")
    print(f"  the probe adds {100 * (q / p - 1):.1f}% (target <= 10%: {'met' if q / p <= 1.10 else 'NOT met'})")
    if args.images:
        rng = np.random.default_rng(0)
        pids = np.repeat(np.arange(args.images // 8), 8)
        cams = rng.integers(0, 15, len(pids))
        feats = F.normalize(torch.randn(len(pids), args.dim), dim=1)
        t = time.perf_counter()
        nuisance_probe(feats, pids, cams)
        print(f"  the probe alone on {len(pids)} x {args.dim} features, 15 classes: "
              f"{(time.perf_counter() - t) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
