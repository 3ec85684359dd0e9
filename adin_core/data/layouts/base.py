"""Records read from a dataset's real on-disk layout, and the errors a broken copy produces."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable, Iterable

SPLITS = ("train", "val", "query", "gallery")
PERIODS = {"morning": 0, "noon": 1, "afternoon": 2}


class LayoutError(ValueError):
    """A dataset folder that does not match its layout; the message names the file or folder."""


@dataclass(frozen=True)
class ImageRecord:
    path: str  # absolute path of the image file (or, with `data`, the image's name in its dataset)
    pid: int
    camid: int  # 0-based, as torchreid / fast-reid number cameras
    split: str
    timeperiod: int | None = None  # 0 morning, 1 noon, 2 afternoon (MSMT17 only)
    frame: int | None = None
    data: bytes | None = None  # the encoded image itself, for images that exist only in memory (synthetic)

    def with_split(self, split: str) -> "ImageRecord":
        return ImageRecord(self.path, self.pid, self.camid, split, self.timeperiod, self.frame, self.data)


def require_dir(root: str, *parts: str) -> str:
    path = os.path.join(root, *parts)
    if not os.path.isdir(path):
        raise LayoutError(f"missing folder {path}")
    return path


def require_file(root: str, *parts: str) -> str:
    path = os.path.join(root, *parts)
    if not os.path.isfile(path):
        raise LayoutError(f"missing list file {path}")
    return path


def find_dataset_dir(src: str, candidates: Iterable[str], marker: str) -> str:
    """The folder holding `marker`: src itself or one of its known sub-folder names (as the archives unpack)."""
    for cand in ("", *candidates):
        path = os.path.join(src, cand)
        if os.path.isdir(os.path.join(path, marker)):
            return path
    names = ", ".join(os.path.join(src, c, marker) for c in ("", *candidates))
    raise LayoutError(f"no dataset found under {src}: looked for {names}")


def scan_images(folder: str, split: str, parse: Callable[[str], ImageRecord | None]) -> list[ImageRecord]:
    """Every .jpg in `folder`, sorted by name, parsed by `parse(path)` (None: a junk image to skip)."""
    out = []
    for name in sorted(os.listdir(folder)):
        if name.lower().endswith((".jpg", ".jpeg", ".png")):
            rec = parse(os.path.join(folder, name))
            if rec is not None:
                out.append(rec)
    if not out:
        raise LayoutError(f"no images in {folder} ({split} split)")
    return out


def name_pattern_parser(
    pattern: re.Pattern[str], split: str, *, max_cam: int, dataset: str
) -> Callable[[str], ImageRecord | None]:
    """Parse whole file names `<pid>_c<cam>...<frame>...`: the pattern's groups are pid, camera and frame. pid -1
    marks junk (skipped, as torchreid does); cameras become 0-based. A name of another dataset does not match, so
    a tree sharded with the wrong --format is refused at its first image."""

    def parse(path: str) -> ImageRecord | None:
        name = os.path.basename(path)
        m = pattern.match(name)
        if m is None:
            raise LayoutError(
                f"{path}: file name does not follow the {dataset} pattern {pattern.pattern!r} "
                "(another dataset's tree, or the wrong --format?)"
            )
        pid, cam, frame = int(m.group(1)), int(m.group(2)), int(m.group(3))
        if pid == -1:
            return None
        if not 1 <= cam <= max_cam:
            raise LayoutError(f"{path}: camera {cam} outside 1..{max_cam} for {dataset}")
        return ImageRecord(path, pid, cam - 1, split, None, frame)

    return parse


def check_listed_files(records: list[ImageRecord], where: dict[str, str]) -> None:
    """Every file a list names must exist, checked before any image is read: a missing one is named with its list
    file and line (`where`: path -> "list:line") at once, not after decoding every earlier split."""
    for rec in records:
        if not os.path.isfile(rec.path):
            raise LayoutError(f"{where.get(rec.path, 'a list file')}: {rec.path} is listed but missing")


def read_pattern_layout(
    src: str,
    *,
    candidates: Iterable[str],
    folders: dict[str, str],
    pattern: re.Pattern[str],
    max_cam: int,
    dataset: str,
) -> list[ImageRecord]:
    """The layouts that keep one folder per split and encode labels in file names (Market-1501, DukeMTMC-reID,
    VeRi-776): find the dataset folder, then parse every image name of every split folder."""
    root = find_dataset_dir(src, candidates, next(iter(folders.values())))
    out: list[ImageRecord] = []
    for split, folder in folders.items():
        parse = name_pattern_parser(pattern, split, max_cam=max_cam, dataset=dataset)
        out += scan_images(require_dir(root, folder), split, parse)
    return out
