"""Market-1501: `bounding_box_train/`, `query/`, `bounding_box_test/` of names like `0002_c1s1_000451_03.jpg`
(pid, camera c1..c6, sequence s1, frame 000451). pid -1 is junk and skipped; pid 0 (distractors) stays in the
gallery, as in torchreid and fast-reid."""

from __future__ import annotations

import re

from adin_core.data.layouts.base import ImageRecord, read_pattern_layout

# the whole name: pid (-1 junk, 0000 distractors), camera, sequence, frame, box; DukeMTMC/VeRi names do not match
PATTERN = re.compile(r"^(-1|\d{4})_c(\d)s\d_(\d{6})_\d{2}\.(?:jpg|jpeg|png)$")
FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


def read(src: str) -> list[ImageRecord]:
    return read_pattern_layout(
        src,
        candidates=("Market-1501-v15.09.15", "market1501", "Market-1501"),
        folders=FOLDERS,
        pattern=PATTERN,
        max_cam=6,
        dataset="Market-1501",
    )
