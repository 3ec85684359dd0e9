"""How noisy is the verification's verdict, and where does the noise come from?

    python bench/verify_noise.py                          # thresholds.yaml's fixed values, 6 fresh seeds, 2 at once
    python bench/verify_noise.py --seeds 1000 1001 1002 1003 1004 1005 1006 1007 --gen-report test_ids=240

The verification retrains the winner and the identity-only baseline on fresh seeds (same data, paired) and judges
winner - baseline on the report target's mAP. Its interval is +/- t * sd_d / sqrt(n), sd_d the seed-to-seed sd of
the paired difference. Two things make up sd_d: training (the seed changes the initialisation and the batch
order) and the evaluation itself (the report target's few identities are one sample of the identities the
target could have held). This bench trains the shipped default ADIN and the baseline on the space's data with the
verification's seeds and prints, per seed, both report mAPs and their difference; then sd_d, and the part of
it that is evaluation noise: the sd of the paired difference when the report target's query identities are
resampled with replacement (same two models, 400 bootstrap draws), averaged over the seeds as a variance. When
that share is large, a larger report split (`--gen-report test_ids=N`, a generator setting of the report domain)
buys power more cheaply than seeds do. It also prints the minimum detectable effect (80% power, two-sided 5%) for
2 to 12 seeds at the measured sd_d. Torch runs one thread a training (recorded).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from adin_core.stats import Paired, detectable_effect  # noqa: E402


def per_query_ap(dist: np.ndarray, q_pids, g_pids, q_camids, g_camids) -> tuple[np.ndarray, np.ndarray]:
    """AP of every query with a valid match (the torchreid protocol, as adin_core.metrics.evaluate_rank_reference),
    and the identity of each such query."""
    aps, pids = [], []
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i]))
        raw = (g_pids[order][keep] == q_pids[i]).astype(np.float64)
        if not raw.any():
            continue
        cum = raw.cumsum()
        aps.append(float((cum / np.arange(1.0, raw.size + 1) * raw).sum() / raw.sum()))
        pids.append(q_pids[i])
    return np.array(aps), np.array(pids)


def train_one(job: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from adin_core.config import TrainConfig
    from adin_core.data.datasets import resolve_dataset
    from adin_core.data.shards import ShardSet
    from adin_core.evaluation import rank_target, target_features
    from adin_core.train import fit

    config = TrainConfig.from_dict(job["config"])
    size = (config.image_height, config.image_width)
    data = ShardSet.open(resolve_dataset(job["source"], job["data_root"])).training_data(config.nuisance, size)
    t0 = time.perf_counter()
    model = fit(config, data).model
    out = {**job, "seconds": time.perf_counter() - t0, "extra": {}}
    for role in ("report", "select", *[f"extra:{u}" for u in job["extra_reports"]]):
        uri = role[len("extra:") :] if role.startswith("extra:") else job[role]
        target = ShardSet.open(resolve_dataset(uri, job["data_root"])).eval_target(size, name="t")
        feats = target_features(model, target, config)
        q, g = target.query, target.gallery
        qn, gn = (torch.nn.functional.normalize(f.float(), dim=1) for f in feats[:2])  # as evaluate_features does
        dist = (1.0 - qn @ gn.T).numpy()
        aps, pids = per_query_ap(dist, q.pids, g.pids, q.camids, g.camids)
        scored = rank_target(feats, target)["mAP"]
        # the same protocol as the product (near-ties may order differently: float32 matmuls in blocks)
        assert abs(scored - aps.mean()) < 2e-3, (scored, aps.mean())
        if role.startswith("extra:"):
            out["extra"][uri] = scored
            continue
        prefix = "" if role == "report" else "select_"
        out.update({f"{prefix}mAP": scored, f"{prefix}aps": aps.tolist(), f"{prefix}pids": pids.tolist()})
    return out


def bootstrap_sd(a: dict, b: dict, draws: int, rng: np.random.Generator) -> float:
    """sd of mAP(a) - mAP(b) over resamples of the query identities (the same resample for both models)."""
    pids = np.array(a["pids"])
    assert pids.tolist() == b["pids"], "both models are scored on the same queries"
    diff = np.array(a["aps"]) - np.array(b["aps"])
    ids = np.unique(pids)
    by_id = [diff[pids == i] for i in ids]
    out = []
    for _ in range(draws):
        pick = rng.integers(0, len(ids), len(ids))
        out.append(np.concatenate([by_id[j] for j in pick]).mean())
    return float(np.std(out, ddof=1))


def main(argv: list[str] | None = None) -> int:
    import yaml

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default=os.path.join(REPO, "search_spaces", "thresholds.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=list(range(1000, 1006)))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--data-root", default="runs/data")
    ap.add_argument(
        "--gen-report",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a generator setting of the report domain (e.g. test_ids=240)",
    )
    ap.add_argument("--draws", type=int, default=400)
    ap.add_argument(
        "--also-report",
        action="append",
        default=[],
        metavar="URI",
        help="another report target to score the same models on (e.g. synthetic:shortcut/report?seed=1)",
    )
    ap.add_argument("--json", help="write every result here")
    args = ap.parse_args(argv)
    raw = yaml.safe_load(open(args.space))
    epochs = raw["training"]["epochs"]
    report = raw["targets"]["report"][0]
    if args.gen_report:
        report += ("&" if "?" in report else "?") + "&".join(args.gen_report)
    arms = {"default": {}, "baseline": {"adv_loss": "none"}}
    jobs = [
        {
            "arm": arm,
            "seed": seed,
            "source": raw["source"],
            "report": report,
            "select": raw["targets"]["select"][0],
            "data_root": args.data_root,
            "extra_reports": args.also_report,
            "config": {**raw["fixed"], **over, "epochs": epochs, "seed": seed},
        }
        for seed in args.seeds
        for arm, over in arms.items()
    ]
    print(
        f"{len(jobs)} trainings ({len(arms)} arms x {len(args.seeds)} seeds), {args.jobs} at once, 1 torch thread "
        f"each; report target {report}",
        flush=True,
    )
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(train_one, jobs))
    by = {(r["arm"], r["seed"]): r for r in results}
    rng = np.random.default_rng(0)
    print(f"\n{'seed':>6} {'default':>8} {'baseline':>9} {'diff':>8} {'eval sd of diff':>16}")
    boots = []
    for seed in args.seeds:
        a, b = by[("default", seed)], by[("baseline", seed)]
        boots.append(bootstrap_sd(a, b, args.draws, rng))
        print(f"{seed:>6} {a['mAP']:8.4f} {b['mAP']:9.4f} {a['mAP'] - b['mAP']:+8.4f} {boots[-1]:16.4f}")
    paired = Paired.of(
        [by[("default", s)]["mAP"] for s in args.seeds], [by[("baseline", s)]["mAP"] for s in args.seeds]
    )
    sd_d = float(np.std(paired.diffs, ddof=1))
    eval_var = float(np.mean(np.square(boots)))
    print(f"\ndefault - baseline, report mAP: {paired.summary()}")
    sel = Paired.of(
        [by[("default", s)]["select_mAP"] for s in args.seeds], [by[("baseline", s)]["select_mAP"] for s in args.seeds]
    )
    print(f"default - baseline, select mAP: {sel.summary()} (per seed: {', '.join(f'{d:+.3f}' for d in sel.diffs)})")
    for uri in args.also_report:
        other = Paired.of(
            [by[("default", s)]["extra"][uri] for s in args.seeds],
            [by[("baseline", s)]["extra"][uri] for s in args.seeds],
        )
        print(f"default - baseline, {uri} mAP: {other.summary()} (sd {other.sd:.3f})")
    if args.also_report:

        def mean_report(r):
            return (r["mAP"] + sum(r["extra"].values())) / (1 + len(r["extra"]))

        both = Paired.of(
            [mean_report(by[("default", s)]) for s in args.seeds],
            [mean_report(by[("baseline", s)]) for s in args.seeds],
        )
        print(
            f"default - baseline, mean over the {1 + len(args.also_report)} report targets: {both.summary()} "
            f"(sd {both.sd:.3f}; detectable at 8 seeds: {detectable_effect(both.sd, 8):.3f})"
        )
    print(
        f"sd of the paired difference over seeds: {sd_d:.4f}; of it, evaluation noise (query identities "
        f"resampled): sd {math.sqrt(eval_var):.4f}, {eval_var / sd_d**2:.0%} of the variance"
    )
    queries = len(by[("default", args.seeds[0])]["aps"])
    print(
        f"report target: {queries} scored queries of {len(set(by[('default', args.seeds[0])]['pids']))} "
        f"identities; {time.perf_counter() - t0:.0f} s in all"
    )
    print(
        "minimum detectable effect (80% power, two-sided 5%) at this sd: "
        + ", ".join(f"{n} seeds {detectable_effect(sd_d, n):.3f}" for n in (2, 3, 4, 6, 8, 10, 12))
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"results": results, "args": vars(args)}, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
