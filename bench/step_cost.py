"""Cost of one ADIN adversarial training step against a plain cross-entropy step: same backbone, same batch.

    python bench/step_cost.py                                    # small CNN, 64x32, batch 64
    python bench/step_cost.py --backbone resnet50 --height 256 --width 128 --batch 16 --steps 3

The adversarial step is f_E + f_I on L_I + beta * L_adv, then f_N on cross-entropy over the same, detached
features (so the adversary keeps up without a second pass through f_E). The baseline is the identity step
ADIN uses in pretraining and rescue, with the center loss off, i.e. plain cross-entropy. Target: <= 1.2x.
The two kinds of step are timed interleaved, so drift in the machine's speed hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from adin_core.config import TrainConfig
from adin_core.data.memory import ReIDArrays, TrainingData
from adin_core.train import ADINTrainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="small_cnn", choices=["small_cnn", "resnet50", "dual_branch"])
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--adv-loss", default="kl")
    ap.add_argument("--nuisance", default="camera")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    n, ids = args.batch * 4, 32
    arrays = ReIDArrays(
        rng.integers(0, 255, (n, args.height, args.width, 3), dtype=np.uint8),
        np.arange(n) % ids,
        rng.integers(0, 6, n),
        rng.integers(0, 3, n),
    )
    data = TrainingData(arrays, arrays.subset(np.arange(ids)), args.nuisance, name="bench")
    cfg = TrainConfig(
        backbone=args.backbone,
        image_height=args.height,
        image_width=args.width,
        batch_size=args.batch,
        adv_loss=args.adv_loss,
        nuisance=args.nuisance,
        center_weight=0.0,
        device=args.device,
    )
    trainer = ADINTrainer(cfg, data)
    batch = next(data.batches(0, args.batch))
    x, pids, labels = trainer._prepare(batch, train=True)
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)

    def timed(fn) -> float:
        sync()
        t = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t

    plain = lambda: trainer._step_identity(x, pids)  # noqa: E731
    adversarial = lambda: trainer._step_adversarial(x, pids, labels)  # noqa: E731
    for _ in range(2):  # warm-up
        plain()
        adversarial()
    t_plain, t_adv = [], []
    for _ in range(args.steps):
        t_plain.append(timed(plain))
        t_adv.append(timed(adversarial))
    p, a = statistics.median(t_plain), statistics.median(t_adv)
    print(
        f"device {trainer.device}, threads {torch.get_num_threads()}, backbone {args.backbone}, "
        f"{args.height}x{args.width}, batch {args.batch}, adv_loss {args.adv_loss}, nuisance {args.nuisance}"
    )
    print(f"  plain cross-entropy step: {p * 1000:.1f} ms (median of {args.steps})")
    print(f"  ADIN adversarial step:    {a * 1000:.1f} ms")
    print(f"  ratio: {a / p:.3f}x  (target <= 1.2x: {'met' if a / p <= 1.2 else 'NOT met'})")


if __name__ == "__main__":
    main()
