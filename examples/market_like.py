"""From a dataset folder laid out like Market-1501 to a ranked gallery, with the commands a user would type.

    python examples/market_like.py                       # the smoke space's own size: 4 trials of 4 epochs
    python examples/market_like.py --trials 1 --epochs 3 --out runs/example   # smaller (what CI runs)

1. `orchestrator.data synth` writes a small benchmark as Market-1501 trees (`bounding_box_train`,
   `bounding_box_test`, `query`, names like `0002_c1s1_000451_03.jpg`): a source and two target domains.
2. `orchestrator.data shard --format market1501` turns each tree into Parquet shards with a manifest, as it would
   an unpacked Market-1501 archive.
3. `orchestrator.sweep` searches `search_spaces/smoke.yaml` on those shards instead of the space's own datasets.
4. `orchestrator.best --export` writes the winner's weights, config and model card.
5. The winner ranks the report domain's gallery for its queries, read straight from the JPEG files: the top 5 of
   the first query, and the mAP and rank-1 of all of them (torchreid's protocol).

Everything goes under --out (which must not exist yet): the trees, the shards, the sweep's storage and an SQLite
MLflow database; the winner is in <out>/winner. Exit codes are the commands': the first that fails stops the
example with its own.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys

import numpy as np
from PIL import Image

MARKET_NAME = re.compile(r"^(-1|\d{4})_c(\d)s\d_\d{6}_\d{2}\.jpg$")


def run(*args: str) -> None:
    """Print the command as a user would type it, run it, and stop with its exit code if it fails."""
    print("$ python -m " + " ".join(shlex.quote(a) for a in args), flush=True)
    code = subprocess.call([sys.executable, "-m", *args])
    if code != 0:
        sys.exit(code)


def read_market_folder(folder: str) -> tuple[np.ndarray, list[int], list[int], list[str]]:
    """The images of a Market-1501 folder as uint8 (N, H, W, 3), with identities and 0-based cameras from the names;
    junk (-1) is left out, as the protocol does."""
    names = sorted(n for n in os.listdir(folder) if MARKET_NAME.match(n) and not n.startswith("-1"))
    images = np.stack([np.asarray(Image.open(os.path.join(folder, n)).convert("RGB")) for n in names])
    pids = [int(MARKET_NAME.match(n).group(1)) for n in names]
    cams = [int(MARKET_NAME.match(n).group(2)) - 1 for n in names]
    return images, pids, cams, names


def rank_gallery(export_dir: str, tree: str) -> float:
    """Rank `tree`'s gallery for its queries with the exported model; print the first query's top 5; return mAP."""
    from adin_core.features import extract_features
    from adin_core.metrics import evaluate_features
    from orchestrator.best import load_export

    model, config = load_export(export_dir)
    size = (config.image_height, config.image_width)
    q_img, q_pid, q_cam, q_names = read_market_folder(os.path.join(tree, "query"))
    g_img, g_pid, g_cam, g_names = read_market_folder(os.path.join(tree, "bounding_box_test"))
    qf = extract_features(model, q_img, image_size=size)
    gf = extract_features(model, g_img, image_size=size)
    order = np.argsort(-(qf[0:1] @ gf.T).numpy()[0])[:5]  # features are L2-normalised: cosine similarity
    print(f"query {q_names[0]}: top 5 of {len(g_names)} gallery images")
    for k, i in enumerate(order, 1):
        print(f"  {k}. {g_names[i]}{'  (same person)' if g_pid[i] == q_pid[0] else ''}")
    result = evaluate_features(qf, gf, q_pid, g_pid, q_cam, g_cam)
    print(f"{len(q_names)} queries: mAP {result.mAP:.3f}, rank-1 {result.rank(1):.3f}")
    return result.mAP


def _flat(flags: dict[str, str]) -> list[str]:
    return [item for pair in flags.items() for item in pair]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/example", help="a folder that does not exist yet")
    ap.add_argument("--trials", type=int, help="the sweep's --num-samples (default: the space's)")
    ap.add_argument("--epochs", type=float, help="the sweep's --epochs (default: the space's)")
    args = ap.parse_args()
    if os.path.exists(args.out):
        print(f"error: --out {args.out} exists; give a new folder", file=sys.stderr)
        return 2
    out = os.path.abspath(args.out)
    raw, shards = os.path.join(out, "market-like"), os.path.join(out, "shards")
    run("orchestrator.data", "synth", "--preset", "tiny", "--layout", "market1501", "--out", raw)
    trees = {}
    for domain in ("source", "select", "report"):
        (tree,) = [os.path.join(raw, domain, d) for d in os.listdir(os.path.join(raw, domain))]
        run("orchestrator.data", "shard", "--format", "market1501", "--src", tree, "--dest", shards, "--name", domain)
        trees[domain] = tree
    sizes = [*(["--num-samples", str(args.trials)] if args.trials else [])]
    sizes += ["--epochs", f"{args.epochs:g}"] if args.epochs else []
    tracking = f"sqlite:///{out}/mlflow.db"
    stores = ["--storage", os.path.join(out, "sweeps"), "--tracking-uri", tracking, "--data-root", shards]
    data = {f"--{d}": os.path.join(shards, d, "v1") for d in ("source", "select", "report")}
    run("orchestrator.sweep", "--space", "search_spaces/smoke.yaml", "--quiet", *stores, *sizes, *_flat(data))
    run("orchestrator.best", "--export", os.path.join(out, "winner"), "--tracking-uri", tracking)
    rank_gallery(os.path.join(out, "winner"), trees["report"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
