"""Does ADIN's effect hold beyond the preset it is reported on? The same paired comparison on generator settings
that change one knob of `shortcut` at a time (none of them was used to design it).

    python bench/adin_robustness.py                        # every variation below, 5 seeds, ~30 min on 2 cores
    python bench/adin_robustness.py --only cams15 tint0.15 --seeds 0 1 2 3 4 5 6 7

Per variation: baseline / ADIN defaults / shuffled-label control on paired seeds; printed are the paired
differences ADIN - baseline (direct transfer, source, camera probe) and ADIN - control (transfer), each as
mean [95% paired-t interval] and the number of seeds in ADIN's favour.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from adin_core.compare import Arm, run_all, value
from adin_core.stats import Paired

VARIATIONS: dict[str, dict] = {
    "shortcut": {},
    "cams15": {"num_cameras": 15},  # MSMT17's camera count
    "cams12": {"num_cameras": 12},  # a source that covers less of the style space
    "targets8": {"target_cameras": 8},
    "one_cam_per_id": {"cams_per_id": 1},
    "zipf0.5": {"zipf_alpha": 0.5},
    "palette8": {"palette_size": 8},
    "palette24": {"palette_size": 24},
    "style0.7": {"style_strength": 0.7},
    "images12": {"images_per_id": 12},
    "time_scene0.3": {"time_scene": 0.3},  # the scene's brightness changes with time of day (within identity)
    "tint0.15": {"tint": 0.15},  # a colour cast: camera entangled with clothing colour (principle 2 broken)
}
ARMS = [Arm("baseline", {"adv_loss": "none"}), Arm("adin", {}), Arm("control", {"shuffle_nuisance": True})]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=sorted(VARIATIONS), help="run these variations only")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data-root", default=os.environ.get("ADIN_DATA_ROOT", "runs/data"))
    ap.add_argument("--json", metavar="FILE", help="also write every run's record")
    args = ap.parse_args()
    names = args.only or list(VARIATIONS)
    rows, records = [], {}
    t0 = time.perf_counter()
    for name in names:
        runs = run_all(
            ARMS,
            ["shortcut"],
            args.seeds,
            {},
            VARIATIONS[name],
            args.jobs,
            args.threads,
            args.data_root,
            log=lambda *_: None,
        )
        records[name] = runs
        by = {a.name: sorted((r for r in runs if r["arm"] == a.name), key=lambda r: r["seed"]) for a in ARMS}

        def pair(a: str, b: str, key: str) -> Paired:
            return Paired.of([value(r, key) for r in by[a]], [value(r, key) for r in by[b]])

        row = (
            name,
            pair("adin", "baseline", "transfer"),
            pair("adin", "baseline", "source/mAP"),
            pair("adin", "baseline", "probe/camera_acc"),
            pair("adin", "control", "transfer"),
            sum(value(r, "transfer") for r in by["baseline"]) / len(by["baseline"]),
        )
        rows.append(row)
        print(f"[{time.perf_counter() - t0:5.0f} s] {name}: transfer {row[1]}", flush=True)

    def cell(p: Paired, better_if_negative: bool = False) -> str:
        wins = len(p.diffs) - p.positive if better_if_negative else p.positive
        return f"{p.mean:+.3f} [{p.low:+.3f}, {p.high:+.3f}] {wins}/{len(p.diffs)}"

    print(
        f"\n{len(args.seeds)} paired seeds per variation; cells: mean [95% paired-t interval] seeds in ADIN's favour\n"
    )
    print(
        "| variation of `shortcut` | baseline transfer | ADIN − baseline, transfer | ADIN − baseline, source | "
        "ADIN − baseline, camera probe | ADIN − control, transfer |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, t, s, p, c, base in rows:
        change = ", ".join(f"{k}={v}" for k, v in VARIATIONS[name].items()) or "(the preset)"
        print(f"| {name}: {change} | {base:.3f} | {cell(t)} | {cell(s)} | {cell(p, True)} | {cell(c)} |")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json + ".tmp", "w") as fh:
            json.dump({"seeds": args.seeds, "variations": VARIATIONS, "runs": records}, fh, indent=1)
        os.replace(args.json + ".tmp", args.json)


if __name__ == "__main__":
    main()
