"""`python -m orchestrator.data`: write the synthetic benchmark, shard a dataset into Parquet, inspect shards.

    python -m orchestrator.data synth --preset hard --out DIR
    python -m orchestrator.data shard --format market1501 --src DIR --dest URI [--name N] [--version V] [--overwrite]
    python -m orchestrator.data inspect URI/<dataset>/<version>

URI is a local folder or s3://bucket/prefix (endpoint and credentials from the AWS_* variables).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from adin_core.data.layouts import READERS, LayoutError, read_layout
from adin_core.data.memory import ImageDecodeError
from adin_core.data.shards import MANIFEST, ShardError, ShardSet, check_destination, write_shards
from adin_core.data.storage import StorageError, resolve
from adin_core.data.synthetic import LAYOUTS, PRESETS, generate_benchmark, write_layout

SYNTH_INFO = "benchmark.json"
DATA_ERRORS = (LayoutError, ShardError, StorageError, ImageDecodeError, FileExistsError)


def write_synthetic(preset: str, out: str, *, seed: int = 0, layout: str = "auto") -> dict[str, Any]:
    """Write the source and the `select`/`report` targets as dataset trees under `out`; returns benchmark.json."""
    info_path = os.path.join(out, SYNTH_INFO)
    if os.path.exists(info_path):
        raise FileExistsError(f"{info_path} exists: a benchmark was already written to {out}")
    bench = generate_benchmark(preset, seed=seed, with_target_train=True)
    if layout == "auto":
        layout = "market1501" if bench.config.num_cameras <= 6 else "msmt17"
    domains = {"source": bench.source, **bench.targets}
    info: dict[str, Any] = {"preset": preset, "seed": seed, "layout": layout, "config": bench.config.__dict__,
                            "domains": {}}
    for name, domain in domains.items():
        folder = write_layout(domain, os.path.join(out, name), layout)
        info["domains"][name] = {"path": os.path.relpath(folder, out), "train": len(domain.train),
                                 "query": len(domain.query), "gallery": len(domain.gallery)}
    tmp = info_path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(info, fh, indent=1)
    os.replace(tmp, info_path)  # last: a benchmark folder without it is incomplete
    return info


SYNTHETIC_SCHEME = "synthetic:"


def resolve_dataset(uri: str, data_root: str) -> str:
    """A shard-set URI; `synthetic:<preset>/<domain>` is generated and sharded under data_root on first use."""
    if not uri.startswith(SYNTHETIC_SCHEME):
        return uri
    preset, _, domain = uri[len(SYNTHETIC_SCHEME):].partition("/")
    if preset not in PRESETS or domain not in ("source", "select", "report"):
        raise LayoutError(f"{uri!r}: expected synthetic:<preset>/<source|select|report> with preset in "
                          f"{sorted(PRESETS)}")
    root = resolve(data_root)

    def manifest(name: str):
        return root.join(f"synthetic-{preset}-{name}", "v1", MANIFEST)

    if not manifest(domain).exists():
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            info = write_synthetic(preset, tmp)
            for name, d in info["domains"].items():
                if manifest(name).exists():
                    continue  # another sweep made it meanwhile
                try:
                    shard_dataset(info["layout"], os.path.join(tmp, os.path.dirname(d["path"])), data_root,
                                  name=f"synthetic-{preset}-{name}", show_progress=False)
                except ShardError:
                    if not manifest(name).exists():  # not merely another sweep's commit winning
                        raise
    return root.join(f"synthetic-{preset}-{domain}", "v1").uri


def shard_dataset(fmt: str, src: str, dest: str, *, name: str | None = None, version: str = "v1",
                  overwrite: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Read a layout and write it as shards; the manifest is written last."""
    check_destination(dest, name or fmt, version, overwrite=overwrite)
    records = read_layout(fmt, src)
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(records), unit="img", desc=f"sharding {name or fmt}/{version}", file=sys.stderr)
    try:
        manifest = write_shards(records, dest, name or fmt, version, fmt=fmt, overwrite=overwrite, source=src,
                                progress=bar.update if bar else None)
    finally:
        if bar:
            bar.close()
    return manifest


def _summary(manifest: dict[str, Any]) -> str:
    lines = [f"{manifest['dataset']}/{manifest['version']} ({manifest['format']}, schema {manifest['schema_version']})"]
    for split, s in manifest["splits"].items():
        lines.append(f"  {split:<10} {s['images']:>7} images {s['identities']:>6} identities "
                     f"{len(s['cameras']):>3} cameras {len(s['files']):>3} files")
    lines.append(f"  nuisance label kinds: {', '.join(manifest['priors']) or 'none'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m orchestrator.data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
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
    ins = sub.add_parser("inspect", help="print a shard set's manifest summary (verifies every file)")
    ins.add_argument("uri")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "synth":
            info = write_synthetic(args.preset, args.out, seed=args.seed, layout=args.layout)
            for name, d in info["domains"].items():
                print(f"{name:<7} {os.path.join(args.out, d['path'])}  train {d['train']}  query {d['query']}  "
                      f"gallery {d['gallery']}")
            print(f"shard each with: python -m orchestrator.data shard --format {info['layout']} "
                  f"--src {os.path.join(args.out, info['domains']['source']['path'])} --dest DEST --name synth-source")
        elif args.cmd == "shard":
            if args.format not in READERS:
                raise LayoutError(f"unknown --format {args.format!r}; choose one of {sorted(READERS)}")
            manifest = shard_dataset(args.format, args.src, args.dest, name=args.name, version=args.version,
                                     overwrite=args.overwrite)
            print(_summary(manifest))
            print(f"written to {resolve(args.dest).join(manifest['dataset'], manifest['version']).uri}")
        else:
            shards = ShardSet.open(args.uri)
            for split in shards.splits:
                shards.table(split, columns=["pid"])  # reads and verifies every file
            print(_summary(shards.manifest))
    except DATA_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
