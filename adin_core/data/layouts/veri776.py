"""VeRi-776: `image_train/`, `image_query/`, `image_test/` of names like `0002_c002_00030600_0.jpg`
(vehicle id, camera c001..c020, frame/timestamp field), as fast-reid reads it."""

from __future__ import annotations

import re

from adin_core.data.layouts.base import ImageRecord, read_pattern_layout

PATTERN = re.compile(r"^(\d{4})_c(\d{3})_(\d{8})_\d\.(?:jpg|jpeg|png)$")  # the whole name
FOLDERS = {"train": "image_train", "query": "image_query", "gallery": "image_test"}


def read(src: str) -> list[ImageRecord]:
    return read_pattern_layout(
        src, candidates=("VeRi", "veri", "VeRi-776"), folders=FOLDERS, pattern=PATTERN, max_cam=20, dataset="VeRi-776"
    )
