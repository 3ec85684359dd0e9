"""Evaluation speed and memory: adin_core.metrics against the per-query NumPy protocol, same run, same data.

    python bench/eval_speed.py            # Market-1501 size and MSMT17 size (2048-d and 3072-d features)
    python bench/eval_speed.py --quick    # smaller MSMT17-size reference subset
    python bench/eval_speed.py --fastreid ~/src/fast-reid   # also fast-reid's Cython evaluator, built here

Features are synthetic but shaped like a trained model's: identity centres plus a per-camera bias plus noise,
so the mAP lands where real direct-transfer numbers do (neither 0 nor 1) and the hardest matches sit deep in
the ranking. Each case runs in its own subprocess so that its peak resident memory is its own: VmHWM, the high-water
mark of the child's own address space (Linux's ru_maxrss carries the parent's peak across exec, so it read the
bench's own earlier allocations as the child's).

--fastreid DIR (a fast-reid checkout; `pip install cython`, a C compiler) builds its Cython evaluator
(`fastreid/evaluation/rank_cylib/rank_cy.pyx`, `evaluate_cy`) in a temporary folder and times it on the same
distance matrix in the same run: the yardstick the targets name. It holds the distance matrix, its argsort and a
match matrix (both int64) at once, 5x the matrix: 19 GB at MSMT17 size, so there it runs on the first
--msmt-queries queries, with ours on the same queries from their distance matrix, and the full MSMT17 protocol is
ours alone, from features. Without --fastreid the yardstick is the per-query NumPy protocol only, and the Cython
figure is the one recorded on these machines (CYTHON_MARKET_SECONDS).

Targets: Market size >= 6x faster than fast-reid's Cython evaluator; MSMT17 size (11,659 x 82,161, whose float32
distance matrix alone is 3.8 GB) under 3 GB peak memory and >= 3x the Cython evaluator's time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import types

import numpy as np

CYTHON_MARKET_SECONDS = 1.2  # torchreid/fast-reid rank_cy on Market-1501 size, measured on these machines


def make_problem(num_q: int, num_g: int, num_ids: int, num_cams: int, dim: int, seed: int, noise: float):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids, dim)).astype(np.float32)
    cam_bias = rng.normal(size=(num_cams, dim)).astype(np.float32) * 0.6
    q_pids, g_pids = rng.integers(0, num_ids, num_q), rng.integers(0, num_ids, num_g)
    q_cams, g_cams = rng.integers(0, num_cams, num_q), rng.integers(0, num_cams, num_g)

    def feats(pids, cams):
        out = np.empty((len(pids), dim), np.float32)
        for s in range(0, len(pids), 8192):
            e = min(s + 8192, len(pids))
            out[s:e] = (
                centres[pids[s:e]] + cam_bias[cams[s:e]] + noise * rng.standard_normal((e - s, dim), dtype=np.float32)
            )
        return out

    return feats(q_pids, q_cams), feats(g_pids, g_cams), q_pids, g_pids, q_cams, g_cams


# --------------------------------------------------------------------------------------------------------------
def _child(case: str, path: str, repeat: int) -> dict:
    import torch

    from adin_core.metrics import evaluate_features, evaluate_rank, evaluate_rank_reference

    torch.set_num_threads(os.cpu_count() or 1)
    z = np.load(path)
    labels = (z["q_pids"], z["g_pids"], z["q_cams"], z["g_cams"])
    base_rss = _peak_rss_kb()
    times = []
    if case == "cython":  # fast-reid's evaluate_cy on the same matrix; mAP and mINP over the valid queries
        sys.path.insert(0, z["cython_dir"].item())
        import rank_cy

        distmat = np.load(z["distmat_path"].item())
        for _ in range(repeat):
            t = time.perf_counter()
            cmc, all_ap, all_inp = rank_cy.evaluate_cy(distmat, *labels, 50)
            times.append(time.perf_counter() - t)
        valid = np.asarray(all_ap) > 0  # a query with a match has AP > 0; the others are skipped (AP left 0)
        r = types.SimpleNamespace(
            mAP=float(np.mean(np.asarray(all_ap)[valid])),
            mINP=float(np.mean(np.asarray(all_inp)[valid])),
            cmc=np.asarray(cmc),
            num_valid_queries=int(valid.sum()),
        )
    elif case == "features":  # features in, block-wise distances: never the full matrix
        # from .npy files: an array in an .npz is read through a buffer as large as itself, a peak of the
        # bench's loading, not of the evaluation
        qf, gf = torch.from_numpy(np.load(z["qf_path"].item())), torch.from_numpy(np.load(z["gf_path"].item()))
        for _ in range(repeat):
            t = time.perf_counter()
            r = evaluate_features(qf, gf, *labels)
            times.append(time.perf_counter() - t)
    else:
        distmat = np.load(z["distmat_path"].item(), mmap_mode=None)
        nq = int(z["ref_queries"]) if case == "reference" else distmat.shape[0]
        sub = (distmat[:nq], labels[0][:nq], labels[1], labels[2][:nq], labels[3])
        fn = evaluate_rank_reference if case == "reference" else evaluate_rank
        for _ in range(repeat):
            t = time.perf_counter()
            r = fn(*sub)
            times.append(time.perf_counter() - t)
    peak = _peak_rss_kb()
    return {
        "case": case,
        "seconds": float(np.median(times)),
        "all_seconds": times,
        "mAP": r.mAP,
        "mINP": r.mINP,
        "cmc": r.cmc[:20].tolist(),
        "valid": r.num_valid_queries,
        "peak_rss_mb": peak / 1024,
        "inputs_rss_mb": base_rss / 1024,
    }


def _peak_rss_kb() -> int:
    """This process's own peak resident memory (VmHWM), in kB; ru_maxrss where /proc is absent."""
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def build_cython(fastreid_dir: str, tmp: str) -> str:
    """fast-reid's rank_cy.pyx compiled in `tmp` (its own setup, as fast-reid's Makefile does); returns the folder."""
    src = os.path.join(os.path.expanduser(fastreid_dir), "fastreid", "evaluation", "rank_cylib", "rank_cy.pyx")
    if not os.path.isfile(src):
        sys.exit(f"error: --fastreid {fastreid_dir}: no {src} (give a fast-reid checkout)")
    out = os.path.join(tmp, "cython")
    os.makedirs(out)
    shutil.copy(src, out)
    with open(os.path.join(out, "setup.py"), "w") as fh:
        fh.write(
            "import numpy\nfrom Cython.Build import cythonize\nfrom setuptools import Extension, setup\n"
            "setup(ext_modules=cythonize([Extension('rank_cy', ['rank_cy.pyx'], "
            "include_dirs=[numpy.get_include()])], quiet=True))\n"
        )
    proc = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"], cwd=out, capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.exit(f"error: building {src} failed (needs cython and a C compiler):\n{proc.stderr[-2000:]}")
    return out


