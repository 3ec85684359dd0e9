"""Datasets by URI: the one data path of `python -m adin_core`, the compare tool, the sweeps and the export.

A dataset URI is either a shard set, `<root>/<dataset>/<version>` (a local folder or `s3://bucket/prefix`,
written by `shard_dataset` from a real layout), or a synthetic benchmark domain:

    synthetic:<preset>/<source|select|report>[?seed=N&<SynthConfig field>=<value>...]

`seed` draws the whole benchmark, its clothing palette included: the domains of one seed share a palette, those of
two seeds do not (a model trained on seed 0's source meets colours it never saw in seed 2's targets, and transfer
there falls to near chance: mAP 0.06), so a transfer target of a source is a domain of the same seed. A generator
setting draws every domain anew, but a domain's training split comes first from its own random stream, so settings
of the test splits and of the targets (`test_ids`, `target_cameras`) leave the source's training split as it is.

`resolve_dataset` generates and shards it under a data root on first use, as
`<data root>/synthetic-<preset>-<domain>/<version>`; the version names the generator and a digest of its settings
and seed, so changed settings never reuse a stale copy. Every consumer then reads the same shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import urllib.parse
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from adin_core.data.layouts import LayoutError, read_layout
from adin_core.data.shards import MANIFEST, ShardError, ShardSet, check_destination, write_shards
from adin_core.data.storage import resolve
from adin_core.data.synthetic import (
    LAYOUTS,
    PRESETS,
    SynthBenchmark,
    SynthConfig,
    domain_records,
    generate_benchmark,
    write_layout,
)

SYNTHETIC_SCHEME = "synthetic:"
SYNTHETIC_DOMAINS = ("source", "select", "report")
GENERATOR_VERSION = 2  # bump when the generator draws different images for the same settings
SYNTH_INFO = "benchmark.json"


@dataclass(frozen=True)
class SyntheticURI:
    preset: str
    domain: str
    seed: int = 0
    overrides: tuple[tuple[str, Any], ...] = ()  # SynthConfig fields changed from the preset, sorted

    @classmethod
    def parse(cls, uri: str) -> "SyntheticURI":
        body, _, query = uri[len(SYNTHETIC_SCHEME) :].partition("?")
        preset, _, domain = body.partition("/")
        if preset not in PRESETS or domain not in SYNTHETIC_DOMAINS:
            raise LayoutError(
                f"{uri!r}: expected synthetic:<preset>/<{'|'.join(SYNTHETIC_DOMAINS)}>[?seed=N&...] "
                f"with preset in {sorted(PRESETS)}"
            )
        known = {f.name for f in fields(SynthConfig)}
        seed, overrides = 0, {}
        for key, raw in urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
            value = _parse_value(raw)
            if key == "seed":
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise LayoutError(f"{uri!r}: seed must be an integer >= 0, got {raw!r}")
                seed = value
            elif key in known:
                overrides[key] = tuple(value) if isinstance(value, list) else value
            else:
                raise LayoutError(f"{uri!r}: {key!r} is neither seed nor a generator setting; known: {sorted(known)}")
        out = cls(preset, domain, seed, tuple(sorted(overrides.items())))
        try:
            out.config()
        except (TypeError, ValueError) as exc:
            raise LayoutError(f"{uri!r}: {exc}") from None
        return out

    def config(self) -> SynthConfig:
        return replace(PRESETS[self.preset], **dict(self.overrides))

    def with_domain(self, domain: str) -> "SyntheticURI":
        return replace(self, domain=domain)

    @property
    def uri(self) -> str:
        query = [("seed", str(self.seed))] if self.seed else []
        query += [
            (k, json.dumps(list(v) if isinstance(v, tuple) else v, separators=(",", ":"))) for k, v in self.overrides
        ]
        return f"{SYNTHETIC_SCHEME}{self.preset}/{self.domain}" + (f"?{urllib.parse.urlencode(query)}" if query else "")

    @property
    def dataset(self) -> str:
        return f"synthetic-{self.preset}-{self.domain}"

    @property
    def version(self) -> str:
        """The generator's version and a digest of everything that decides its images."""
        key = json.dumps({"config": asdict(self.config()), "seed": self.seed}, sort_keys=True, default=list)
        return f"g{GENERATOR_VERSION}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def _parse_value(raw: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def synthetic_uri(preset: str, domain: str, seed: int = 0, **overrides: Any) -> str:
    """The URI of a synthetic benchmark domain (what `resolve_dataset` accepts)."""
    return SyntheticURI(preset, domain, seed, tuple(sorted(overrides.items()))).uri


