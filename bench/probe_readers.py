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

import numpy as np
import torch

import adin_core.probe as probe
from adin_core.benchmark import benchmark_config, generator_config
from adin_core.data.datasets import open_benchmark
from adin_core.evaluation import probe_labels
from adin_core.features import extract_features
from adin_core.train import fit

ARMS = {"baseline": {"adv_loss": "none"}, "adin": {}}


def _folds(x: np.ndarray, pids: np.ndarray, labels: np.ndarray, read) -> float:
    """`read(x_fit, y_fit, x_test, num_classes) -> predictions` on the product probe's folds; its accuracy."""
    keep = probe._subsample(pids, probe.PROBE_MAX_IMAGES, 0)
    x, pids, labels = x[keep].astype(np.float64), pids[keep], labels[keep]
    classes, y = np.unique(labels, return_inverse=True)
    a, b = probe._identity_halves(pids, 0)
    correct = 0
    for fit_idx, test_idx in ((a, b), (b, a)):
        xf, xt = x[fit_idx], x[test_idx]
        mean, std = xf.mean(0, keepdims=True), xf.std(0, ddof=1, keepdims=True).clip(1e-6)
        correct += int((read((xf - mean) / std, y[fit_idx], (xt - mean) / std, len(classes)) == y[test_idx]).sum())
    return correct / len(y)


def least_squares(lam: float):
    def read(xf, yf, xt, k):
        targets = np.eye(k)[yf]
        centre = targets.mean(0, keepdims=True)
        w = np.linalg.solve(xf.T @ xf + lam * len(xf) * np.eye(xf.shape[1]), xf.T @ (targets - centre))
        return (xt @ w + centre).argmax(1)
    return read


def logistic(l2: float):
    def read(xf, yf, xt, k):
        w, b = probe.fit_linear_probe(torch.tensor(xf), torch.tensor(yf), k, l2=l2)
        return (torch.tensor(xt) @ w + b).argmax(1).numpy()
    return read


READERS = {"logistic (product)": None, "logistic l2=0.1": logistic(0.1),
           "least-squares l=1e-3": least_squares(1e-3), "least-squares l=1e-2": least_squares(1e-2)}


def read_all(x: np.ndarray, pids: np.ndarray, cams: np.ndarray) -> dict[str, float]:
    out = {}
    for name, reader in READERS.items():
        out[name] = (probe.nuisance_probe(torch.tensor(x), pids, cams).accuracy if reader is None
                     else _folds(x, pids, cams, reader))
    return out


def features_of(model, target, size) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    splits = target.images()
    x = torch.cat([extract_features(model, s.images, image_size=size) for s in splits]).numpy()
    pids = np.concatenate([s.pids for s in splits])
    from adin_core.data.memory import ReIDArrays
    merged = ReIDArrays(np.zeros((len(pids), 1, 1, 3), np.uint8), pids, np.concatenate([s.camids for s in splits]),
                        np.concatenate([s.timeperiods for s in splits]))
    return x, pids, probe_labels(merged)["camera"]


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
                scores = read_all(*features_of(model, shards[where].eval_target(size, name=where), size))
                for reader, value in scores.items():
                    acc.setdefault((arm, where, reader), []).append(value)
                print(f"seed {seed} {arm:8s} {where:6s} " + "  ".join(f"{r} {v:.3f}" for r, v in scores.items()),
                      flush=True)
    print("\nADIN - baseline, camera read from the features (negative: less camera), mean [per seed]:")
    for where in ("source", "select", "report"):
        for reader in READERS:
            d = [a - b for a, b in zip(acc[("adin", where, reader)], acc[("baseline", where, reader)])]
            print(f"  {where:6s} {reader:22s} {statistics.mean(d):+.3f}  [{', '.join(f'{v:+.3f}' for v in d)}]  "
                  f"baseline {statistics.mean(acc[('baseline', where, reader)]):.3f}")


if __name__ == "__main__":
    main()
