#!/usr/bin/env python
"""Pack an image folder or a file list into webdataset-style tar shards, plus the _shards.json manifest.

    python extra_scripts/write_shards.py FOLDER_OR_LIST OUT_DIR [--prefix shard] [--max-samples 10000] [--max-mb 1024]

Each sample is <key>.<ext> (the image's original bytes) and <key>.cls (its class, when it has one).
Train on them with data.train.source=shards data.train.path='OUT_DIR/shard-{000000..000123}.tar'
(the script prints the exact pattern).
"""
import argparse
import os
import sys
import time
from pathlib import Path

from ssl_scale.data.decode import DataError
from ssl_scale.data.filelist import FileListDataset
from ssl_scale.data.prepare import folder_entries, write_shards


def _list_entries(ds: FileListDataset):
    for i in range(len(ds)):
        yield ds.key(i), ds.index.label(i)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="an image folder (class sub-folders become labels) or a .txt/.npy file list")
    ap.add_argument("out", help="output folder for the shards")
    ap.add_argument("--prefix", default="shard")
    ap.add_argument("--max-samples", type=int, default=10000, help="samples per shard (default 10000)")
    ap.add_argument("--max-mb", type=float, default=1024, help="close a shard once it holds this many MB")
    ap.add_argument("--no-labels", action="store_true", help="do not write .cls labels")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        if os.path.isdir(a.src):
            root, entries = a.src, folder_entries(a.src, labels=not a.no_labels)
        else:
            ds = FileListDataset(a.src)
            root, entries = str(ds.root), _list_entries(ds)
        stats = write_shards(root, entries, a.out, a.prefix, a.max_samples, int(a.max_mb * 2**20))
    except (DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = sum(s["samples"] for s in stats)
    mb = sum(s["bytes"] for s in stats) / 2**20
    last = len(stats) - 1
    pattern = str(Path(a.out) / f"{a.prefix}-{{{0:06d}..{last:06d}}}.tar")
    print(f"{n} samples in {len(stats)} shards ({mb:.1f} MB) in {time.perf_counter() - t0:.1f} s")
    print(f"data.train.source=shards data.train.path='{pattern}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
