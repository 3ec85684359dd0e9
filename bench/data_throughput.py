"""Training-input throughput: images per second decoded and augmented to 256x128, four ways, same run.

    python bench/data_throughput.py [--images 3000] [--workers 2] [--no-ray]

(a) Parquet shards on local disk through adin_core's loader (ShardSet -> TrainingData.batches, JPEG decoding on
    a thread pool, prefetched; flip + pad/crop + normalise as the trainer does it, on whole batches);
(b) the same shards through a local S3-API server (moto_server on 127.0.0.1, started and stopped here);
(c) the baseline a ReID user has today: a folder of JPEG files read with PIL through a torch Dataset + DataLoader
    with the same transforms (torchvision Resize, RandomHorizontalFlip, Pad, RandomCrop, ToTensor, Normalize)
    and the same number of workers;
(d) Ray Data: read_parquet -> map_batches(decode) -> iter_torch_batches, then the same augmentation.

The images are the synthetic benchmark's, written as 128x64 JPEG files like Market-1501's crops.
Targets: (a) >= 1.5x (c); (b) >= 0.8x (a).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HEIGHT, WIDTH, BATCH = 256, 128, 64


def build_dataset(tmp: str, n_images: int) -> str:
    from adin_core.data.synthetic import SynthConfig, generate_domain, write_layout

    ids = max(8, n_images // 8)
    cfg = SynthConfig(height=128, width=64, num_cameras=6, cams_per_id=2, train_ids=ids, test_ids=4, images_per_id=8)
    domain = generate_domain(cfg, name="bench", seed=3)
    write_layout(domain, tmp, "market1501")
    return tmp


def run_ours(uri: str, epochs: int) -> tuple[float, int]:
    from adin_core.config import TrainConfig
    from adin_core.data.memory import prefetch
    from adin_core.data.shards import ShardSet
    from adin_core.train import ADINTrainer

    t0 = time.perf_counter()
    data = ShardSet.open(uri).training_data("camera", (HEIGHT, WIDTH))
    load = time.perf_counter() - t0
    cfg = TrainConfig(backbone="small_cnn", image_height=HEIGHT, image_width=WIDTH, batch_size=BATCH, device="cpu")
    trainer = ADINTrainer(cfg, data)  # for its _prepare: normalise + flip + pad/crop on the batch
    n = 0
    t0 = time.perf_counter()
    for epoch in range(epochs):
        for batch in prefetch(data.batches(epoch, BATCH)):
            x, _, _ = trainer._prepare(batch, train=True)
            n += x.shape[0]
    return n / (time.perf_counter() - t0), int(load * 1000)


class FolderDataset(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], pids: list[int]) -> None:
        import torchvision.transforms as T

        self.paths, self.pids = paths, pids
        self.transform = T.Compose(
            [
                T.Resize((HEIGHT, WIDTH)),
                T.RandomHorizontalFlip(),
                T.Pad(round(0.04 * HEIGHT)),
                T.RandomCrop((HEIGHT, WIDTH)),
                T.ToTensor(),
                T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return self.transform(im.convert("RGB")), self.pids[i]


def run_folder(src: str, workers: int, epochs: int) -> float:
    from adin_core.data.layouts import read_layout

    recs = [r for r in read_layout("market1501", src) if r.split == "train"]
    ds = FolderDataset([r.path for r in recs], [r.pid for r in recs])
    loader = torch.utils.data.DataLoader(
        ds, batch_size=BATCH, shuffle=True, num_workers=workers, drop_last=True, persistent_workers=workers > 0
    )
    n = 0
    t0 = time.perf_counter()
    for _ in range(epochs):
        for x, _ in loader:
            n += x.shape[0]
    return n / (time.perf_counter() - t0)


def run_ray(local_uri: str, workers: int, epochs: int) -> tuple[float, float]:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    from adin_core.config import TrainConfig
    from adin_core.data.memory import Batch, decode_image
    from adin_core.data.shards import ShardSet
    from adin_core.train import ADINTrainer

    t0 = time.perf_counter()
    ray.init(
        address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1"
    )
    start = time.perf_counter() - t0
    try:
        shards = ShardSet.open(local_uri)
        files = [os.path.join(local_uri, f["path"]) for f in shards.manifest["splits"]["train"]["files"]]
        data = shards.training_data("camera", (HEIGHT, WIDTH))
        trainer = ADINTrainer(
            TrainConfig(backbone="small_cnn", image_height=HEIGHT, image_width=WIDTH, batch_size=BATCH, device="cpu"),
            data,
        )

        def decode(batch: dict) -> dict:
            imgs = np.stack([decode_image(b, (HEIGHT, WIDTH)) for b in batch["image"]])
            return {"images": imgs, "pid": batch["pid"]}

        ds = ray.data.read_parquet(files, columns=["image", "pid"]).map_batches(decode, batch_size=BATCH)
        n = 0
        t0 = time.perf_counter()
        for epoch in range(epochs):
            for b in ds.random_shuffle(seed=epoch).iter_torch_batches(batch_size=BATCH, drop_last=True):
                images = b["images"].permute(0, 3, 1, 2)
                x, _, _ = trainer._prepare(Batch(images, b["pid"], {}), train=True)
                n += x.shape[0]
        return n / (time.perf_counter() - t0), start
    finally:
        ray.shutdown()


def start_moto() -> tuple[subprocess.Popen, str]:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from orchestrator.net import free_port, wait_for_port

    exe = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_for_port(port)
    return proc, f"http://127.0.0.1:{port}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()

    from adin_core.data.datasets import shard_dataset

    torch.set_num_threads(args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        src = build_dataset(os.path.join(tmp, "src"), args.images)
        store = os.path.join(tmp, "store")
        shard_dataset("market1501", src, store, name="bench", show_progress=False)
        local_uri = os.path.join(store, "bench", "v1")
        n_train = sum(1 for _ in os.scandir(os.path.join(src, "Market-1501-v15.09.15", "bounding_box_train")))
        print(
            f"{n_train} JPEG files of 128x64 -> {HEIGHT}x{WIDTH}, batch {BATCH}, {args.workers} workers, "
            f"{args.epochs} epochs, torch threads {torch.get_num_threads()}"
        )

        c = run_folder(src, args.workers, args.epochs)
        print(f"(c) JPEG folder + PIL + DataLoader:       {c:8.0f} img/s")
        a, a_load = run_ours(local_uri, args.epochs)
        print(f"(a) Parquet shards, local disk:           {a:8.0f} img/s   (open + verify: {a_load} ms)")

        proc, endpoint = start_moto()
        try:
            import boto3

            os.environ.update(
                AWS_ENDPOINT_URL=endpoint,
                AWS_ACCESS_KEY_ID="bench",
                AWS_SECRET_ACCESS_KEY="bench",
                AWS_DEFAULT_REGION="us-east-1",
            )
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
            shard_dataset("market1501", src, "s3://bench/data", name="bench", show_progress=False)
            b, b_load = run_ours("s3://bench/data/bench/v1", args.epochs)
            print(f"(b) Parquet shards, local S3-API server:  {b:8.0f} img/s   (open + verify: {b_load} ms)")
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        if not args.no_ray:
            d, start = run_ray(local_uri, args.workers, args.epochs)
            print(f"(d) Ray Data read_parquet + map_batches:  {d:8.0f} img/s   (ray.init: {start:.1f} s)")
        print(
            f"ratios: (a)/(c) = {a / c:.2f}x (target >= 1.5x: {'met' if a / c >= 1.5 else 'NOT met'}); "
            f"(b)/(a) = {b / a:.2f}x (target >= 0.8x: {'met' if b / a >= 0.8 else 'NOT met'})"
            + ("" if args.no_ray else f"; (d)/(a) = {d / a:.2f}x")
        )


if __name__ == "__main__":
    main()
