"""Backoff with a budget (the fault tests run it against real services)."""

from __future__ import annotations

import pytest

from orchestrator.retry import Backoff, RetryStats, call_with_backoff


def test_backoff_retries_then_succeeds_and_records_the_wait():
    calls, sleeps, stats = [], [], RetryStats()

    def flaky():
        calls.append(1)
        if len(calls) < 4:
            raise ConnectionRefusedError("endpoint down")
        return "ok"

    out = call_with_backoff(
        flaky,
        service="storage",
        what="upload",
        retry_on=(OSError,),
        backoff=Backoff(first_s=1, max_s=3, jitter=0),
        stats=stats,
        sleep=sleeps.append,
        log=lambda m: None,
    )
    assert out == "ok" and sleeps == [1, 2, 3]
    assert stats.metrics() == {"faults/storage_retries": 3.0, "faults/storage_wait_s": 6.0}
    assert "endpoint down" in stats.last_error["storage"]


def test_backoff_gives_up_after_its_budget_and_never_retries_a_permanent_error():
    sleeps: list[float] = []
    with pytest.raises(ConnectionRefusedError):
        call_with_backoff(
            lambda: (_ for _ in ()).throw(ConnectionRefusedError("down")),
            service="s",
            what="w",
            retry_on=(OSError,),
            backoff=Backoff(first_s=1, max_s=4, budget_s=10, jitter=0),
            sleep=sleeps.append,
            log=lambda m: None,
        )
    assert sleeps == [1, 2, 4] and sum(sleeps) <= 10  # the next wait (4) would pass the budget
    sleeps.clear()
    with pytest.raises(PermissionError):
        call_with_backoff(
            lambda: (_ for _ in ()).throw(PermissionError("denied")),
            service="s",
            what="w",
            retry_on=(OSError,),
            transient=lambda exc: not isinstance(exc, PermissionError),
            sleep=sleeps.append,
            log=lambda m: None,
        )
    assert sleeps == []
