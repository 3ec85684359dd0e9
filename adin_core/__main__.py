"""Train and score one ADIN model in this process, no Ray or MLflow: `python -m adin_core --help`.

Trains on a synthetic benchmark's source domain and reports direct transfer to its `select` and `report` targets,
next to the source domain's own cross-camera test split and the nuisance probe on it (how much of the camera a
linear classifier still reads from the features). For paired comparisons use `python -m adin_core.compare`; for
searches `python -m orchestrator.sweep`.
"""

from __future__ import annotations

import argparse
import json
import sys

from adin_core.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    import os

    from adin_core.benchmark import DEFAULT_DATA_ROOT
    from adin_core.compare import parse_assignments
    from adin_core.data.synthetic import PRESETS

    ap = argparse.ArgumentParser(prog="python -m adin_core", description=__doc__)
    ap.add_argument("--preset", default="shortcut", choices=sorted(PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any TrainConfig field, e.g. --set adv_loss=ne --set beta=0.5 (repeatable)",
    )
    ap.add_argument(
        "--gen",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a benchmark generator (SynthConfig) field, e.g. --gen num_cameras=12 (repeatable)",
    )
    ap.add_argument(
        "--data-root",
        default=os.environ.get("ADIN_DATA_ROOT", DEFAULT_DATA_ROOT),
        help="where the benchmark is sharded on first use (default runs/data; ADIN_DATA_ROOT)",
    )
    ap.add_argument("--json", action="store_true", help="print the final scores as one JSON line")
    args = ap.parse_args(argv)
    try:
        overrides, gen = {}, {}
        for item in args.set:
            overrides.update(parse_assignments(item, "--set"))
        for item in args.gen:
            gen.update(parse_assignments(item, "--gen"))
        from adin_core.benchmark import benchmark_config, generator_config

        config = benchmark_config(generator_config(args.preset, gen), overrides, args.seed)
        config.check_device()
    except (ValueError, TypeError, ConfigError) as exc:
        ap.error(str(exc))

    from adin_core.benchmark import run_benchmark
    from adin_core.train import TrainingDiverged

    def show(r) -> None:
        n = "-" if r.nuisance_acc is None else f"{r.nuisance_acc:.3f}"
        moved = f"  -> {r.next_phase}" if r.transition else ""
        grip = f"  grip {r.grip['adv_to_id']:.2f}" if r.grip else ""
        print(f"step {r.step:5d}  {r.phase:<17} id_acc {r.id_acc:.3f}  nuisance_acc {n}{grip}{moved}", flush=True)

    try:
        out = run_benchmark(
            args.preset, args.seed, overrides, data_root=args.data_root, gen=gen, on_check=None if args.json else show
        )
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except TrainingDiverged as exc:
        print(f"error: {exc}; lower beta or the learning rates", file=sys.stderr)
        return 1
    m = out["metrics"]
    if args.json:
        print(json.dumps(out))
        return 0
    print(
        f"\ntrained and scored in {out['seconds']:.1f} s ({out['threads']} torch threads); retrieval (source = own "
        "cross-camera test split, select/report = direct transfer to unseen cameras and identities):"
    )
    print(f"{'':8} {'rank1':>7} {'rank5':>7} {'mAP':>7} {'mINP':>7}")
    for name, prefix in (("source", "source/"), ("select", "select/select/"), ("report", "report/report/")):
        print(f"{name:8} " + " ".join(f"{m[prefix + k]:7.3f}" for k in ("rank1", "rank5", "mAP", "mINP")))
    probes = [k[len("probe/") : -len("_acc")] for k in m if k.startswith("probe/") and k.endswith("_acc")]
    for kind in probes:
        print(
            f"nuisance probe, {kind}: accuracy {m[f'probe/{kind}_acc']:.3f} (chance {m[f'probe/{kind}_chance']:.3f})"
            " on the source test split, identity-disjoint folds"
        )
    if "grip/adv_to_id" in m:
        shares = ", ".join(f"{k.split('/')[1]} {v:.0%}" for k, v in m.items() if k.startswith("phase_share/"))
        print(f"adversary's grip ||beta dL_adv/df|| / ||dL_I/df||: {m['grip/adv_to_id']:.2f}; steps: {shares}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
