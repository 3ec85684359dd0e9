"""Is the camera gone from ADIN's features, or only hidden from a softmax reader? The product's probe against other
linear readers, on the same features, folds and identities.

    python bench/probe_readers.py                     # shortcut, seeds 0 1 2: baseline and ADIN defaults
    python bench/probe_readers.py --seeds 5 6 7 8 9 --preset shortcut

ADIN's adversary f_N is a softmax classifier trained with cross-entropy, and the product's probe
(`adin_core.probe`) is one too (an L2-regularised multinomial logistic regression). Features can defeat that
family while a reader of another kind still finds the camera. So each model's retrieval features (source test
split, and each target's unseen cameras) are read by:

* `logistic`: the product's probe, as it runs in every trial;
* `logistic l2=0.1`: the same, 100x more regularised (how much the product's number depends on its L2);
* `least-squares l=1e-3` / `l=1e-2`: a ridge classifier (one-hot targets, closed form; lambda x N on the
  standardised features), a reader that is not trained through a softmax.

All readers use the product's identity-disjoint halves, both folds, and its subsampling; chance is the same.
Printed: per seed and arm the accuracy of each reader, then ADIN - baseline per reader (mean, per seed).
Each seed trains two models (about 3 min each on 2 cores).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from adin_core.benchmark import benchmark_config, generator_config
from adin_core.data.datasets import open_benchmark
from adin_core.evaluation import probe_target, target_features
from adin_core.probe import Reader, logistic_reader
from adin_core.train import fit

ARMS = {"baseline": {"adv_loss": "none"}, "adin": {}}


def least_squares_reader(lam: float) -> Reader:
    """A ridge classifier: one-hot targets, closed form, lambda x N on the standardised features."""

    def read(x_fit: torch.Tensor, y_fit: torch.Tensor, x_test: torch.Tensor, num_classes: int) -> torch.Tensor:
        targets = torch.eye(num_classes, dtype=x_fit.dtype)[y_fit]
        centre = targets.mean(0, keepdim=True)
        gram = x_fit.T @ x_fit + lam * len(x_fit) * torch.eye(x_fit.shape[1], dtype=x_fit.dtype)
        w = torch.linalg.solve(gram, x_fit.T @ (targets - centre))
        return (x_test @ w + centre).argmax(1)

    return read


READERS: dict[str, Reader | None] = {
    "logistic (product)": None,
    "logistic l2=0.1": logistic_reader(0.1),
    "least-squares l=1e-3": least_squares_reader(1e-3),
    "least-squares l=1e-2": least_squares_reader(1e-2),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="shortcut")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data-root", default="runs/data")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {torch.get_num_threads()}; preset {args.preset}; seeds {args.seeds}", flush=True)
    acc: dict[tuple[str, str, str], list[float]] = {}  # (arm, where, reader) -> per seed
    for seed in args.seeds:
        shards = open_benchmark(args.preset, seed, args.data_root)
        for arm, overrides in ARMS.items():
            config = benchmark_config(generator_config(args.preset), overrides, seed)
            size = (config.image_height, config.image_width)
            model = fit(config, shards["source"].training_data(config.nuisance, size)).model
            for where in ("source", "select", "report"):
                target = shards[where].eval_target(size, name=where)
                feats = target_features(model, target, config)
                scores = {
                    name: probe_target(feats, target, reader)["camera"].accuracy for name, reader in READERS.items()
                }
                for reader, value in scores.items():
                    acc.setdefault((arm, where, reader), []).append(value)
                print(
                    f"seed {seed} {arm:8s} {where:6s} " + "  ".join(f"{r} {v:.3f}" for r, v in scores.items()),
                    flush=True,
                )
    print("\nADIN - baseline, camera read from the features (negative: less camera), mean [per seed]:")
    for where in ("source", "select", "report"):
        for reader in READERS:
            d = [a - b for a, b in zip(acc[("adin", where, reader)], acc[("baseline", where, reader)])]
            print(
                f"  {where:6s} {reader:22s} {statistics.mean(d):+.3f}  [{', '.join(f'{v:+.3f}' for v in d)}]  "
                f"baseline {statistics.mean(acc[('baseline', where, reader)]):.3f}"
            )


if __name__ == "__main__":
    main()
