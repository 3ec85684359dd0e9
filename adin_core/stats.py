"""Paired comparisons: every claim about the method compares arms on the same seeds (data, initialisation and
batch order shared), so what varies between them is the arm; the spread of seeds alone is as large as the effects."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Paired:
    """a - b per seed, the mean difference with a paired-t 95% interval, and how many seeds favour a."""

    diffs: tuple[float, ...]
    mean: float
    low: float
    high: float
    positive: int

    @classmethod
    def of(cls, a: Sequence[float], b: Sequence[float]) -> "Paired":
        from scipy import stats

        d = np.asarray(a, float) - np.asarray(b, float)
        if d.size == 0:
            raise ValueError("no paired values")
        mean = float(d.mean())
        if len(d) > 1 and d.std(ddof=1) > 0:
            half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
        else:
            half = 0.0 if len(d) > 1 else math.inf
        return cls(tuple(float(x) for x in d), mean, mean - half, mean + half, int((d > 0).sum()))

    @property
    def distinguishable(self) -> bool:
        """Whether the 95% interval excludes 0."""
        return self.low > 0 or self.high < 0

    def summary(self, unit: str = "mAP") -> str:
        """One line, e.g. "+0.031 mAP [+0.012, +0.050], 5/5 seeds" (and whether the interval excludes 0)."""
        text = (f"{self.mean:+.3f} {unit} [{self.low:+.3f}, {self.high:+.3f}], {self.positive}/{len(self.diffs)} "
                "seeds")
        return text if self.distinguishable else text + ": not distinguishable"

    def __str__(self) -> str:
        return (f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}], {self.positive}/{len(self.diffs)} > 0 "
                f"({', '.join(f'{x:+.3f}' for x in self.diffs)})")

    def as_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "positive": self.positive,
                "seeds": len(self.diffs), "diffs": list(self.diffs)}


__all__ = ["Paired"]
