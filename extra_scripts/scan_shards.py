#!/usr/bin/env python
"""Scan tar shards: samples, sizes, samples without an image, unreadable members, broken tars.

    python extra_scripts/scan_shards.py 'DIR/shard-{000000..000099}.tar' [--decode] [--workers 4] [--write-manifest]

--decode also decodes every image and counts failures by reason (slower). --write-manifest writes the
_shards.json beside the shards (the per-shard counts a training run needs; shards from other tools,
e.g. img2dataset, do not have one). Exit status 1 when anything bad was found.
"""
import argparse
import os
import sys

from ssl_scale.data.decode import DataError
from ssl_scale.data.prepare import scan_shards
from ssl_scale.data.shards import expand_urls, manifest_url, write_manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pattern", help="brace pattern, several separated by spaces, or a .txt list of shard URLs")
    ap.add_argument("--decode", action="store_true", help="decode every image too")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--write-manifest", action="store_true", help="write _shards.json beside the shards")
    a = ap.parse_args(argv)
    try:
        urls = expand_urls(a.pattern)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stats = scan_shards(urls, decode=a.decode, workers=a.workers)
    print(f"{'shard':<40} {'samples':>9} {'MB':>9} {'no image':>9} {'bad':>6}  problems")
    bad_total = 0
    for s in stats:
        bad = sum(s["bad"].values()) + s["no_image"] + (1 if s["error"] else 0)
        bad_total += bad
        problems = ", ".join([f"{k} x{v}" for k, v in sorted(s["bad"].items())] + ([s["error"]] if s["error"] else []))
        print(f"{os.path.basename(s['url'])[-40:]:<40} {s['samples']:>9} {s['bytes'] / 2**20:>9.1f} "
              f"{s['no_image']:>9} {sum(s['bad'].values()):>6}  {problems}")
    n = sum(s["samples"] for s in stats)
    print(f"total: {len(stats)} shards, {n} samples, {sum(s['bytes'] for s in stats) / 2**20:.1f} MB, "
          f"{sum(1 for s in stats if s['error'])} broken shards, {bad_total} problems")
    if a.write_manifest:
        path = manifest_url(urls[0])
        write_manifest(path, stats)
        print(f"wrote {path}")
    return 1 if bad_total else 0


if __name__ == "__main__":
    sys.exit(main())
