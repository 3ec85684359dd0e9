"""The verification's bookkeeping: one Tune trial per (arm, fresh seed), gathered back into paired arms."""

from types import SimpleNamespace

import pytest

from adin_core.evaluation import REPORT_MAP
from orchestrator import verify


def _result(arm, k, value, *, final=True, error=None):
    return SimpleNamespace(config={"arm": arm, "seed_index": k, "params": {}}, error=error,
                           metrics={REPORT_MAP: value, "final": final})


def test_per_seed_trials_are_paired_by_seed_index_whatever_order_they_finish_in():
    values = {"winner": [0.30, 0.32, 0.28], "baseline": [0.25, 0.31, 0.27], "paper_default": [0.29, 0.35, 0.26]}
    results = [_result(arm, k, v[k]) for arm, v in values.items() for k in (2, 0, 1)]
    out = verify.collect(results, seeds=3)
    assert out.per_seed == values
    assert out.versus_baseline.mean == pytest.approx((0.05 + 0.01 + 0.01) / 3)
    assert out.versus_baseline.positive == 3 and out.versus_paper_default.positive == 2


def test_a_missing_or_unfinished_seed_leaves_the_winner_unverified():
    full = [_result(arm, k, 0.3) for arm in verify.ARMS for k in range(2)]
    with pytest.raises(verify.VerificationError, match="no result for baseline seed 1"):
        verify.collect([r for r in full if (r.config["arm"], r.config["seed_index"]) != ("baseline", 1)], seeds=2)
    full[3] = _result("baseline", 1, 0.3, final=False, error=RuntimeError("worker died\ntraceback"))
    with pytest.raises(verify.VerificationError, match="'baseline', seed 1, did not finish: worker died$"):
        verify.collect(full, seeds=2)
