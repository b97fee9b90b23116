"""Data preparation behind extra_scripts/: image folders to file lists and to tar shards, shard scans."""
from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

from ssl_scale.data.filelist import _source_stamp, _text_entries, build_filelist_index, index_dir_for
from ssl_scale.data.shards import MANIFEST_NAME, scan_shard, write_manifest
from ssl_scale.data.sources import iter_images

__all__ = ["folder_entries", "write_filelist", "write_shards", "scan_shards"]


def folder_entries(folder: str, labels: bool = True) -> Iterator[Tuple[str, int]]:
    """(path relative to `folder`, label) for every image, in sorted order; top-level sub-folders are
    classes numbered in sorted order (FolderDataset's labels), root files and labels=False give -1."""
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    index = {c: i for i, c in enumerate(classes)}
    for rel in iter_images(folder):
        top = rel.split("/", 1)[0] if "/" in rel else None
        yield rel, (index[top] if labels and top in index else -1)


def write_filelist(folder: str, out_list: str, labels: bool = True, index: bool = True) -> Tuple[int, Optional[Path]]:
    """Write `out_list` (``path<TAB>label`` lines, paths relative to `folder`) and, with `index`, its
    memory-mapped ``.idx`` beside it. Streams: memory does not grow with the number of images."""
    out = Path(out_list)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for rel, lab in folder_entries(folder, labels):
            f.write(f"{rel}\t{lab}\n" if lab >= 0 else f"{rel}\n")
            n += 1
    os.replace(tmp, out)
    idx = None
    if index:
        # the root as named (absolute, links kept): a linked data folder keeps its name in every key
        idx = build_filelist_index(_text_entries(out), index_dir_for(out),
                                   meta={**_source_stamp(out), "root": os.path.abspath(folder)})
    return n, idx


def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode = len(data), int(mtime), 0o444
    tar.addfile(ti, io.BytesIO(data))


def write_shards(root: str, entries: Iterable[Tuple[str, int]], out_dir: str, prefix: str = "shard",
                 max_samples: int = 10000, max_bytes: int = 1 << 30, digits: int = 6) -> List[Dict[str, object]]:
    """Pack images into ``<out_dir>/<prefix>-000000.tar`` ... in the webdataset layout and write the
    ``_shards.json`` manifest; returns one stats dict per shard.

    Each sample is ``<key>.<original extension>`` (the file's bytes, not re-encoded) plus ``<key>.cls``
    when it has a label (>= 0); keys are the running sample number (9 digits). A shard is closed at
    `max_samples` samples or once it holds `max_bytes`. Each shard is written under a temporary name
    and renamed when complete, so an interrupted run leaves no half-written shard.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats: List[Dict[str, object]] = []
    tar, tmp, final, count, size = None, None, None, 0, 0

    def close():
        tar.close()
        os.replace(tmp, final)
        stats.append({"url": str(final), "samples": count, "bytes": final.stat().st_size})

    now = time.time()
    for i, (rel, label) in enumerate(entries):
        if tar is None:
            final = out / f"{prefix}-{len(stats):0{digits}d}.tar"
            tmp = final.with_name(final.name + ".tmp")
            tar, count, size = tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT), 0, 0
        path = rel if os.path.isabs(rel) else os.path.join(root, rel)
        with open(path, "rb") as f:
            data = f.read()
        ext = os.path.splitext(path)[1].lstrip(".").lower() or "jpg"
        key = f"{i:09d}"
        _add(tar, f"{key}.{ext}", data, now)
        if label >= 0:
            _add(tar, f"{key}.cls", str(int(label)).encode(), now)
        count, size = count + 1, size + len(data)
        if count >= max_samples or size >= max_bytes:
            close()
            tar = None
    if tar is not None:
        close()
    write_manifest(str(out / MANIFEST_NAME), stats)
    return stats


def scan_shards(urls: List[str], decode: bool = False, workers: int = 1) -> List[Dict[str, object]]:
    """scan_shard for each URL (in a process pool when workers > 1), in the order given."""
    if workers <= 1:
        return [scan_shard(u, decode) for u in urls]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(scan_shard, urls, [decode] * len(urls)))
