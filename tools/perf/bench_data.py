#!/usr/bin/env python
"""Data-layer throughput: images/s of one worker (one core) reading the same photos as an image folder,
a file list and tar shards, decode + multi-crop; the time and memory to open a huge file list; and
(--vs-torchvision) our decode + multi-crop against a plain torchvision-transforms pipeline on real photos.

    python tools/perf/bench_data.py [--images DIR] [--n 400] [--crops swav|small] [--list-entries 100000000]
    python tools/perf/bench_data.py --skip-readers --list-entries 100000000    # the file-list figure alone
    python tools/perf/bench_data.py --vs-torchvision [--n 40] [--crops swav|small|draft]

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
from typing import List

import numpy as np
import torch

from ssl_scale.data import FileListDataset, FolderDataset, build_train_loader
from ssl_scale.data.filelist import FileListIndex, INDEX_FORMAT
from ssl_scale.data.multicrop import CropSpec, MultiCropTransform
from ssl_scale.data.prepare import folder_entries, write_filelist, write_shards
from ssl_scale.data.shards import ShardDataset
from ssl_scale.train.flops import resident_memory_bytes

CROPS = {"swav": [CropSpec(224, 2, 0.14, 1.0), CropSpec(96, 6, 0.05, 0.14)],
         "draft": [CropSpec(160, 2, 0.14, 1.0), CropSpec(96, 6, 0.05, 0.14)],  # 2x160: 640x427 photos decode at 1/2
         "small": [CropSpec(32, 2, 0.14, 1.0), CropSpec(16, 4, 0.05, 0.14)]}
DEFAULT_IMAGES = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10-mini" / "test"


def _rss_mb(field: str = "VmRSS") -> float:
    """Resident memory in MB (see resident_memory_bytes for the fields)."""
    return resident_memory_bytes(field) / 2 ** 20


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


def _synthetic_paths(ids: np.ndarray) -> np.ndarray:
    """ids -> (len, 23) uint8 rows "train/DDD/DDDDDDDDD.jpg" (folder = id // 1,000,000), digits by arithmetic:
    a few integer ops on the whole chunk, ~100x faster than numpy's string functions."""
    rows = np.frombuffer(b"train/000/000000000.jpg" * len(ids), np.uint8).reshape(len(ids), 23).copy()
    for pos, value, digits in ((6, ids // 1_000_000, 3), (10, ids, 9)):
        for k in range(digits):
            rows[:, pos + digits - 1 - k] = 48 + (value // 10 ** k) % 10
    return rows


def synthetic_path(i: int) -> str:
    return f"train/{i // 1_000_000:03d}/{i:09d}.jpg"


def bench_filelist_open(entries: int, tmp: Path) -> None:
    if not 0 < entries < 10 ** 9:
        raise SystemExit(f"--list-entries must be in 1..999,999,999, got {entries}")
    d = tmp / "big.idx"
    d.mkdir()
    width, chunk = 23, 4_000_000
    t0 = time.perf_counter()
    with open(d / "paths.bin", "wb") as fp, open(d / "offsets.u64", "wb") as fo:
        fo.write(np.zeros(1, "<u8").tobytes())
        for lo in range(0, entries, chunk):
            ids = np.arange(lo, min(entries, lo + chunk), dtype=np.int64)
            fp.write(_synthetic_paths(ids).tobytes())
            fo.write(((ids + 1) * width).astype("<u8").tobytes())
    (d / "meta.json").write_text(f'{{"format": "{INDEX_FORMAT}", "entries": {entries}, "labels": false}}')
    print(f"\nbuilt a synthetic index of {entries:,} entries in {time.perf_counter() - t0:.1f} s")
    # Opened in a fresh process, so its resident memory is the index's alone (the build above used a lot).
    probe = (f"import time, numpy as np; from tools.perf.bench_data import _rss_mb; "
             f"from ssl_scale.data.filelist import FileListIndex; r0, a0 = _rss_mb(), _rss_mb('RssAnon'); "
             f"t0 = time.perf_counter(); "
             f"idx = FileListIndex({str(d)!r}); t1 = time.perf_counter() - t0; r1 = _rss_mb() - r0; "
             f"ids = np.random.default_rng(0).integers(0, len(idx), 10000); t2 = time.perf_counter(); "
             f"p = [idx.path(int(i)) for i in ids]; t3 = (time.perf_counter() - t2) / len(ids); "
             f"from tools.perf.bench_data import synthetic_path; "
             f"assert p == [synthetic_path(int(i)) for i in ids] and len(idx) == {entries}, 'wrong paths'; "
             f"print(t1, r1, t3 * 1e6, _rss_mb() - r0, _rss_mb('RssAnon') - a0)")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=root, env={**os.environ, "PYTHONPATH": str(root)}).stdout.split()
    t_open, rss_open, t_look, rss_look, anon_look = map(float, out)
    print(f"\nfile list of {entries:,} entries ({(d / 'paths.bin').stat().st_size / 2**30:.2f} GiB of paths, "
          f"{(d / 'offsets.u64').stat().st_size / 2**30:.2f} GiB of offsets):")
    print(f"{'open (s)':>10} {'resident after open (MB)':>26} {'random lookup (us)':>20} "
          f"{'resident after 10k lookups (MB)':>33} {'of which anonymous (MB)':>25}")
    print(f"{t_open:>10.4f} {rss_open:>26.1f} {t_look:>20.1f} {rss_look:>33.1f} {anon_look:>25.1f}")
    print("(resident = VmRSS growth of a fresh process; the rest of it is the index's pages mapped from the page "
          "cache: clean, shared by every worker on the node, reclaimable)")


def real_photos(tmp: Path) -> List[Path]:
    """scikit-learn's sample photographs (and scikit-image's colour ones when it is installed) as JPEG files."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    arrays = {name: load_sample_image(name) for name in ("china.jpg", "flower.jpg")}
    try:
        import skimage.data as skd

        for name in ("astronaut", "coffee", "chelsea", "rocket"):
            arr = getattr(skd, name)()
            if arr.ndim == 3 and min(arr.shape[:2]) >= 300:
                arrays[f"skimage_{name}.jpg"] = arr
    except ImportError:
        pass
    paths = []
    for name, arr in arrays.items():
        paths.append(tmp / name)
        Image.fromarray(arr).save(paths[-1], quality=90)
    return paths


def torchvision_multicrop(crops: List[CropSpec]):
    """The plain pipeline we compare against: PIL image -> per crop torchvision.transforms (v1, on PIL):
    RandomResizedCrop, flip, colour jitter, grayscale, Gaussian blur, ToTensor, Normalize (SwAV's recipe)."""
    from torchvision import transforms as T

    from ssl_scale.data.multicrop import IMAGENET_MEAN, IMAGENET_STD, blur_kernel_size

    pipes = [(c.count, T.Compose([
        T.RandomResizedCrop(c.size, scale=(c.scale_min, c.scale_max)), T.RandomHorizontalFlip(0.5),
        T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8), T.RandomGrayscale(0.2),
        T.RandomApply([T.GaussianBlur(blur_kernel_size(c.size), sigma=(0.1, 2.0))], p=0.5),
        T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])) for c in crops]
    return lambda img: [p(img) for count, p in pipes for _ in range(count)]


def bench_vs_torchvision(n: int, crops: str, rounds: int, tmp: Path) -> None:
    from PIL import Image

    from ssl_scale.data.decode import load_image

    photos = real_photos(tmp)
    specs = CROPS[crops]
    side = max(c.size for c in specs)  # what derived.draft_size asks for with data.decode.draft=true
    ours_tf, plain_tf = MultiCropTransform(specs, blur_p=0.5), torchvision_multicrop(specs)

    def plain_decode(p):
        with Image.open(p) as im:
            return im.convert("RGB")

    pipelines = {
        "ours: draft decode + MultiCropTransform": (lambda p: load_image(p, str(p), draft_size=(side, side)), ours_tf),
        "ours, full decode (data.decode.draft=false)": (lambda p: load_image(p, str(p)), ours_tf),
        "torchvision: PIL decode + transforms per crop": (plain_decode, plain_tf),
    }
    sizes = {p.name: Image.open(p).size for p in photos}
    drafted = {p.name: load_image(p, p.name, draft_size=(side, side)).size for p in photos}
    print(f"\n{n} decodes a round x {rounds} rounds (best round), photos {sizes} decoded by draft as {drafted}; "
          f"crops {' + '.join(f'{c.count}x{c.size}' for c in specs)}; one thread")
    best = {k: float("inf") for k in pipelines}
    decode_best = {k: float("inf") for k in pipelines}
    for r in range(rounds):  # interleaved, so a burst of load on a shared machine hits every pipeline alike
        for name, (decode, tf) in pipelines.items():
            torch.manual_seed(r)
            t0 = time.perf_counter()
            for i in range(n):
                decode(photos[i % len(photos)])
            t1 = time.perf_counter()
            for i in range(n):
                tf(decode(photos[i % len(photos)]))
            t2 = time.perf_counter()
            decode_best[name] = min(decode_best[name], (t1 - t0) / n)
            best[name] = min(best[name], (t2 - t1) / n)
    base = best["torchvision: PIL decode + transforms per crop"]
    print(f"{'pipeline':<46} {'decode (ms)':>12} {'decode + crops (ms)':>20} {'img/s':>8} {'vs torchvision':>15}")
    for name in pipelines:
        print(f"{name:<46} {decode_best[name] * 1e3:>12.2f} {best[name] * 1e3:>20.1f} {1 / best[name]:>8.1f} "
              f"{base / best[name]:>14.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=str(DEFAULT_IMAGES), help="an image folder (class sub-folders)")
    ap.add_argument("--n", type=int, default=400, help="photos to read")
    ap.add_argument("--crops", choices=sorted(CROPS), default="swav")
    ap.add_argument("--list-entries", type=int, default=10_000_000, help="size of the file list to open (0 = skip)")
    ap.add_argument("--skip-readers", action="store_true", help="only the file-list part (with --list-entries)")
    ap.add_argument("--vs-torchvision", action="store_true",
                    help="only: decode + multi-crop on real photos, ours against plain torchvision transforms")
    ap.add_argument("--rounds", type=int, default=3, help="--vs-torchvision: interleaved rounds (best kept)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, one thread, pid {os.getpid()}, max RSS so far "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        if a.vs_torchvision:
            bench_vs_torchvision(a.n, a.crops, a.rounds, Path(tmp))
            return
        if not a.skip_readers:
            bench_readers(a.images, a.n, a.crops, Path(tmp))
        if a.list_entries:
            bench_filelist_open(a.list_entries, Path(tmp))


if __name__ == "__main__":
    main()
