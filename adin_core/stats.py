"""Paired comparisons: every claim about the method compares arms on the same seeds (data, initialisation and
batch order shared), so what varies between them is the arm; the spread of seeds alone is as large as the effects."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


def t_quantile(q: float, df: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(q, df))


def detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean difference a paired-t test on `n` seeds with difference sd `sd` detects with
    probability `power` at two-sided level `alpha` (the usual approximation (t_{1-a/2} + t_{power}) sd / sqrt(n));
    infinite below 2 seeds."""
    if n < 2:
        return math.inf
    return (t_quantile(1 - alpha / 2, n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n)


@dataclass(frozen=True)
class Paired:
    """a - b per seed, the mean difference with a paired-t 95% interval, and how many seeds favour a."""

    diffs: tuple[float, ...]
    mean: float
    low: float
    high: float
    positive: int
    level: float = 0.95  # the interval's confidence level

    @classmethod
    def of(cls, a: Sequence[float], b: Sequence[float], level: float = 0.95) -> "Paired":
        d = np.asarray(a, float) - np.asarray(b, float)
        if d.size == 0:
            raise ValueError("no paired values")
        mean = float(d.mean())
        if len(d) > 1 and d.std(ddof=1) > 0:
            half = t_quantile(1 - (1 - level) / 2, len(d) - 1) * float(d.std(ddof=1)) / math.sqrt(len(d))
        else:
            half = 0.0 if len(d) > 1 else math.inf
        return cls(tuple(float(x) for x in d), mean, mean - half, mean + half, int((d > 0).sum()), level)

    @property
    def sd(self) -> float:
        """The seed-to-seed sd of the differences (nan below 2 seeds)."""
        return float(np.std(self.diffs, ddof=1)) if len(self.diffs) > 1 else math.nan

    @property
    def distinguishable(self) -> bool:
        """Whether the 95% interval excludes 0."""
        return self.low > 0 or self.high < 0

    def summary(self, unit: str = "mAP") -> str:
        """One line, e.g. "+0.031 mAP [+0.012, +0.050], 5/5 seeds" (and whether the interval excludes 0; its level
        when it is not 95%)."""
        level = "" if abs(self.level - 0.95) < 1e-9 else f" ({100 * self.level:.4g}% interval)"
        text = (
            f"{self.mean:+.3f} {unit} [{self.low:+.3f}, {self.high:+.3f}]{level}, {self.positive}/"
            f"{len(self.diffs)} seeds"
        )
        return text if self.distinguishable else text + ": not distinguishable"

    def __str__(self) -> str:
        return (
            f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}], {self.positive}/{len(self.diffs)} > 0 "
            f"({', '.join(f'{x:+.3f}' for x in self.diffs)})"
        )

    def as_dict(self) -> dict:
        return {
            "mean": self.mean,
            "low": self.low,
            "high": self.high,
            "positive": self.positive,
            "seeds": len(self.diffs),
            "diffs": list(self.diffs),
            "level": self.level,
        }


__all__ = ["Paired", "detectable_effect", "t_quantile"]
