"""DukeMTMC-reID: the Market-1501 folder names, file names like `0001_c2_f0046182.jpg` (cameras c1..c8, frame)."""

from __future__ import annotations

import re

from adin_core.data.layouts.base import ImageRecord, read_pattern_layout
from adin_core.data.layouts.market1501 import FOLDERS

PATTERN = re.compile(r"^(\d{4})_c(\d)_f(\d{7})\.(?:jpg|jpeg|png)$")  # the whole name: Market names do not match


def read(src: str) -> list[ImageRecord]:
    return read_pattern_layout(
        src,
        candidates=("DukeMTMC-reID", "dukemtmcreid"),
        folders=FOLDERS,
        pattern=PATTERN,
        max_cam=8,
        dataset="DukeMTMC-reID",
    )
