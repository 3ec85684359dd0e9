"""VeRi-776: `image_train/`, `image_query/`, `image_test/` of names like `0002_c002_00030600_0.jpg`
(vehicle id, camera c001..c020, frame/timestamp field), as fast-reid reads it."""

from __future__ import annotations

import re

from adin_core.data.layouts.base import (ImageRecord, find_dataset_dir, name_pattern_parser, require_dir,
                                         scan_images)

PATTERN = re.compile(r"^([-\d]+)_c(\d\d\d)")
FRAME = re.compile(r"^[-\d]+_c\d{3}_(\d+)")
FOLDERS = {"train": "image_train", "query": "image_query", "gallery": "image_test"}


def read(src: str) -> list[ImageRecord]:
    root = find_dataset_dir(src, ("VeRi", "veri", "VeRi-776"), "image_train")
    out: list[ImageRecord] = []
    for split, folder in FOLDERS.items():
        parse = name_pattern_parser(PATTERN, split, max_cam=20, frame=FRAME, dataset="VeRi-776")
        out += scan_images(require_dir(root, folder), split, parse)
    return out