def _close(a: dict, b: dict) -> bool:
    """The same protocol within float32 accumulation (fast-reid sums AP terms in float32)."""
    return abs(a["mAP"] - b["mAP"]) < 1e-4 and np.allclose(a["cmc"], b["cmc"], atol=1e-4) and a["valid"] == b["valid"]


def _vs_cython(path: str, ours: dict, label: str, target: float) -> None:
    cy = run_child("cython", path, 1)
    ratio = cy["seconds"] / ours["seconds"]
    print(
        f"  fast-reid evaluate_cy (Cython, distmat in){label}: {cy['seconds']:.3f} s, "
        f"peak RSS {cy['peak_rss_mb']:.0f} MB; same results: {_close(cy, ours)}; ours {ratio:.1f}x faster "
        f"(target >= {target:g}x: {'met' if ratio >= target else 'NOT met'})"
    )


def run_child(case: str, path: str, repeat: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", case, path, str(repeat)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _same(a: dict, b: dict) -> bool:
    return (
        abs(a["mAP"] - b["mAP"]) < 1e-6
        and abs(a["mINP"] - b["mINP"]) < 1e-6
        and np.allclose(a["cmc"], b["cmc"], atol=1e-6)
        and a["valid"] == b["valid"]
    )


def save_problem(tmp: str, name: str, qf, gf, labels, **extra) -> str:
    """A problem for the children: features as .npy files (np.load reads them straight into their arrays; an array
    in an .npz goes through a buffer as large as itself), the labels and settings in `<name>.npz`; returns its path."""
    qf_path, gf_path = os.path.join(tmp, f"{name}_qf.npy"), os.path.join(tmp, f"{name}_gf.npy")
    np.save(qf_path, qf)
    np.save(gf_path, gf)
    path = os.path.join(tmp, f"{name}.npz")
    qp, gp, qc, gc = labels
    np.savez(path, q_pids=qp, g_pids=gp, q_cams=qc, g_cams=gc, qf_path=qf_path, gf_path=gf_path, **extra)
    return path


def bench_market(tmp: str, cython_dir: str | None) -> None:
    import torch

    from adin_core.metrics import pairwise_distance

    print("Market-1501 size: 3,368 queries x 15,913 gallery, 2048-d features")
    qf, gf, qp, gp, qc, gc = make_problem(3368, 15913, 751, 6, 2048, seed=0, noise=3.2)
    distmat = pairwise_distance(torch.from_numpy(qf), torch.from_numpy(gf)).numpy()
    dpath = os.path.join(tmp, "market_dist.npy")
    np.save(dpath, distmat)
    path = save_problem(
        tmp, "market", qf, gf, (qp, gp, qc, gc), distmat_path=dpath, ref_queries=3368, cython_dir=cython_dir or ""
    )
    ref = run_child("reference", path, 1)
    ours = run_child("ours", path, 5)
    feat = run_child("features", path, 3)
    print(
        f"  reference (per-query argsort, NumPy): {ref['seconds']:.3f} s   mAP={ref['mAP']:.4f} "
        f"mINP={ref['mINP']:.4f} rank1={ref['cmc'][0]:.4f}"
    )
    print(
        f"  adin_core.evaluate_rank (distmat in): {ours['seconds']:.3f} s   identical: {_same(ours, ref)}   "
        f"runs: {', '.join(f'{t:.3f}' for t in ours['all_seconds'])}"
    )
    print(
        f"  adin_core.evaluate_features (features in, distances included): {feat['seconds']:.3f} s   "
        f"identical: {_same(feat, ref)}"
    )
    print(f"  speed-up vs reference measured now: {ref['seconds'] / ours['seconds']:.1f}x")
    if cython_dir:
        _vs_cython(path, ours, "", 6)
    else:
        ratio = CYTHON_MARKET_SECONDS / ours["seconds"]
        print(f"  vs the Cython evaluator's recorded {CYTHON_MARKET_SECONDS} s: {ratio:.1f}x (--fastreid measures it)")
    print(
        f"  peak RSS: reference {ref['peak_rss_mb']:.0f} MB, ours {ours['peak_rss_mb']:.0f} MB "
        f"(distance matrix itself {distmat.nbytes / 2**20:.0f} MB)"
    )


def bench_msmt(tmp: str, ref_queries: int, cython_dir: str | None, dim: int = 2048) -> None:
    print(f"MSMT17 size: 11,659 queries x 82,161 gallery, {dim}-d features (full float32 distmat would be 3.8 GB)")
    qf, gf, qp, gp, qc, gc = make_problem(11659, 82161, 3060, 15, dim, seed=1, noise=3.2 * (dim / 2048) ** 0.5)
    path = save_problem(tmp, "msmt", qf, gf, (qp, gp, qc, gc), distmat_path="", ref_queries=0)
    feat_bytes = qf.nbytes + gf.nbytes
    del qf, gf
    ours = run_child("features", path, 1)
    print(
        f"  adin_core.evaluate_features: {ours['seconds']:.1f} s   mAP={ours['mAP']:.4f} mINP={ours['mINP']:.4f} "
        f"rank1={ours['cmc'][0]:.4f}"
    )
    print(
        f"  peak RSS {ours['peak_rss_mb']:.0f} MB (of which input features {feat_bytes / 2**20:.0f} MB; "
        f"target < 3072 MB: {'met' if ours['peak_rss_mb'] < 3072 else 'NOT met'})"
    )
    # identical results: reference on the first `ref_queries` queries (its full run would need the 3.8 GB matrix)
    import torch

    from adin_core.metrics import pairwise_distance

    z = np.load(path)
    q_sub = np.load(z["qf_path"].item())[:ref_queries]
    sub_d = pairwise_distance(torch.from_numpy(q_sub), torch.from_numpy(np.load(z["gf_path"].item()))).numpy()
    dpath = os.path.join(tmp, "msmt_sub.npy")
    np.save(dpath, sub_d)
    sub = os.path.join(tmp, "msmt_sub.npz")
    np.savez(
        sub,
        q_pids=z["q_pids"][:ref_queries],
        g_pids=z["g_pids"],
        q_cams=z["q_cams"][:ref_queries],
        g_cams=z["g_cams"],
        distmat_path=dpath,
        ref_queries=ref_queries,
        cython_dir=cython_dir or "",
    )
    ref = run_child("reference", sub, 1)
    mine = run_child("ours", sub, 1)
    print(
        f"  first {ref_queries} queries: reference {ref['seconds']:.2f} s, ours {mine['seconds']:.2f} s "
        f"({ref['seconds'] / mine['seconds']:.1f}x), identical: {_same(ref, mine)}"
    )
    if cython_dir:
        _vs_cython(sub, mine, f" on the first {ref_queries} queries", 3)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="check MSMT17-size results on 300 queries, not 1,500")
    ap.add_argument("--skip-msmt", action="store_true")
    ap.add_argument("--skip-market", action="store_true")
    ap.add_argument(
        "--dims", type=int, nargs="+", default=[2048, 3072], help="MSMT17-size feature widths (ResNet-50, dual-branch)"
    )
    ap.add_argument("--fastreid", metavar="DIR", help="a fast-reid checkout: time its Cython evaluator in this run")
    args = ap.parse_args()
    print(f"cores: {os.cpu_count()}, numpy {np.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        cython_dir = build_cython(args.fastreid, tmp) if args.fastreid else None
        if not args.skip_market:
            bench_market(tmp, cython_dir)
        for dim in [] if args.skip_msmt else args.dims:
            bench_msmt(tmp, 300 if args.quick else 1500, cython_dir, dim)


if __name__ == "__main__":
    main()
