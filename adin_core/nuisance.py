"""Nuisance label kinds: how raw camera ids and time-of-day periods become f_N's class indices.

Datasets number cameras their own way (Market-1501 1..6, VeRi-776 1..20, synthetic 0..C-1), so a dataset's
sorted camera list fixes the class index of each camera. Time of day has three periods (MSMT17's morning, noon,
afternoon); a dataset without it marks every image -1, and asking for a time-based label is then an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

NUM_PERIODS = 3
LABEL_KINDS = ("camera", "time", "camera_x_time")


class NuisanceError(ValueError):
    """A nuisance label the dataset cannot provide."""


@dataclass(frozen=True)
class NuisanceLabeler:
    cameras: tuple[int, ...]  # the dataset's raw camera ids, in class-index order
    has_time: bool

    @classmethod
    def from_arrays(cls, camids: np.ndarray, timeperiods: np.ndarray | None) -> "NuisanceLabeler":
        has_time = timeperiods is not None and len(timeperiods) > 0 and bool(np.all(np.asarray(timeperiods) >= 0))
        return cls(tuple(int(c) for c in np.unique(camids)), has_time)

    def num_classes(self, kind: str) -> int:
        self.check(kind)
        if kind == "camera":
            return len(self.cameras)
        if kind == "time":
            return NUM_PERIODS
        return len(self.cameras) * NUM_PERIODS

    def check(self, kind: str, *, dataset: str = "the dataset") -> None:
        if kind not in LABEL_KINDS:
            raise NuisanceError(f"unknown nuisance label kind {kind!r}; choose from {list(LABEL_KINDS)}")
        if kind in ("camera", "camera_x_time") and len(self.cameras) < 2:
            raise NuisanceError(
                f"nuisance label {kind!r} needs at least two cameras; {dataset} has "
                f"{len(self.cameras)} (VehicleID carries no camera ids)"
            )
        if kind in ("time", "camera_x_time") and not self.has_time:
            raise NuisanceError(
                f"nuisance label {kind!r} needs time of day, which {dataset} does not carry "
                "(only MSMT17-style names encode it); use nuisance='camera'"
            )

    def labels(self, kind: str, camids: np.ndarray, timeperiods: np.ndarray | None) -> np.ndarray:
        """Class index per image for one label kind."""
        self.check(kind)
        cam_index = {c: i for i, c in enumerate(self.cameras)}
        try:
            cams = np.fromiter((cam_index[int(c)] for c in camids), dtype=np.int64, count=len(camids))
        except KeyError as exc:
            raise NuisanceError(
                f"camera {exc.args[0]} was not seen in the training split (known cameras: {list(self.cameras)})"
            ) from None
        if kind == "camera":
            return cams
        periods = np.asarray(timeperiods, dtype=np.int64)
        if periods.min(initial=0) < 0 or periods.max(initial=0) >= NUM_PERIODS:
            raise NuisanceError(f"time period outside 0..{NUM_PERIODS - 1}")
        if kind == "time":
            return periods
        return cams * NUM_PERIODS + periods

    def prior(self, kind: str, camids: np.ndarray, timeperiods: np.ndarray | None) -> np.ndarray:
        """Class frequencies in the given (training) split: the p_k of CaNE."""
        counts = np.bincount(self.labels(kind, camids, timeperiods), minlength=self.num_classes(kind))
        return counts / counts.sum()


def heads_for(nuisance: str) -> Sequence[str]:
    """The label kinds (one f_N head each) for a config's `nuisance` setting."""
    return tuple(nuisance.split("+"))
