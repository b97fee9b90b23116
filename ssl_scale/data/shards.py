"""Tar shards in the webdataset layout (``key.jpg`` [+ ``key.cls``/``.json``/``.txt``]): URL patterns, tar
reading with Python's tarfile (local files or any fsspec URL), per-shard sample counts, the shard source."""
from __future__ import annotations

import json
import os
import posixpath
import re
import tarfile
from typing import IO, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ssl_scale.data.decode import BadSample, DataError, load_image
from ssl_scale.data.sources import DATASETS

__all__ = ["expand_urls", "open_url", "iter_tar_samples", "scan_shard", "ShardDataset", "MANIFEST_NAME",
           "read_manifest", "write_manifest", "IMAGE_EXTS"]

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
MANIFEST_NAME = "_shards.json"
MANIFEST_FORMAT = "ssl_scale-shards-1"
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(\d+)\.\.(\d+)")


def expand_braces(pattern: str) -> List[str]:
    """``a-{000..002}.tar`` -> a-000.tar a-001.tar a-002.tar; ``{x,y}`` alternatives; several braces multiply."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    pre, body, post = pattern[:m.start()], m.group(1), pattern[m.end():]
    r = _RANGE.fullmatch(body)
    if r:
        lo, hi = int(r.group(1)), int(r.group(2))
        if hi < lo:
            raise DataError(f"shard pattern {pattern!r}: range {{{body}}} runs backwards; write {{{r.group(2)}..{r.group(1)}}}")
        width = len(r.group(1))
        items = [str(i).zfill(width) for i in range(lo, hi + 1)]
    else:
        items = body.split(",")
    return [u for item in items for u in expand_braces(pre + item + post)]


def expand_urls(path: Union[str, Sequence[str]]) -> List[str]:
    """Shard URLs from a brace pattern, several patterns separated by whitespace, a list of them, or a
    ``.txt`` file naming one pattern or URL a line."""
    if isinstance(path, (list, tuple)):
        return [u for p in path for u in expand_urls(p)]
    path = str(path).strip()
    if path.endswith(".txt") and "://" not in path:
        if not os.path.isfile(path):
            raise DataError(f"shard list {path!r} does not exist; check data.train.path")
        with open(path, encoding="utf-8") as f:
            return [u for line in f if line.strip() and not line.startswith("#") for u in expand_urls(line.strip())]
    return [u for p in path.split() for u in expand_braces(p)]


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


def open_url(url: str) -> IO[bytes]:
    """A seekable binary file for a local path or an fsspec URL (s3://, gs://, http(s)://, ...)."""
    if _is_local(url):
        return open(os.path.expanduser(_local_path(url)), "rb")
    import fsspec  # imported here: only remote shards need it (it is a declared dependency)

    return fsspec.open(url, "rb").open()


def _split_name(name: str) -> Tuple[str, str]:
    """webdataset convention: the key is the path up to the first dot of the basename; the rest is the field."""
    d, base = posixpath.split(name)
    stem, dot, ext = base.partition(".")
    return (posixpath.join(d, stem) if d else stem), ext.lower()


def iter_tar_samples(f: IO[bytes], start: int = 0) -> Iterator[Tuple[str, Optional[Dict[str, bytes]], str]]:
    """Yield (key, {field: bytes}, "") for each sample (consecutive members sharing a key) of one tar.

    Samples before `start` are counted from their headers but their data is not read (tarfile seeks
    past it). A member that cannot be read gives (key, None, "truncated"); a tar that breaks off or is
    corrupt ends with ("", None, "shard_error") after the samples read so far.
    """
    try:
        tf = tarfile.open(fileobj=f, mode="r:")
    except (tarfile.TarError, OSError, EOFError):
        yield "", None, "shard_error"
        return
    idx, cur_key, parts, bad = -1, None, {}, ""
    while True:
        try:
            ti = tf.next()
        except (tarfile.TarError, OSError, EOFError):
            if cur_key is not None and idx >= start:
                yield cur_key, (None if bad else parts), bad
            yield "", None, "shard_error"
            return
        if ti is None:
            break
        tf.members = []  # tarfile keeps every header it has seen; a streaming reader needs none of them
        if not ti.isfile():
            continue
        key, ext = _split_name(ti.name)
        if key != cur_key:
            if cur_key is not None and idx >= start:
                yield cur_key, (None if bad else parts), bad
            idx, cur_key, parts, bad = idx + 1, key, {}, ""
        if idx < start or bad:
            continue
        try:
            fobj = tf.extractfile(ti)
            data = fobj.read() if fobj is not None else b""
            if len(data) != ti.size:
                bad = "truncated"
            parts[ext] = data
        except (tarfile.TarError, OSError, EOFError):
            bad = "truncated"
    if cur_key is not None and idx >= start:
        yield cur_key, (None if bad else parts), bad


def scan_shard(url: str, decode: bool = False) -> Dict[str, object]:
    """Count one shard: samples, bytes, samples without an image, unreadable members, and (with `decode`)
    images that do not decode, by reason. Never raises for a bad shard."""
    out: Dict[str, object] = {"url": url, "samples": 0, "bytes": 0, "no_image": 0, "bad": {}, "error": ""}
    try:
        with open_url(url) as f:
            f.seek(0, os.SEEK_END)
            out["bytes"] = f.tell()
            f.seek(0)
            for key, parts, reason in iter_tar_samples(f):
                if not key:
                    out["error"] = reason
                    break
                out["samples"] += 1
                if parts is None:
                    out["bad"][reason] = out["bad"].get(reason, 0) + 1
                    continue
                img_ext = next((e for e in IMAGE_EXTS if e in parts), None)
                if img_ext is None:
                    out["no_image"] += 1
                elif decode:
                    got = load_image(parts[img_ext], key)
                    if isinstance(got, BadSample):
                        out["bad"][got.reason] = out["bad"].get(got.reason, 0) + 1
    except (OSError, ValueError) as e:
        out["error"] = f"io_error: {e}"
    return out


def manifest_url(first_url: str) -> str:
    return posixpath.join(posixpath.dirname(first_url), MANIFEST_NAME) if "://" in first_url else \
        os.path.join(os.path.dirname(first_url), MANIFEST_NAME)


def read_manifest(url: str) -> Dict[str, int]:
    """{shard basename: samples} from a manifest, or {} when there is none."""
    try:
        with open_url(url) as f:
            meta = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError, ImportError):
        return {}
    if meta.get("format") != MANIFEST_FORMAT:
        return {}
    return {name: int(v["samples"]) for name, v in meta.get("shards", {}).items()}


