"""ReID retrieval metrics: the torchreid / fast-reid protocol (CMC, mAP, mINP), computed without sorting rows.

Protocol (torchreid `eval_market1501`): for each query, gallery items with the same pid *and* camera are
removed; a query with no remaining match is skipped; CMC is averaged over the remaining queries; AP is
non-interpolated; mINP = (#matches) / (rank of the hardest match).

All of these only need the rank of each true match among the valid gallery items, which is the number of
valid items ahead of it. Counting those for the few matches of a query is much cheaper than argsorting a
whole row of the gallery (the per-query argsort is what torchreid's Python and Cython evaluators do).

Only gallery items no farther than a query's hardest match can stand ahead of a match, so each query costs a
few vectorised passes over its row plus work on those candidates (few for a trained model; for random
distances it degrades to a sort of the row, never worse than the argsort it replaces).

Ties: items at equal distance are ordered by gallery index, i.e. exactly as a stable argsort of the row.
float32 distances become int64 keys (order-preserving float bits, then the gallery index), so ranks are exact
and tie-stable.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


class NonFiniteError(ValueError):
    """Features or distances hold NaN or infinity: a diverged model. Ranking them would be meaningless (NaN compares
    false with everything, so every match ranks first and mAP comes out above 1), so they are refused."""


@dataclass
class RankResult:
    """A retrieval's scores: `cmc[k-1]` is rank-k accuracy, `mAP` and `mINP` are means over the queries that have a
    valid match (torchreid's protocol skips the others, counted in `num_valid_queries` of `num_queries`)."""

    cmc: np.ndarray  # (max_rank,) fraction of valid queries with a match within the top k
    mAP: float
    mINP: float
    num_valid_queries: int
    num_queries: int

    def rank(self, k: int) -> float:
        return float(self.cmc[k - 1])

    def summary(self, ranks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
        out = {f"rank{k}": self.rank(k) for k in ranks if k <= len(self.cmc)}
        out.update(mAP=self.mAP, mINP=self.mINP)
        return out


class _Accumulator:
    """Sums per-query CMC hits, AP and INP over blocks of queries."""

    def __init__(self, max_rank: int, num_gallery: int) -> None:
        self.max_rank = min(max_rank, num_gallery)
        self.first_hits = np.zeros(self.max_rank + 1, dtype=np.int64)  # histogram of first-match ranks (capped)
        self.ap_sum = 0.0
        self.inp_sum = 0.0
        self.valid = 0
        self.queries = 0

    def add(self, ranks: np.ndarray) -> None:
        """ranks: 0-based ranks (among valid gallery items) of one query's matches, any order."""
        self.queries += 1
        if ranks.size == 0:
            return
        r = np.sort(ranks).astype(np.float64) + 1.0
        self.valid += 1
        self.ap_sum += float(np.mean(np.arange(1, r.size + 1) / r))
        self.inp_sum += float(r.size / r[-1])
        self.first_hits[min(int(r[0]) - 1, self.max_rank)] += 1

    def result(self) -> RankResult:
        if self.valid == 0:
            raise ValueError(
                "evaluate_rank: no query has a valid match in the gallery (every match is missing "
                "or shares the query's camera); check the query/gallery split"
            )
        cmc = np.cumsum(self.first_hits[: self.max_rank]) / self.valid
        result = RankResult(
            cmc=cmc.astype(np.float64),
            mAP=self.ap_sum / self.valid,
            mINP=self.inp_sum / self.valid,
            num_valid_queries=self.valid,
            num_queries=self.queries,
        )
        check_range(result.summary())
        return result


def check_range(scores: dict[str, float]) -> None:
    """Every retrieval metric is a fraction in [0, 1]; one outside it is a defect, never a score to report."""
    bad = {k: v for k, v in scores.items() if not (0.0 <= v <= 1.0)}
    if bad:
        raise ArithmeticError(f"retrieval metrics outside [0, 1]: {bad}")


def check_finite(name: str, values: torch.Tensor | np.ndarray, chunk_elements: int = 1 << 22) -> None:
    """Refuse NaN or infinite features or distances (NonFiniteError), saying how many there are. Checked a chunk
    of rows at a time: isfinite over a whole MSMT17 gallery made an absolute-value copy and a mask as large as it
    (1.1 GB at 2,048-d, more than the gallery itself)."""
    isfinite = torch.isfinite if isinstance(values, torch.Tensor) else np.isfinite
    total = values.numel() if isinstance(values, torch.Tensor) else values.size
    rows = max(1, chunk_elements // max(1, total // max(1, len(values)))) if values.ndim else 1
    chunks = [values] if values.ndim == 0 else [values[s : s + rows] for s in range(0, len(values), rows)]
    bad = sum(int((~isfinite(c)).sum()) for c in chunks if not bool(isfinite(c).all()))
    if bad:
        raise NonFiniteError(f"{name}: {bad} of {total} values are NaN or infinite (a diverged model); nothing to rank")


def _order_keys(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    """int64 keys that sort like (float32 value, gallery index): unique, so ties break by index."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.int32)
    bits = bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))  # IEEE total order, negative values included
    return (bits.astype(np.int64) << 32) | index


# Above this many candidates a sort + binary search beats counting with P x C comparisons.
_SORT_ABOVE = 2048


def _match_ranks(row: np.ndarray, invalid: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """0-based ranks of the matches `pos` among the valid items of one query's distance row.

    Only valid items no farther than the hardest match can stand ahead of any match, so the work is a few
    passes over the row plus work on those candidates (tens to hundreds for a trained model).
    """
    pd = row[pos]
    cand = np.flatnonzero((row <= pd.max()) & ~invalid)  # ascending gallery index; contains pos
    if row.dtype == np.float32 or row.dtype == np.float16:
        keys = _order_keys(row[cand], cand)
        pos_keys = _order_keys(pd, pos)
        if cand.size > _SORT_ABOVE:
            return np.searchsorted(np.sort(keys), pos_keys)
        return np.count_nonzero(keys[None, :] < pos_keys[:, None], axis=1)
    # any other dtype: stable order of the candidates by (value, index), then where the matches landed
    order = np.lexsort((cand, row[cand].astype(np.float64)))
    where = np.empty(cand.size, dtype=np.int64)
    where[order] = np.arange(cand.size)
    return where[np.searchsorted(cand, pos)]


def _block_ranks(
    dist: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray, g_camids: np.ndarray
) -> list[np.ndarray]:
    """Match ranks for a block of queries (an empty array for a query without a valid match)."""
    check_finite("distances", dist)
    same_pid = q_pids[:, None] == g_pids[None, :]
    has_pid = same_pid.any(axis=1)
    out = []
    for i in range(dist.shape[0]):
        if not has_pid[i]:
            out.append(np.empty(0, np.int64))
            continue
        invalid = same_pid[i] & (g_camids == q_camids[i])
        pos = np.flatnonzero(same_pid[i] & ~invalid)
        out.append(_match_ranks(dist[i], invalid, pos) if pos.size else pos)
    return out


def _run_blocks(
    num_q: int, block: int, work: Callable[[int, int], list[np.ndarray]], acc: _Accumulator, num_threads: int
) -> RankResult:
    """Run `work(start, end)` over query blocks on a few threads (NumPy releases the GIL in sorts and
    comparisons); results are accumulated in query order, so the figures do not depend on the thread count."""
    starts = range(0, num_q, block)
    if num_threads <= 1 or len(starts) == 1:
        for s in starts:
            for ranks in work(s, min(s + block, num_q)):
                acc.add(ranks)
        return acc.result()
    with ThreadPoolExecutor(num_threads) as pool:
        # bounded look-ahead keeps at most ~2 blocks per thread in memory
        pending: list = []
        for s in starts:
            pending.append(pool.submit(work, s, min(s + block, num_q)))
            if len(pending) > 2 * num_threads:
                for ranks in pending.pop(0).result():
                    acc.add(ranks)
        for fut in pending:
            for ranks in fut.result():
                acc.add(ranks)
    return acc.result()


def _default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _check_inputs(num_q: int, num_g: int, q_pids, g_pids, q_camids, g_camids) -> tuple[np.ndarray, ...]:
    arrays = [np.asarray(a).astype(np.int64, copy=False).ravel() for a in (q_pids, g_pids, q_camids, g_camids)]
    names = ("q_pids", "g_pids", "q_camids", "g_camids")
    for name, arr, n in zip(names, arrays, (num_q, num_g, num_q, num_g)):
        if arr.shape != (n,):
            raise ValueError(f"{name} has {arr.shape[0]} entries, expected {n}")
    if num_g == 0:
        raise ValueError("the gallery is empty")
    return tuple(arrays)


def evaluate_rank(
    distmat: np.ndarray,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    max_rank: int = 50,
    block_size: int = 256,
    num_threads: int | None = None,
) -> RankResult:
    """CMC / mAP / mINP from a (num_query, num_gallery) distance matrix (smaller is more similar)."""
    distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D, got shape {distmat.shape}")
    num_q, num_g = distmat.shape
    q_pids, g_pids, q_camids, g_camids = _check_inputs(num_q, num_g, q_pids, g_pids, q_camids, g_camids)

    def work(s: int, e: int) -> list[np.ndarray]:
        return _block_ranks(distmat[s:e], q_pids[s:e], g_pids, q_camids[s:e], g_camids)

    return _run_blocks(
        num_q,
        block_size,
        work,
        _Accumulator(max_rank, num_g),
        _default_threads() if num_threads is None else num_threads,
    )


def pairwise_distance(qf: torch.Tensor, gf: torch.Tensor, metric: str = "cosine") -> torch.Tensor:
    """Distances between two feature sets: cosine (1 - cos) or squared euclidean."""
    if metric == "cosine":
        qn = torch.nn.functional.normalize(qf.float(), dim=1)
        gn = torch.nn.functional.normalize(gf.float(), dim=1)
        return 1.0 - qn @ gn.T
    if metric == "euclidean":
        q, g = qf.float(), gf.float()
        return ((q * q).sum(1, keepdim=True) + (g * g).sum(1)[None, :] - 2.0 * q @ g.T).clamp_min(0.0)
    raise ValueError(f"unknown metric {metric!r}; choose 'cosine' or 'euclidean'")


def evaluate_features(
    qf: torch.Tensor | np.ndarray,
    gf: torch.Tensor | np.ndarray,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    *,
    metric: str = "cosine",
    max_rank: int = 50,
    block_elements: int = 1 << 22,
    num_threads: int | None = None,
) -> RankResult:
    """Features in, metrics out, in bounded memory: distances are made and consumed a block of queries at a time.

    Memory is O(block_elements + features), never O(num_query * num_gallery), so MSMT17's 11,659 x 82,161
    problem (3.8 GB as one float32 matrix) runs in well under 1 GB of working space.
    """
    qf = torch.as_tensor(qf)
    gf = torch.as_tensor(gf)
    num_q, num_g = qf.shape[0], gf.shape[0]
    if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(f"feature shapes do not match: query {tuple(qf.shape)}, gallery {tuple(gf.shape)}")
    q_pids, g_pids, q_camids, g_camids = _check_inputs(num_q, num_g, q_pids, g_pids, q_camids, g_camids)
    check_finite("query features", qf)
    check_finite("gallery features", gf)
    if metric == "cosine":
        # the gallery is held once: its inverse norms scale each block's products, where a normalised copy would
        # double the features' memory (1 GB more at MSMT17 size with 3,072-d features)
        qf, gf = qf.float(), gf.float()
        g_inv = 1.0 / gf.norm(dim=1).clamp_min(1e-12)

    def work(s: int, e: int) -> list[np.ndarray]:
        if metric == "cosine":
            q = torch.nn.functional.normalize(qf[s:e], dim=1)
            # gallery x block, then transposed: on the CPU this orientation of the product took 0.64 of the
            # time of block x gallery.T (bench/eval_speed.py, MSMT17 size)
            dist = (1.0 - (gf @ q.T).T * g_inv).contiguous().cpu().numpy()
        else:
            dist = pairwise_distance(qf[s:e], gf, metric).cpu().numpy()
        return _block_ranks(dist, q_pids[s:e], g_pids, q_camids[s:e], g_camids)

    return _run_blocks(
        num_q,
        max(1, block_elements // num_g),
        work,
        _Accumulator(max_rank, num_g),
        _default_threads() if num_threads is None else num_threads,
    )


def evaluate_vehicleid(
    features: torch.Tensor | np.ndarray,
    pids,
    *,
    num_draws: int = 10,
    seed: int = 0,
    max_rank: int = 50,
    metric: str = "cosine",
) -> RankResult:
    """VehicleID protocol: per draw, one random image per identity forms the gallery and every other image is a
    query; results are averaged over the draws. VehicleID has no camera ids, so nothing is removed as junk."""
    feats = torch.as_tensor(features)
    pids = np.asarray(pids, dtype=np.int64)
    if feats.shape[0] != pids.shape[0]:
        raise ValueError(f"features ({feats.shape[0]}) and pids ({pids.shape[0]}) differ in length")
    rng = np.random.default_rng(seed)
    _, inverse = np.unique(pids, return_inverse=True)
    results = []
    for _ in range(num_draws):
        # one random member per identity: shuffle, then take each identity's first occurrence
        perm = rng.permutation(len(pids))
        _, first = np.unique(inverse[perm], return_index=True)
        gallery = np.sort(perm[first])
        mask = np.ones(len(pids), dtype=bool)
        mask[gallery] = False
        query = np.flatnonzero(mask)
        results.append(
            evaluate_features(
                feats[query],
                feats[gallery],
                pids[query],
                pids[gallery],
                np.zeros(len(query), np.int64),
                np.ones(len(gallery), np.int64),
                metric=metric,
                max_rank=max_rank,
            )
        )
    return RankResult(
        cmc=np.mean([r.cmc for r in results], axis=0),
        mAP=float(np.mean([r.mAP for r in results])),
        mINP=float(np.mean([r.mINP for r in results])),
        num_valid_queries=int(np.mean([r.num_valid_queries for r in results])),
        num_queries=int(np.mean([r.num_queries for r in results])),
    )


def evaluate_rank_reference(distmat: np.ndarray, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50) -> RankResult:
    """The straightforward per-query algorithm torchreid's `eval_market1501` uses (argsort each row, drop
    same-pid-same-camera items, cumulate), with a stable argsort so ties are ordered by gallery index.

    Kept as the yardstick for tests and `bench/eval_speed.py`; use `evaluate_rank` for real work.
    """
    distmat = np.asarray(distmat)
    num_q, num_g = distmat.shape
    q_pids, g_pids, q_camids, g_camids = _check_inputs(num_q, num_g, q_pids, g_pids, q_camids, g_camids)
    max_rank = min(max_rank, num_g)
    all_cmc, all_ap, all_inp = [], [], []
    for i in range(num_q):
        order = np.argsort(distmat[i], kind="stable")
        keep = ~((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i]))
        raw = (g_pids[order][keep] == q_pids[i]).astype(np.int64)
        if not raw.any():
            continue
        cum = raw.cumsum()
        last = int(np.flatnonzero(raw)[-1])
        all_inp.append(cum[last] / (last + 1.0))
        cmc = np.minimum(cum, 1)
        all_cmc.append(cmc[:max_rank])
        all_ap.append(float((cum / np.arange(1.0, raw.size + 1) * raw).sum() / raw.sum()))
    if not all_cmc:
        raise ValueError("evaluate_rank_reference: no query has a valid match in the gallery")
    return RankResult(
        cmc=np.mean(all_cmc, axis=0),
        mAP=float(np.mean(all_ap)),
        mINP=float(np.mean(all_inp)),
        num_valid_queries=len(all_cmc),
        num_queries=num_q,
    )
