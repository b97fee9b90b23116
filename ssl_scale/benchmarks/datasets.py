"""Labelled benchmark splits: an image folder with class sub-folders, or a file list of `path label` lines.

The train split fixes the class names and their indices; the test split's labels are mapped onto them
by name, so a test folder that lacks a class still scores correctly, and a test class that the train
split lacks is a clear error.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ssl_scale.data import DATASETS, BadSample, DataError, load_image

__all__ = ["LabelledSplit", "load_split", "load_train_test", "is_file_list"]

LIST_SUFFIXES = (".txt", ".lst", ".list", ".tsv", ".csv")


def is_file_list(path: Union[str, os.PathLike]) -> bool:
    p = Path(path)
    return p.is_file() and p.suffix.lower() in LIST_SUFFIXES


class LabelledSplit:
    """Images with integer labels into `classes`; `__getitem__(i) -> (PIL RGB image, label)`.

    An unreadable image raises a one-line DataError naming the file (a benchmark must score a fixed set).
    """

    def __init__(self, source: str, split: str, paths: List[str], names: List[str], classes: List[str]):
        self.source, self.split = source, split
        self.paths = paths
        self.names = names  # class name of each image
        self.classes = classes
        index = {c: i for i, c in enumerate(classes)}
        missing = sorted({n for n in names if n not in index})
        if missing:
            raise DataError(f"{split} split {source!r}: class {missing[0]!r} is not in the train split "
                            f"(train classes: {', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''})")
        self.labels = np.array([index[n] for n in names], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = load_image(self.paths[i], self.paths[i])
        if isinstance(img, BadSample):
            raise DataError(f"{self.split} split {self.source!r}: image {img.key!r} cannot be used ({img.reason}); "
                            "remove or replace it")
        return img, int(self.labels[i])

    def subset(self, indices: Sequence[int]) -> "LabelledSplit":
        idx = [int(i) for i in indices]
        return LabelledSplit(self.source, self.split, [self.paths[i] for i in idx], [self.names[i] for i in idx],
                             self.classes)

    def fingerprint(self) -> str:
        """Hash of the image list and labels (part of the feature-cache key)."""
        h = hashlib.sha256()
        for p, y in zip(self.paths, self.labels.tolist()):
            h.update(f"{p}\t{y}\n".encode())
        h.update(("|".join(self.classes)).encode())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        return f"LabelledSplit({self.split}: {self.source!r}, {len(self)} images, {len(self.classes)} classes)"


def _read_folder(path: Path, split: str) -> Tuple[List[str], List[str]]:
    ds = DATASETS.get("folder")(path)  # DataError for a missing folder or one without images
    rel = ds.files
    if not ds.classes or all("/" not in f for f in rel):
        raise DataError(f"{split} split {str(path)!r} has no class sub-folders; put the images of each class "
                        "in their own sub-folder (e.g. train/cat/*.jpg, train/dog/*.jpg) or use a file list")
    root_files = [f for f in rel if "/" not in f]
    if root_files:
        raise DataError(f"{split} split {str(path)!r} has images outside class sub-folders "
                        f"(e.g. {root_files[0]!r}); move them into a class sub-folder")
    return [str(ds.root / f) for f in rel], [f.split("/", 1)[0] for f in rel]


def _read_list(path: Path, split: str, root: Optional[Path]) -> Tuple[List[str], List[str]]:
    base = root if root is not None else path.parent
    paths, names = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.replace(",", " ").replace("\t", " ").rsplit(None, 1)
        if len(parts) != 2:
            raise DataError(f"{split} file list {str(path)!r} line {n}: expected 'path label', got {line!r}")
        p, label = parts
        fp = Path(os.path.expanduser(p))
        paths.append(str(fp if fp.is_absolute() else base / fp))
        names.append(label)
    if not paths:
        raise DataError(f"{split} file list {str(path)!r} lists no images (expected lines 'path label')")
    return paths, names


def _class_order(names: Sequence[str]) -> List[str]:
    uniq = set(names)
    if all(n.lstrip("-").isdigit() for n in uniq):  # integer labels keep their numeric order
        return sorted(uniq, key=int)
    return sorted(uniq)


def _cap_per_class(paths: List[str], names: List[str], max_per_class: Optional[int]):
    if not max_per_class:
        return paths, names
    seen: Dict[str, int] = {}
    keep = []
    for i, n in enumerate(names):  # the first N of each class in the split's sorted order: deterministic
        if seen.get(n, 0) < max_per_class:
            seen[n] = seen.get(n, 0) + 1
            keep.append(i)
    return [paths[i] for i in keep], [names[i] for i in keep]


def _read(path: Union[str, os.PathLike], split: str, root: Optional[Union[str, os.PathLike]] = None):
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise FileNotFoundError(f"{split} split {str(p)!r} does not exist")
    if p.is_file():
        return _read_list(p, split, Path(root) if root else None)
    return _read_folder(p, split)


def load_split(path, split: str, classes: Optional[List[str]] = None, max_per_class: Optional[int] = None,
               root=None) -> LabelledSplit:
    """One split; `classes` (the train split's) fixes the label indices, else they come from this split."""
    paths, names = _cap_per_class(*_read(path, split, root), max_per_class)
    if classes is None:
        classes = _class_order(names)
    return LabelledSplit(str(path), split, paths, names, classes)


def load_train_test(train, test, max_per_class: Optional[int] = None, max_per_class_test: Optional[int] = None,
                    root=None) -> Tuple[LabelledSplit, LabelledSplit]:
    tr = load_split(train, "train", None, max_per_class, root)
    te = load_split(test, "test", tr.classes, max_per_class_test if max_per_class_test is not None else max_per_class,
                    root)
    return tr, te
