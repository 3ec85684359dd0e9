"""VehicleID: `image/<imgid>.jpg` with `train_test_split/train_list.txt` and `test_list_{800,1600,2400,3200}.txt`
(lines `<imgid> <vehicle id>`). There are no camera ids: every image gets camera 0, so `nuisance=camera` is
refused for it. Test lists become splits `test800` ... `test3200`, scored with the VehicleID protocol (one random
gallery image per vehicle, 10 draws)."""

from __future__ import annotations

import os

from adin_core.data.layouts.base import (
    ImageRecord,
    LayoutError,
    check_listed_files,
    find_dataset_dir,
    require_dir,
    require_file,
)

TEST_SIZES = (800, 1600, 2400, 3200)


def _read_list(list_path: str, image_dir: str, split: str, where: dict[str, str]) -> list[ImageRecord]:
    out = []
    with open(list_path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit():
                raise LayoutError(f"{list_path}:{lineno}: expected '<imgid> <vehicle id>', got {line.strip()!r}")
            path = os.path.join(image_dir, parts[0] + ".jpg")
            where.setdefault(path, f"{list_path}:{lineno}")
            out.append(ImageRecord(path, int(parts[1]), 0, split))
    if not out:
        raise LayoutError(f"{list_path} lists no images")
    return out


def read(src: str) -> list[ImageRecord]:
    root = find_dataset_dir(src, ("VehicleID_V1.0", "VehicleID", "vehicleid"), "train_test_split")
    image_dir = require_dir(root, "image")
    where: dict[str, str] = {}
    out = _read_list(require_file(root, "train_test_split", "train_list.txt"), image_dir, "train", where)
    for size in TEST_SIZES:
        out += _read_list(
            require_file(root, "train_test_split", f"test_list_{size}.txt"), image_dir, f"test{size}", where
        )
    check_listed_files(out, where)
    return out
