"""Retry with exponential backoff, and a record of every wait, for the services a sweep leans on (S3, MLflow).

An outage in the middle of a sweep should cost time, not trials: a checkpoint upload or a tracking write waits
and tries again, within a budget (`--retry-budget`, default 300 s). Past the budget the original error is
raised, so a trial fails with a message that names the service instead of hanging. Every retry is recorded
(`RetryStats`), and the trial reports it as `faults/*` metrics, so MLflow shows what happened and for how long.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable, TypeVar

T = TypeVar("T")
DEFAULT_BUDGET_S = 300.0  # the sweep's --retry-budget default, unless ADIN_RETRY_BUDGET_S says otherwise (plan.py)


@dataclass(frozen=True)
class Backoff:
    """Delays of first_s, 2·first_s, … capped at max_s, each with ±jitter, until budget_s has been waited."""

    first_s: float = 1.0
    max_s: float = 10.0
    budget_s: float = DEFAULT_BUDGET_S
    jitter: float = 0.2

    def delay(self, attempt: int) -> float:
        base = min(self.max_s, self.first_s * 2**attempt)
        return base * (1 + self.jitter * (2 * random.random() - 1))


@dataclass
class RetryStats:
    """What the retries of one process cost: counts, seconds waited and the last error, per service."""

    retries: dict[str, int] = field(default_factory=dict)
    waited_s: dict[str, float] = field(default_factory=dict)
    last_error: dict[str, str] = field(default_factory=dict)

    def add(self, service: str, waited: float, error: BaseException) -> None:
        self.retries[service] = self.retries.get(service, 0) + 1
        self.waited_s[service] = self.waited_s.get(service, 0.0) + waited
        self.last_error[service] = f"{type(error).__name__}: {error}"[:500]

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for service, n in self.retries.items():
            out[f"faults/{service}_retries"] = float(n)
            out[f"faults/{service}_wait_s"] = round(self.waited_s[service], 3)
        return out


def call_with_backoff(
    fn: Callable[[], T],
    *,
    service: str,
    what: str,
    retry_on: tuple[type[BaseException], ...],
    transient: Callable[[BaseException], bool] = lambda exc: True,
    backoff: Backoff | None = None,
    stats: RetryStats | None = None,
    log: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """fn(), retried on `retry_on` errors that `transient` accepts, until it succeeds or `backoff.budget_s` of
    waiting is spent."""
    backoff = backoff or Backoff()
    waited, attempt = 0.0, 0
    while True:
        try:
            result = fn()
        except retry_on as exc:
            if not transient(exc):
                raise
            delay = backoff.delay(attempt)
            if waited + delay > backoff.budget_s:
                log(f"[retry] {what}: giving up after {attempt + 1} attempts and {waited:.0f} s: {exc}")
                raise
            if stats is not None:
                stats.add(service, delay, exc)
            log(
                f"[retry] {what} failed ({type(exc).__name__}: {str(exc)[:200]}); attempt {attempt + 2} "
                f"in {delay:.1f} s"
            )
            sleep(delay)
            waited += delay
            attempt += 1
            continue
        if attempt:
            log(f"[retry] {what}: succeeded after {attempt} retries, {waited:.1f} s of waiting")
        return result
