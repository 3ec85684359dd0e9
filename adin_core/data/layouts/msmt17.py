"""MSMT17 (V1: `train/`, `test/`; V2: `mask_train_v2/`, `mask_test_v2/`) with `list_{train,val,query,gallery}.txt`.

Each list line is `<relative path> <pid>`; a name like `0000_000_01_0303morning_0015_0.jpg` carries the camera in
its 3rd `_` field (1-based, made 0-based as torchreid does), the date and time of day in the 4th, the frame in the
5th. As in torchreid, list_val stays out of training: it is our identity/nuisance validation split.
"""

from __future__ import annotations

import os
import re

from adin_core.data.layouts.base import PERIODS, ImageRecord, LayoutError, check_listed_files, require_dir, require_file

VERSIONS = {"MSMT17_V1": ("train", "test"), "MSMT17_V2": ("mask_train_v2", "mask_test_v2")}
LISTS = {"train": 0, "val": 0, "query": 1, "gallery": 1}  # which image folder each list refers to
PERIOD = re.compile(r"^\d{4}(morning|noon|afternoon)$")


def locate(src: str) -> tuple[str, str, str]:
    for base in (src, os.path.join(src, "msmt17"), os.path.join(src, "MSMT17")):
        for version, (train, test) in VERSIONS.items():
            root = os.path.join(base, version)
            if os.path.isdir(root):
                return root, train, test
        for version, (train, test) in VERSIONS.items():  # src is the version folder itself
            if os.path.isdir(os.path.join(base, train)) and os.path.isfile(os.path.join(base, "list_train.txt")):
                return base, train, test
    raise LayoutError(
        f"no MSMT17 found under {src}: expected MSMT17_V1/ (train/, test/) or MSMT17_V2/ "
        "(mask_train_v2/, mask_test_v2/) with list_train.txt"
    )


def parse_name(rel: str, list_path: str, lineno: int) -> tuple[int, int, int]:
    fields = os.path.basename(rel).split("_")
    where = f"{list_path}:{lineno}: {rel}"
    if len(fields) < 5:
        raise LayoutError(f"{where}: file name does not follow <pid>_<idx>_<cam>_<date><period>_<frame>_*.jpg")
    try:
        cam = int(fields[2])
        frame = int(fields[4])
    except ValueError:
        raise LayoutError(f"{where}: camera/frame fields are not numbers") from None
    m = PERIOD.match(fields[3])
    if m is None:
        raise LayoutError(f"{where}: 4th field {fields[3]!r} is not <MMDD>morning|noon|afternoon")
    if not 1 <= cam <= 15:
        raise LayoutError(f"{where}: camera {cam} outside 1..15")
    return cam - 1, PERIODS[m.group(1)], frame


def read(src: str) -> list[ImageRecord]:
    root, train_dir, test_dir = locate(src)
    folders = (require_dir(root, train_dir), require_dir(root, test_dir))
    out: list[ImageRecord] = []
    where: dict[str, str] = {}
    for split, which in LISTS.items():
        list_path = require_file(root, f"list_{split}.txt")
        with open(list_path) as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                parts = line.split()
                if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                    raise LayoutError(f"{list_path}:{lineno}: expected '<path> <pid>', got {line.strip()!r}")
                cam, period, frame = parse_name(parts[0], list_path, lineno)
                path = os.path.join(folders[which], parts[0])
                where[path] = f"{list_path}:{lineno}"
                out.append(ImageRecord(path, int(parts[1]), cam, split, period, frame))
    check_listed_files(out, where)
    return out
