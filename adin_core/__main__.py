"""Train and score one ADIN model in this process, no Ray or MLflow: `python -m adin_core --help`.

Trains on the synthetic benchmark's source domain and reports direct transfer to its `select` and `report`
targets, next to the source domain's own cross-camera test split. For searches use `orchestrator.sweep`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from adin_core.config import ConfigError, TrainConfig
from adin_core.data.memory import TrainingData, held_out_val
from adin_core.data.synthetic import PRESETS, generate_benchmark
from adin_core.features import EvalTarget, evaluate_transfer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m adin_core", description=__doc__)
    ap.add_argument("--preset", default="hard", choices=sorted(PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="any TrainConfig field, e.g. --set adv_loss=ne --set beta=0.5 (repeatable)")
    ap.add_argument("--json", action="store_true", help="print the final scores as one JSON line")
    args = ap.parse_args(argv)

    bench = generate_benchmark(args.preset, seed=args.seed)
    values: dict = {"backbone": "small_cnn", "image_height": bench.config.height, "image_width": bench.config.width,
                    "batch_size": 32, "epochs": 12, "pretrain_id_epochs": 4, "pretrain_nuisance_epochs": 1,
                    "check_every": 20, "refresh_steps": 10, "seed": args.seed}
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            ap.error(f"--set {item!r}: expected FIELD=VALUE")
        values[key] = _parse(raw)
    try:
        config = TrainConfig.from_dict(values)
    except ConfigError as exc:
        ap.error(str(exc))
    train, val = held_out_val(bench.source.train, seed=args.seed)
    data = TrainingData(train, val, config.nuisance, name=f"synthetic/{args.preset}")

    from adin_core.train import fit

    class Print:
        def on_check(self, trainer, r) -> None:
            n = "-" if r.nuisance_acc is None else f"{r.nuisance_acc:.3f}"
            moved = f"  -> {r.next_phase}" if r.transition else ""
            print(f"step {r.step:5d}  {r.phase:<17} id_acc {r.id_acc:.3f}  nuisance_acc {n}{moved}")

    t0 = time.perf_counter()
    result = fit(config, data, hooks=[] if args.json else [Print()])
    scores = {}
    for name, domain in [("source", bench.source), *bench.targets.items()]:
        r = evaluate_transfer(result.model, EvalTarget(name, domain.query, domain.gallery),
                              image_size=(config.image_height, config.image_width))
        scores[name] = r.summary()
    if args.json:
        print(json.dumps({"config": config.to_dict(), "scores": scores, "seconds": time.perf_counter() - t0}))
        return 0
    print(f"\ntrained in {time.perf_counter() - t0:.1f} s; retrieval (source = own test split, others = direct "
          "transfer):")
    print(f"{'':8} {'rank1':>7} {'rank5':>7} {'mAP':>7} {'mINP':>7}")
    for name, s in scores.items():
        print(f"{name:8} {s['rank1']:7.3f} {s['rank5']:7.3f} {s['mAP']:7.3f} {s['mINP']:7.3f}")
    return 0


def _parse(raw: str):
    import yaml

    return yaml.safe_load(raw)


if __name__ == "__main__":
    sys.exit(main())
