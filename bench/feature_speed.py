"""Feature extraction on the CPU: the chunk `extract_features` uses there against whole eval batches, same run, same
model, same images.

    python bench/feature_speed.py                      # small CNN, 64x32, 960 images (a benchmark evaluation)
    python bench/feature_speed.py --threads 1 2 4 --images 2000

Every evaluation of a trial extracts the features of the source's test split and of each select target, with the
flip; on 2 cores that was a third of a benchmark training's time. A trial's worker runs torch on 1 thread (Ray
sets OMP_NUM_THREADS from its CPUs). Printed per thread count and batch size: seconds per pass (median of
--repeats, the batch sizes interleaved so drift hits all alike), the ratio to the 256-image batch (the config's
`eval_batch_size`, the baseline), and whether the features are bit-identical to the baseline's. The chunk
`adin_core.features.chunk_size` picks is marked (the same at any thread count).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from adin_core.config import TrainConfig
from adin_core.features import chunk_size, extract_features
from adin_core.models import ADINModel

BASELINE = 256


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128, BASELINE, 512])
    ap.add_argument("--images", type=int, default=960)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    batches = sorted(set(args.batches) | {BASELINE})

    config = TrainConfig(backbone="small_cnn", image_height=args.height, image_width=args.width)
    torch.manual_seed(0)
    model = ADINModel(config, num_identities=64, nuisance_classes={"camera": 4})
    images = np.random.default_rng(0).integers(0, 255, (args.images, args.height, args.width, 3), dtype=np.uint8)

    def run(b: int) -> torch.Tensor:
        return extract_features(model, images, batch_size=BASELINE, chunk=b)

    print(f"small CNN {args.height}x{args.width}, {args.images} images with the flip, median of {args.repeats}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        picked = chunk_size(BASELINE, torch.device("cpu"))
        reference = run(BASELINE)
        times: dict[int, list[float]] = {b: [] for b in batches}
        same: dict[int, bool] = {}
        for _ in range(args.repeats):
            for b in batches:
                t0 = time.perf_counter()
                f = run(b)
                times[b].append(time.perf_counter() - t0)
                same[b] = torch.equal(f, reference)
        base = statistics.median(times[BASELINE])
        for b in batches:
            t = statistics.median(times[b])
            mark = "  <- chunk_size" if b == picked else ""
            print(
                f"  threads {threads}  batch {b:4d}: {t:.3f} s  {t / base:.2f}x  "
                f"{'identical' if same[b] else 'DIFFERENT'}{mark}"
            )


if __name__ == "__main__":
    main()
