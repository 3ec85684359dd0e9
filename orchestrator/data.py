"""`python -m orchestrator.data`: write the synthetic benchmark, shard a dataset into Parquet, inspect shards.

The command line only; the work is adin_core.data.datasets's (shared with `python -m adin_core` and the sweeps).

    python -m orchestrator.data synth --preset hard --out DIR
    python -m orchestrator.data shard --format market1501 --src DIR --dest URI [--name N] [--version V] [--overwrite]
    python -m orchestrator.data inspect URI/<dataset>/<version>

URI is a local folder or s3://bucket/prefix (endpoint and credentials from the AWS_* variables).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from adin_core.data.datasets import shard_dataset, write_synthetic
from adin_core.data.layouts import READERS, LayoutError
from adin_core.data.memory import ImageDecodeError, decode_image
from adin_core.data.shards import ShardError, ShardSet
from adin_core.data.storage import StorageError, resolve
from adin_core.data.synthetic import LAYOUTS, PRESETS

DATA_ERRORS = (LayoutError, ShardError, StorageError, ImageDecodeError, FileExistsError)


def _verify_split(shards: ShardSet, split: str) -> None:
    """Every file against its sha256 (ShardSet.table), every image decoded, and the rows against the manifest's
    counts: a file whose hash was recomputed after its images were damaged passes the first check, not this one."""
    table = shards.table(split, columns=["image", "pid", "source_path"])
    expected = shards.manifest["splits"][split]
    if table.num_rows != expected["images"]:
        raise ShardError(
            f"{shards.location.uri}: split {split} holds {table.num_rows} images, its manifest says "
            f"{expected['images']}"
        )
    pids = set(table.column("pid").to_pylist())
    if len(pids) != expected["identities"]:
        raise ShardError(
            f"{shards.location.uri}: split {split} holds {len(pids)} identities, its manifest says "
            f"{expected['identities']}"
        )
    for blob, path in zip(table.column("image").to_pylist(), table.column("source_path").to_pylist()):
        decode_image(blob, None, f"{shards.name}:{path} (split {split})")


def _summary(manifest: dict[str, Any]) -> str:
    lines = [f"{manifest['dataset']}/{manifest['version']} ({manifest['format']}, schema {manifest['schema_version']})"]
    for split, s in manifest["splits"].items():
        lines.append(
            f"  {split:<10} {s['images']:>7} images {s['identities']:>6} identities "
            f"{len(s['cameras']):>3} cameras {len(s['files']):>3} files"
        )
    lines.append(f"  nuisance label kinds: {', '.join(manifest['priors']) or 'none'}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m orchestrator.data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("synth", help="write the synthetic nuisance benchmark as dataset trees")
    sp.add_argument("--preset", default="hard", choices=sorted(PRESETS))
    sp.add_argument("--out", required=True)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--layout", default="auto", choices=["auto", *LAYOUTS])
    sh = sub.add_parser("shard", help="turn a dataset folder into Parquet shards plus manifest")
    sh.add_argument("--format", required=True, help=f"one of {sorted(READERS)}")
    sh.add_argument("--src", required=True, help="the dataset folder as unpacked from its archive")
    sh.add_argument("--dest", required=True, help="local folder or s3://bucket/prefix")
    sh.add_argument("--name", help="dataset name in the store (default: the format)")
    sh.add_argument("--version", default="v1")
    sh.add_argument("--overwrite", action="store_true", help="replace an existing complete version")
    ins = sub.add_parser(
        "inspect", help="print a shard set's manifest summary (verifies every file and decodes every image)"
    )
    ins.add_argument("uri")
    return ap


def _synth(args: argparse.Namespace) -> None:
    info = write_synthetic(args.preset, args.out, seed=args.seed, layout=args.layout)
    for name, d in info["domains"].items():
        print(
            f"{name:<7} {os.path.join(args.out, d['path'])}  train {d['train']}  query {d['query']}  "
            f"gallery {d['gallery']}"
        )
    print(
        f"shard each with: python -m orchestrator.data shard --format {info['layout']} "
        f"--src {os.path.join(args.out, info['domains']['source']['path'])} --dest DEST --name synth-source"
    )


def _shard(args: argparse.Namespace) -> None:
    if args.format not in READERS:
        raise LayoutError(f"unknown --format {args.format!r}; choose one of {sorted(READERS)}")
    manifest = shard_dataset(
        args.format, args.src, args.dest, name=args.name, version=args.version, overwrite=args.overwrite
    )
    print(_summary(manifest))
    print(f"written to {resolve(args.dest).join(manifest['dataset'], manifest['version']).uri}")


def _inspect(args: argparse.Namespace) -> None:
    shards = ShardSet.open(args.uri)
    for split in shards.splits:
        _verify_split(shards, split)
    print(_summary(shards.manifest))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        {"synth": _synth, "shard": _shard, "inspect": _inspect}[args.cmd](args)
    except DATA_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\ninterrupted: nothing was committed (a version exists only once its manifest is written)", file=sys.stderr
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
