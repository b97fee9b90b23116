"""File lists of any length: a text or .npy list of image paths turned once into a memory-mapped index.

An index is a folder ``<list>.idx/`` holding ``paths.bin`` (every path's UTF-8 bytes, concatenated),
``offsets.u64`` (n + 1 little-endian uint64: path i is ``paths.bin[offsets[i]:offsets[i+1]]``),
optionally ``labels.i64`` (n int64) and ``meta.json``. Opening maps the files with ``np.memmap``: no path
is read until it is asked for, so a list of a billion entries opens in constant time and memory.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Optional, Tuple, Union

import numpy as np

from ssl_scale.data.decode import DataError
from ssl_scale.data.sources import DATASETS, ImagePathDataset

__all__ = ["FileListDataset", "FileListIndex", "build_filelist_index", "index_dir_for"]

INDEX_FORMAT = "ssl_scale-filelist-1"
_CHUNK = 1 << 20  # entries per write while building


def index_dir_for(list_path: Union[str, os.PathLike]) -> Path:
    """Where the index of a list lives: ``<list>.idx`` beside it (the list itself may be the index)."""
    p = Path(list_path)
    return p if p.suffix == ".idx" else p.with_name(p.name + ".idx")


def _source_stamp(path: Path) -> dict:
    st = path.stat()
    return {"source": str(path.resolve()), "source_bytes": st.st_size, "source_mtime_ns": st.st_mtime_ns}


def _text_entries(path: Path) -> Iterator[list]:
    """Chunks of (path, label) from a text list: one path a line, optionally ``<TAB>label`` after it."""
    with open(path, "r", encoding="utf-8") as f:
        lineno = 0
        while True:
            lines = f.readlines(64 << 20)
            if not lines:
                return
            chunk = []
            for line in lines:
                lineno += 1
                line = line.rstrip("\r\n")
                if not line or line.startswith("#"):
                    continue
                name, tab, label = line.partition("\t")
                if tab:
                    try:
                        chunk.append((name, int(label)))
                    except ValueError:
                        raise DataError(f"{path}:{lineno}: label {label!r} after the tab is not an integer; "
                                        "write `path<TAB>integer label` or the path alone") from None
                else:
                    chunk.append((name, -1))
            yield chunk


def _npy_entries(path: Path) -> Iterator[list]:
    arr = np.load(path, mmap_mode="r", allow_pickle=False) if path.suffix == ".npy" else None
    if arr is None or arr.ndim != 1 or arr.dtype.kind not in "SU":
        raise DataError(f"{path}: a .npy file list must be a 1-D array of strings (dtype S or U), got "
                        f"{getattr(arr, 'dtype', None)} {getattr(arr, 'shape', None)}")
    for lo in range(0, len(arr), _CHUNK):
        part = arr[lo:lo + _CHUNK]
        names = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in part.tolist()]
        yield [(n, -1) for n in names]


def build_filelist_index(entries: Iterable[list], out_dir: Union[str, os.PathLike], meta: Optional[dict] = None) -> Path:
    """Write an index from chunks of (path, label) pairs (label -1 = none); atomic: a temp folder is renamed.

    Memory stays at one chunk, whatever the list's length.
    """
    out = Path(out_dir)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    n, pos, any_label = 0, 0, False
    with open(tmp / "paths.bin", "wb") as fp, open(tmp / "offsets.u64", "wb") as fo, \
            open(tmp / "labels.i64", "wb") as fl:
        fo.write(np.zeros(1, dtype="<u8").tobytes())
        for chunk in entries:
            if not chunk:
                continue
            enc = [name.encode("utf-8") for name, _ in chunk]
            lens = np.fromiter((len(e) for e in enc), dtype=np.int64, count=len(enc))
            fp.write(b"".join(enc))
            fo.write((pos + np.cumsum(lens)).astype("<u8").tobytes())
            labels = np.fromiter((lab for _, lab in chunk), dtype="<i8", count=len(chunk))
            any_label = any_label or bool((labels >= 0).any())
            fl.write(labels.tobytes())
            pos += int(lens.sum())
            n += len(chunk)
    if not any_label:
        (tmp / "labels.i64").unlink()
    (tmp / "meta.json").write_text(json.dumps({"format": INDEX_FORMAT, "entries": n, "labels": any_label,
                                               **(meta or {})}, indent=1))
    if out.exists():
        old = out.with_name(out.name + f".old{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    else:
        tmp.rename(out)
    return out


class FileListIndex:
    """Read-only view of an index folder: ``len``, ``path(i)``, ``label(i)``; O(1) to open, nothing cached."""

    def __init__(self, index_dir: Union[str, os.PathLike]):
        d = Path(index_dir)
        try:
            self.meta = json.loads((d / "meta.json").read_text())
        except (OSError, ValueError):
            raise DataError(f"{d} is not a file-list index (no readable meta.json); rebuild it with "
                            "extra_scripts/make_filelist.py or point data.train.path at the .txt/.npy list") from None
        if self.meta.get("format") != INDEX_FORMAT:
            raise DataError(f"{d}: index format {self.meta.get('format')!r}, expected {INDEX_FORMAT!r}; rebuild it")
        self.dir = d
        self.n = int(self.meta["entries"])
        self.offsets = np.memmap(d / "offsets.u64", dtype="<u8", mode="r", shape=(self.n + 1,))
        self.blob = np.memmap(d / "paths.bin", dtype=np.uint8, mode="r") if self.offsets[-1] else np.zeros(0, np.uint8)
        self.labels = (np.memmap(d / "labels.i64", dtype="<i8", mode="r", shape=(self.n,))
                       if self.meta.get("labels") else None)

    def __len__(self) -> int:
        return self.n

    def path(self, i: int) -> str:
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.blob[lo:hi].tobytes().decode("utf-8")

    def label(self, i: int) -> int:
        return int(self.labels[i]) if self.labels is not None else -1


def open_or_build_index(list_path: Union[str, os.PathLike]) -> FileListIndex:
    """The index of a list: built beside it on first use, rebuilt when the list changed since."""
    src = Path(os.path.expanduser(str(list_path)))
    if src.suffix == ".idx" or (src.is_dir() and (src / "meta.json").exists()):
        return FileListIndex(src)
    if not src.is_file():
        raise DataError(f"file list {str(src)!r} does not exist; check data.train.path (a .txt list with one "
                        "image path a line, a .npy array of paths, or a .idx index folder)")
    idx = index_dir_for(src)
    stamp = _source_stamp(src)
    if idx.is_dir():
        try:
            meta = json.loads((idx / "meta.json").read_text())
        except (OSError, ValueError):
            meta = {}
        if all(meta.get(k) == v for k, v in stamp.items() if k != "source"):
            return FileListIndex(idx)
    entries = _npy_entries(src) if src.suffix == ".npy" else _text_entries(src)
    try:
        build_filelist_index(entries, idx, meta=stamp)
    except PermissionError:
        raise DataError(f"cannot write the index {idx} beside the list; build it where you can write with "
                        f"extra_scripts/make_filelist.py --index-only and point data.train.path at it") from None
    return FileListIndex(idx)


@DATASETS.register("filelist", "a .txt/.npy list of image paths (optional <TAB>label), memory-mapped once indexed")
class FileListDataset(ImagePathDataset):
    """The images named by a file list; relative paths are taken from the list's folder (or `root`).

    Args:
        path: a text list (``path`` or ``path<TAB>label`` a line), a .npy array of path strings, or the
            ``.idx`` folder built from one (see extra_scripts/make_filelist.py).
        root: the folder relative paths start from (default: the list's folder).
        max_pixels, min_size, draft_size: passed to ``decode.load_image``.
    """

    def __init__(self, path: Union[str, os.PathLike], root: Optional[str] = None, max_pixels: Optional[int] = None,
                 min_size: int = 2, draft_size: Optional[Tuple[int, int]] = None):
        self.index = open_or_build_index(path)
        if len(self.index) == 0:
            raise DataError(f"file list {str(path)!r} names no images; add one image path a line")
        src = Path(self.index.meta.get("source") or self.index.dir)
        self.root = Path(root) if root is not None else Path(self.index.meta.get("root") or src.parent)
        self._set_decode_options(max_pixels, min_size, draft_size)

    def __len__(self) -> int:
        return len(self.index)

    def key(self, i: int) -> str:
        p = self.index.path(i)
        return p if os.path.isabs(p) else os.path.join(self.root, p)

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.index.labels) if self.index.labels is not None else np.full(len(self), -1)

    def label(self, i: int) -> int:
        return self.index.label(i)

    def __repr__(self) -> str:
        return f"FileListDataset({str(self.index.dir)!r}, {len(self)} images)"