def write_manifest(path: str, stats: Sequence[Dict[str, object]]) -> None:
    """Write (atomically) the per-shard counts that let a run plan its epochs without reading the shards."""
    body = {"format": MANIFEST_FORMAT,
            "shards": {posixpath.basename(str(s["url"])): {"samples": int(s["samples"]), "bytes": int(s["bytes"])}
                       for s in stats}}
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(body, f, indent=1)
    os.replace(tmp, path)


@DATASETS.register("shards", "webdataset-style tar shards (brace pattern, list or fsspec URLs), streamed")
class ShardDataset:
    """A set of tar shards read as a stream; ``len`` is the total sample count.

    Sample counts come from ``_shards.json`` beside the shards (written by extra_scripts/write_shards.py
    or scan_shards.py --write-manifest) or from the file named by `manifest`; shards it does not list
    are scanned once at start-up (headers only). Each sample's identity is its position in the shards
    as listed (shard 0's samples first): the `index` its augmentation is seeded from.

    Args:
        path: brace pattern(s), a list, or a .txt list of URLs (see expand_urls).
        manifest: a manifest to use instead of ``_shards.json`` next to the first shard.
        max_pixels, min_size, draft_size: passed to ``decode.load_image``.
    """

    streaming = True

    def __init__(self, path, manifest: Optional[str] = None, max_pixels: Optional[int] = None, min_size: int = 2,
                 draft_size: Optional[Tuple[int, int]] = None):
        self.urls = expand_urls(path)
        if not self.urls:
            raise DataError(f"shard pattern {path!r} names no shards; check data.train.path")
        known = read_manifest(manifest or manifest_url(self.urls[0]))
        counts = []
        for u in self.urls:
            name = posixpath.basename(u)
            if name in known:
                counts.append(known[name])
                continue
            if _is_local(u) and not os.path.isfile(os.path.expanduser(_local_path(u))):
                raise DataError(f"shard {u!r} does not exist; check data.train.path (brace pattern "
                                f"{path!r}) or the shard set")
            counts.append(int(scan_shard(u)["samples"]))
        self.counts = np.asarray(counts, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        if self.offsets[-1] == 0:
            raise DataError(f"shards {path!r} hold no samples; write them with extra_scripts/write_shards.py")
        self.load_kwargs = {"min_size": min_size, "draft_size": draft_size}
        if max_pixels is not None:
            self.load_kwargs["max_pixels"] = max_pixels

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def decode(self, shard: int, key: str, parts: Optional[Dict[str, bytes]], reason: str
               ) -> Union[Tuple[Image.Image, int], BadSample]:
        """One tar sample -> (RGB image, label) or a BadSample named ``<shard url>:<key>``."""
        name = f"{self.urls[shard]}:{key}" if key else f"{self.urls[shard]}:#missing"
        if parts is None:
            return BadSample(name, reason or "shard_error")
        img_ext = next((e for e in IMAGE_EXTS if e in parts), None)
        if img_ext is None:
            return BadSample(name, "not_an_image")
        img = load_image(parts[img_ext], name, **self.load_kwargs)
        if isinstance(img, BadSample):
            return img
        return img, _label(parts)

    def __repr__(self) -> str:
        return f"ShardDataset({len(self.urls)} shards, {len(self)} samples, first {self.urls[0]!r})"


def _label(parts: Dict[str, bytes]) -> int:
    try:
        if "cls" in parts:
            return int(parts["cls"].decode("utf-8").strip())
        if "json" in parts:
            v = json.loads(parts["json"].decode("utf-8")).get("label", -1)
            return int(v) if v is not None else -1
    except (ValueError, AttributeError, TypeError):
        pass
    return -1
