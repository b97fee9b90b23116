#!/usr/bin/env python
"""Build a file list (and its memory-mapped index) from an image folder, or index an existing list.

    python extra_scripts/make_filelist.py FOLDER OUT.txt [--no-labels]   # writes OUT.txt and OUT.txt.idx/
    python extra_scripts/make_filelist.py --index-only LIST.txt|LIST.npy  # writes LIST.*.idx/

Train on it with data.train.source=filelist data.train.path=OUT.txt (or the .idx folder).
"""
import argparse
import sys
import time

from ssl_scale.data.decode import DataError
from ssl_scale.data.filelist import FileListIndex, open_or_build_index
from ssl_scale.data.prepare import write_filelist


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="image folder (or, with --index-only, a .txt/.npy list)")
    ap.add_argument("out", nargs="?", help="the text list to write")
    ap.add_argument("--no-labels", action="store_true", help="do not record class sub-folders as labels")
    ap.add_argument("--index-only", action="store_true", help="only (re)build the .idx of an existing list")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        if a.index_only:
            idx = open_or_build_index(a.src)
            print(f"{idx.dir}: {len(idx)} entries ({time.perf_counter() - t0:.1f} s)")
            return 0
        if not a.out:
            ap.error("give the list to write (OUT.txt), or --index-only")
        n, idx_dir = write_filelist(a.src, a.out, labels=not a.no_labels)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    idx = FileListIndex(idx_dir)
    print(f"{a.out}: {n} images; index {idx_dir} (labels: {idx.labels is not None}) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
