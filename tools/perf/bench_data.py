#!/usr/bin/env python
"""Data-layer throughput: images/s of one worker (one core) reading the same photos as an image folder,
a file list and tar shards, decode + multi-crop; and the time and memory to open a huge file list.

    python tools/perf/bench_data.py [--images DIR] [--n 400] [--crops swav|small] [--list-entries 100000000]

Each reader runs in this process with one torch thread, as a DataLoader worker does: the figure is
per worker and per core. Shards are written by the project's own write_shards into a temp folder.
"""
import argparse
import itertools
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ssl_scale.data import FileListDataset, FolderDataset, build_train_loader
from ssl_scale.data.filelist import FileListIndex, INDEX_FORMAT
from ssl_scale.data.multicrop import CropSpec, MultiCropTransform
from ssl_scale.data.prepare import folder_entries, write_filelist, write_shards
from ssl_scale.data.shards import ShardDataset

CROPS = {"swav": [CropSpec(224, 2, 0.14, 1.0), CropSpec(96, 6, 0.05, 0.14)],
         "small": [CropSpec(32, 2, 0.14, 1.0), CropSpec(16, 4, 0.05, 0.14)]}
DEFAULT_IMAGES = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10-mini" / "test"


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024


def rate(ds, tf, batch: int) -> float:
    t0, n = time.perf_counter(), 0
    for b in build_train_loader(ds, tf, batch, 0, 1, seed=0, epoch=0, num_workers=0):
        n += len(b["labels"]) + len(b["bad"])
    return n / (time.perf_counter() - t0)


def bench_readers(images: str, n: int, crops: str, tmp: Path) -> None:
    entries = list(itertools.islice(folder_entries(images), 0, None, max(1, sum(1 for _ in folder_entries(images)) // n)))[:n]
    sub = tmp / "folder"
    for rel, _ in entries:
        (sub / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(os.path.join(images, rel), sub / rel) if not (sub / rel).exists() else None
    write_filelist(str(sub), str(tmp / "list.txt"))
    stats = write_shards(str(sub), folder_entries(str(sub)), str(tmp / "shards"), max_samples=100)
    sources = {"folder": FolderDataset(sub), "filelist": FileListDataset(tmp / "list.txt"),
               "shards": ShardDataset(str(tmp / "shards" / f"shard-{{000000..{len(stats) - 1:06d}}}.tar"))}
    tf = MultiCropTransform(CROPS[crops])
    decode_only = lambda img: [torch.zeros(1)]  # noqa: E731 - the decode cost alone
    print(f"\n{len(entries)} photos from {images}; crops {crops}: "
          + " + ".join(f"{c.count}x{c.size}" for c in CROPS[crops]))
    print(f"{'source':<10} {'decode only (img/s)':>20} {'decode + multi-crop (img/s)':>28}")
    for name, ds in sources.items():
        print(f"{name:<10} {rate(ds, decode_only, 16):>20.0f} {rate(ds, tf, 16):>28.1f}")


def bench_filelist_open(entries: int, tmp: Path) -> None:
    d = tmp / "big.idx"
    d.mkdir()
    width = 24  # "train/000/000000000.jpg" + nothing: fixed width keeps the build vectorised
    chunk = 10_000_000
    with open(d / "paths.bin", "wb") as fp, open(d / "offsets.u64", "wb") as fo:
        fo.write(np.zeros(1, "<u8").tobytes())
        for lo in range(0, entries, chunk):
            ids = np.arange(lo, min(entries, lo + chunk))
            names = np.char.add(np.char.add("train/", np.char.zfill((ids // 1_000_000).astype(str), 3)),
                                np.char.add(np.char.add("/", np.char.zfill(ids.astype(str), 11)), ".jpg"))
            fp.write(names.astype(f"S{width}").tobytes())
            fo.write(((ids + 1) * width).astype("<u8").tobytes())
    (d / "meta.json").write_text(f'{{"format": "{INDEX_FORMAT}", "entries": {entries}, "labels": false}}')
    # Opened in a fresh process, so its resident memory is the index's alone (the build above used a lot).
    probe = (f"import time, numpy as np; from tools.perf.bench_data import _rss_mb; "
             f"from ssl_scale.data.filelist import FileListIndex; r0 = _rss_mb(); t0 = time.perf_counter(); "
             f"idx = FileListIndex({str(d)!r}); t1 = time.perf_counter() - t0; r1 = _rss_mb() - r0; "
             f"ids = np.random.default_rng(0).integers(0, len(idx), 10000); t2 = time.perf_counter(); "
             f"p = [idx.path(int(i)) for i in ids]; t3 = (time.perf_counter() - t2) / len(ids); "
             f"print(t1, r1, t3 * 1e6, _rss_mb() - r0)")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=root, env={**os.environ, "PYTHONPATH": str(root)}).stdout.split()
    t_open, rss_open, t_look, rss_look = map(float, out)
    print(f"\nfile list of {entries:,} entries ({(d / 'paths.bin').stat().st_size / 2**30:.2f} GiB of paths, "
          f"{(d / 'offsets.u64').stat().st_size / 2**30:.2f} GiB of offsets):")
    print(f"{'open (s)':>10} {'resident after open (MB)':>26} {'random lookup (us)':>20} {'resident after 10k lookups (MB)':>33}")
    print(f"{t_open:>10.4f} {rss_open:>26.1f} {t_look:>20.1f} {rss_look:>33.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=str(DEFAULT_IMAGES), help="an image folder (class sub-folders)")
    ap.add_argument("--n", type=int, default=400, help="photos to read")
    ap.add_argument("--crops", choices=sorted(CROPS), default="swav")
    ap.add_argument("--list-entries", type=int, default=10_000_000, help="size of the file list to open (0 = skip)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, one thread, pid {os.getpid()}, max RSS so far "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        bench_readers(a.images, a.n, a.crops, Path(tmp))
        if a.list_entries:
            bench_filelist_open(a.list_entries, Path(tmp))


if __name__ == "__main__":
    main()