def is_synthetic(uri: str) -> bool:
    return uri.startswith(SYNTHETIC_SCHEME)


def resolve_dataset(uri: str, data_root: str) -> str:
    """A shard-set URI. A `synthetic:` URI is generated and sharded under `data_root` on first use: all three
    domains of its benchmark at once (they are drawn together), each as one shard set."""
    if not is_synthetic(uri):
        return uri
    spec = SyntheticURI.parse(uri)
    root = resolve(data_root)

    def location(domain: str):
        s = spec.with_domain(domain)
        return root.join(s.dataset, s.version)

    if not location(spec.domain).join(MANIFEST).exists():
        bench = generate_benchmark(spec.config(), seed=spec.seed)
        domains = {"source": bench.source, **bench.targets}
        for name, domain in domains.items():
            s = spec.with_domain(name)
            if location(name).join(MANIFEST).exists():
                continue  # another process made it meanwhile
            try:
                write_shards(domain_records(domain), root.uri, s.dataset, s.version, fmt="synthetic", source="")
            except ShardError:
                if not location(name).join(MANIFEST).exists():  # not merely another writer's commit winning
                    raise
    return location(spec.domain).uri


def open_benchmark(preset: str, seed: int, data_root: str, **overrides: Any) -> dict[str, ShardSet]:
    """The three domains of a synthetic benchmark, sharded under `data_root` (generated on first use)."""
    return {
        d: ShardSet.open(resolve_dataset(synthetic_uri(preset, d, seed, **overrides), data_root))
        for d in SYNTHETIC_DOMAINS
    }


# ------------------------------------------------------------------------------------------------------------
# real layouts: write the synthetic benchmark as dataset trees, shard a tree
# ------------------------------------------------------------------------------------------------------------
def write_synthetic(preset: str, out: str, *, seed: int = 0, layout: str = "auto") -> dict[str, Any]:
    """Write the source and the `select`/`report` targets as dataset trees under `out` (JPEG files, real names and
    list files), to exercise the readers; returns benchmark.json, which is written last."""
    info_path = os.path.join(out, SYNTH_INFO)
    if os.path.exists(info_path):
        raise FileExistsError(f"{info_path} exists: a benchmark was already written to {out}")
    bench: SynthBenchmark = generate_benchmark(preset, seed=seed, with_target_train=True)
    cameras = max(bench.config.num_cameras, bench.config.target_cameras or 0)
    if layout == "auto":
        layout = "market1501" if cameras <= 6 else "msmt17"
    if layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}; choose one of {list(LAYOUTS)}")
    domains = {"source": bench.source, **bench.targets}
    info: dict[str, Any] = {
        "preset": preset,
        "seed": seed,
        "layout": layout,
        "config": asdict(bench.config),
        "domains": {},
    }
    for name, domain in domains.items():
        folder = write_layout(domain, os.path.join(out, name), layout)
        info["domains"][name] = {
            "path": os.path.relpath(folder, out),
            "train": len(domain.train),
            "query": len(domain.query),
            "gallery": len(domain.gallery),
        }
    tmp = info_path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(info, fh, indent=1)
    os.replace(tmp, info_path)
    return info


def shard_dataset(
    fmt: str,
    src: str,
    dest: str,
    *,
    name: str | None = None,
    version: str = "v1",
    overwrite: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Read a dataset tree in its real layout and write it as shards; the manifest is written last."""
    check_destination(dest, name or fmt, version, overwrite=overwrite)
    records = read_layout(fmt, src)
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(records), unit="img", desc=f"sharding {name or fmt}/{version}", file=sys.stderr)
    try:
        return write_shards(
            records,
            dest,
            name or fmt,
            version,
            fmt=fmt,
            overwrite=overwrite,
            source=src,
            progress=bar.update if bar else None,
        )
    finally:
        if bar:
            bar.close()


__all__ = [
    "SYNTHETIC_SCHEME",
    "SyntheticURI",
    "is_synthetic",
    "open_benchmark",
    "resolve_dataset",
    "shard_dataset",
    "synthetic_uri",
    "write_synthetic",
]
