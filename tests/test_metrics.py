import numpy as np
import pytest
import torch

from adin_core.metrics import (
    evaluate_features,
    evaluate_rank,
    evaluate_rank_reference,
    evaluate_vehicleid,
    pairwise_distance,
)


def _random_problem(rng, nq=120, ng=600, ids=40, cams=5, ties=False):
    qp, gp = rng.integers(0, ids, nq), rng.integers(0, ids, ng)
    qc, gc = rng.integers(0, cams, nq), rng.integers(0, cams, ng)
    d = rng.random((nq, ng)).astype(np.float32)
    if ties:
        d = np.round(d * 10).astype(np.float32) / 10
    return d, qp, gp, qc, gc


def _assert_same(a, b):
    np.testing.assert_allclose(a.cmc, b.cmc, atol=1e-6)
    assert abs(a.mAP - b.mAP) < 1e-6
    assert abs(a.mINP - b.mINP) < 1e-6
    assert a.num_valid_queries == b.num_valid_queries


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shift", [0.0, -0.5])
def test_agrees_with_reference_protocol(ties, dtype, shift):
    rng = np.random.default_rng(7)
    d, qp, gp, qc, gc = _random_problem(rng, ties=ties)
    d = (d + shift).astype(dtype)
    ref = evaluate_rank_reference(d, qp, gp, qc, gc)
    for threads in (1, 2):
        _assert_same(evaluate_rank(d, qp, gp, qc, gc, block_size=17, num_threads=threads), ref)


def test_candidate_sort_path_agrees():
    # queries whose hardest match is far down the list take the sort path (> 2048 candidates)
    rng = np.random.default_rng(3)
    d, qp, gp, qc, gc = _random_problem(rng, nq=20, ng=5000, ids=10)
    _assert_same(evaluate_rank(d, qp, gp, qc, gc), evaluate_rank_reference(d, qp, gp, qc, gc))


def test_hand_computed_case():
    # gallery ordered by distance: g0 (pid 1, cam 0: same cam -> junk), g1 (pid 2), g2 (pid 1, cam 1), g3 (pid 1, cam 2)
    d = np.array([[0.1, 0.2, 0.3, 0.4]], np.float32)
    r = evaluate_rank(d, [1], [1, 2, 1, 1], [0], [0, 1, 1, 2], max_rank=3)
    # valid list: g1 (miss), g2 (hit at 2), g3 (hit at 3): AP = (1/2 + 2/3) / 2, INP = 2/3
    assert r.mAP == pytest.approx((0.5 + 2 / 3) / 2)
    assert r.mINP == pytest.approx(2 / 3)
    np.testing.assert_allclose(r.cmc, [0, 1, 1])


def test_query_without_valid_match_is_skipped():
    d = np.array([[0.1, 0.2], [0.1, 0.2]], np.float32)
    # query 0 (pid 5): its only match shares its camera -> skipped; query 1 (pid 6) matches at rank 2
    r = evaluate_rank(d, [5, 6], [5, 6], [0, 0], [0, 1])
    assert r.num_valid_queries == 1 and r.num_queries == 2
    assert r.mAP == pytest.approx(0.5)
    np.testing.assert_allclose(r.cmc, [0, 1])  # max_rank clipped to the gallery size, as torchreid does


def test_all_junk_raises_clear_error():
    d = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="no query has a valid match"):
        evaluate_rank(d, [1, 2], [1, 1, 2], [0, 0], [0, 0, 0])


def test_ties_are_broken_by_gallery_index():
    d = np.zeros((1, 4), np.float32)  # all tied
    assert evaluate_rank(d, [1], [2, 1, 2, 1], [0], [1, 1, 1, 1]).mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert evaluate_rank(d, [1], [1, 2, 1, 2], [0], [1, 1, 1, 1]).mAP == pytest.approx((1 + 2 / 3) / 2)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="g_pids"):
        evaluate_rank(np.zeros((1, 3), np.float32), [1], [1, 2], [0], [0, 1, 2])


def test_features_in_blocks_equal_full_matrix():
    rng = np.random.default_rng(1)
    qf, gf = torch.randn(90, 16), torch.randn(400, 16)
    qp, gp = rng.integers(0, 30, 90), rng.integers(0, 30, 400)
    qc, gc = rng.integers(0, 4, 90), rng.integers(0, 4, 400)
    for metric in ("cosine", "euclidean"):
        full = evaluate_rank_reference(pairwise_distance(qf, gf, metric).numpy(), qp, gp, qc, gc)
        blocked = evaluate_features(qf, gf, qp, gp, qc, gc, metric=metric, block_elements=400 * 7)
        _assert_same(blocked, full)


def test_vehicleid_protocol():
    rng = np.random.default_rng(0)
    pids = np.repeat(np.arange(30), 4)
    perfect = torch.nn.functional.one_hot(torch.as_tensor(pids), 30).float() + 0.01 * torch.randn(120, 30)
    r = evaluate_vehicleid(perfect, pids, num_draws=3)
    assert r.mAP == pytest.approx(1.0) and r.rank(1) == pytest.approx(1.0)
    assert r.num_queries == 120 - 30  # one gallery image per identity, the rest are queries
    noise = evaluate_vehicleid(torch.as_tensor(rng.normal(size=(120, 30)), dtype=torch.float32), pids, num_draws=3)
    assert noise.mAP < 0.3


def test_non_finite_features_or_distances_are_refused_never_scored():
    """A diverged model's NaN features once scored mAP 1.25 (NaN compares false, so every match ranked first)."""
    import math

    from adin_core.metrics import NonFiniteError, evaluate_rank

    nan = torch.full((4, 8), math.nan)
    with pytest.raises(NonFiniteError, match="query features: 32 of 32 values are NaN"):
        evaluate_features(
            nan, torch.full((6, 8), math.nan), [0, 1, 2, 3], [0, 0, 1, 1, 2, 3], [0] * 4, [1, 2, 1, 2, 1, 1]
        )
    good = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    gallery = good.repeat(2, 1)
    gallery[5, 3] = math.inf
    with pytest.raises(NonFiniteError, match="gallery features: 1 of 64"):
        evaluate_features(good, gallery, [0, 1, 2, 3], list(range(4)) * 2, [0] * 4, [1] * 8)
    dist = np.random.default_rng(0).random((3, 5))
    dist[1, 2] = np.nan
    with pytest.raises(NonFiniteError, match="distances"):
        evaluate_rank(dist, [0, 1, 2], [0, 1, 2, 0, 1], [0, 0, 0], [1, 1, 1, 1, 1])


def test_a_metric_outside_its_range_is_an_error_not_a_score():
    from adin_core.metrics import check_range

    check_range({"mAP": 1.0, "rank1": 0.0})
    with pytest.raises(ArithmeticError, match="mAP"):
        check_range({"mAP": 1.25, "rank1": 1.0})


def test_non_finite_values_are_counted_across_the_chunks_checked():
    """check_finite looks at a few rows at a time (bounded memory): every bad value is still counted, in a tensor
    or an array, and a clean input passes."""
    from adin_core.metrics import NonFiniteError, check_finite

    values = np.zeros((10, 4), np.float32)
    values[1, 2], values[8, 0], values[9, 3] = np.nan, np.inf, -np.inf
    for given in (values, torch.from_numpy(values)):
        with pytest.raises(NonFiniteError, match="feats: 3 of 40 values"):
            check_finite("feats", given, chunk_elements=8)
    check_finite("feats", np.zeros((10, 4), np.float32), chunk_elements=8)
    with pytest.raises(NonFiniteError, match="x: 1 of 1"):
        check_finite("x", torch.tensor(float("nan")))
