"""DukeMTMC-reID: the Market-1501 folder names, file names like `0001_c2_f0046182.jpg` (cameras c1..c8, frame)."""

from __future__ import annotations

import re

from adin_core.data.layouts.base import (ImageRecord, find_dataset_dir, name_pattern_parser, require_dir,
                                         scan_images)
from adin_core.data.layouts.market1501 import FOLDERS

PATTERN = re.compile(r"^([-\d]+)_c(\d)")
FRAME = re.compile(r"_f(\d+)")


def read(src: str) -> list[ImageRecord]:
    root = find_dataset_dir(src, ("DukeMTMC-reID", "dukemtmcreid"), "bounding_box_train")
    out: list[ImageRecord] = []
    for split, folder in FOLDERS.items():
        parse = name_pattern_parser(PATTERN, split, max_cam=8, frame=FRAME, dataset="DukeMTMC-reID")
        out += scan_images(require_dir(root, folder), split, parse)
    return out
