"""Tar shards: URL patterns, exactly-once over ranks x workers, exact resume, re-plan on another layout,
the same crops as the folder they were written from, bad members skipped and counted, and awkward ones
(CMYK, 16-bit, palette with transparency, RGBA, EXIF-rotated) converted and oriented."""
from __future__ import annotations

import io
import itertools
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from ssl_scale.data import BadDataCounter, DataError, FolderDataset, build_train_loader
from ssl_scale.data.multicrop import CropSpec, MultiCropTransform
from ssl_scale.data.prepare import folder_entries, scan_shards, write_shards
from ssl_scale.data.shards import ShardDataset, expand_braces, expand_urls, iter_tar_samples, open_url, write_manifest
from ssl_scale.data.stream import Layout, remaining_ranges

from tests.helpers import shared_photos

# Random crops and flips only (seeded per sample, like the full pipeline): colour jitter would only add time.
TF = MultiCropTransform([CropSpec(8, 1, 0.5, 1.0)], color_jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
SUBSET = 10  # every 10th photo of cifar10-mini/test: 200 photos, 20 a class


@pytest.fixture(scope="module")
def photos():
    root = shared_photos("cifar10-mini", "test")
    return str(root)


@pytest.fixture(scope="module")
def shards(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    entries = list(itertools.islice(folder_entries(photos), 0, None, SUBSET))
    stats = write_shards(photos, entries, str(out), max_samples=30)
    assert [s["samples"] for s in stats] == [30] * 6 + [20]
    return ShardDataset(str(out / "shard-{000000..000006}.tar")), entries


def _indices(ds, rank, world, workers, batch=4, epoch=0, start=0, plan=None, **kw):
    return [b["indices"].tolist() for b in build_train_loader(ds, TF, batch, rank, world, seed=3, epoch=epoch,
                                                              start_batch=start, num_workers=workers,
                                                              shuffle_buffer=16, plan=plan, **kw)]


def test_brace_patterns_expand_like_the_shell():
    assert expand_braces("a-{008..011}.tar") == ["a-008.tar", "a-009.tar", "a-010.tar", "a-011.tar"]
    assert expand_braces("{x,y}/s{0..1}.tar") == ["x/s0.tar", "x/s1.tar", "y/s0.tar", "y/s1.tar"]
    assert expand_urls("s3://b/p-{0..1}.tar file:///d/q.tar") == ["s3://b/p-0.tar", "s3://b/p-1.tar", "file:///d/q.tar"]
    with pytest.raises(DataError, match="backwards"):
        expand_braces("s-{5..2}.tar")


def test_every_sample_once_over_3_ranks_x_2_workers(shards):
    ds, _ = shards
    lay = Layout(3, 2, 4)
    per_rank = [_indices(ds, r, 3, 2) for r in range(3)]
    flat = [i for batches in per_rank for b in batches for i in b]
    assert all(len(batches) == lay.steps(len(ds)) == 16 for batches in per_rank)  # 200 // (6 x 4) = 8 a worker
    assert len(flat) == len(set(flat)) == 192 and set(flat) <= set(range(200))  # 8 = the stated drop-last tail
    assert flat != sorted(flat)  # shuffled
    again = [i for r in range(3) for b in _indices(ds, r, 3, 2, epoch=1) for i in b]
    assert len(set(again)) == 192 and again != flat  # another epoch, another order and another tail


def test_resume_mid_epoch_gives_exactly_the_remaining_batches(shards):
    ds, _ = shards
    full = list(build_train_loader(ds, TF, 4, 1, 2, seed=3, epoch=0, num_workers=2, shuffle_buffer=16))
    for k in (1, 5):  # odd k: the first batch after a resume comes from the rank's second worker
        resumed = list(build_train_loader(ds, TF, 4, 1, 2, seed=3, epoch=0, start_batch=k, num_workers=2,
                                          shuffle_buffer=16))
        assert len(resumed) == len(full) - k
        for a, b in zip(full[k:], resumed):
            assert torch.equal(a["indices"], b["indices"]) and torch.equal(a["crops"][0], b["crops"][0])


def test_another_layout_after_a_resume_loses_and_repeats_nothing(shards):
    ds, _ = shards
    old, k = Layout(2, 2, 4), 5
    seen = [i for r in range(2) for b in _indices(ds, r, 2, 2)[:k] for i in b]
    plan = remaining_ranges(ds, None, old, k, seed=3, epoch=0, shuffle=True, shuffle_buffer=16)
    rest = np.concatenate([np.arange(a, b) for a, b in np.reshape(plan, (-1, 2))])
    assert len(rest) == 200 - len(seen)  # the old drop-last tail is part of what remains
    after = [i for r in range(3) for b in _indices(ds, r, 3, 1, plan=plan) for i in b]
    both = seen + after
    assert len(both) == len(set(both))  # nothing twice
    assert 200 - len(both) < Layout(3, 1, 4).slots * 4  # nothing lost beyond the new layout's short tail


def test_unshuffled_shards_give_the_folder_crops_bit_for_bit(photos, tmp_path):
    entries = list(itertools.islice(folder_entries(photos), 0, None, 40))  # 50 photos
    sub = tmp_path / "sub"
    for rel, _ in entries:  # the same photos as a folder of its own, to compare with
        (sub / rel).parent.mkdir(parents=True, exist_ok=True)
        (sub / rel).write_bytes((Path(photos) / rel).read_bytes())
    write_shards(photos, entries, str(tmp_path / "sh"), max_samples=16)
    ds = ShardDataset(str(tmp_path / "sh" / "shard-{000000..000003}.tar"))
    folder = FolderDataset(sub)
    a = list(build_train_loader(folder, TF, 8, 0, 1, seed=5, epoch=2, shuffle=False))
    b = list(build_train_loader(ds, TF, 8, 0, 1, seed=5, epoch=2, shuffle=False))
    assert len(a) == len(b) == 6
    for x, y in zip(a, b):
        assert torch.equal(x["crops"][0], y["crops"][0]) and torch.equal(x["labels"], y["labels"])
        assert torch.equal(x["indices"], y["indices"])


def _member(tar, name, data):
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    tar.addfile(ti, io.BytesIO(data))


def test_bad_members_and_a_cut_shard_are_skipped_counted_and_named(photos, tmp_path):
    good = [p.read_bytes() for p in sorted((Path(photos) / "cat").iterdir())[:40]]
    with tarfile.open(tmp_path / "bad-0.tar", "w") as t:
        for i in range(20):
            _member(t, f"{i:04d}.jpg", good[i])
            _member(t, f"{i:04d}.cls", b"3")
        _member(t, "0020.jpg", b"")  # zero bytes
        _member(t, "0021.jpg", good[21][: len(good[21]) // 2])  # truncated JPEG
        _member(t, "0022.jpg", b"this is not an image")
        _member(t, "0023.txt", b"a caption without its image")
    with tarfile.open(tmp_path / "bad-1.tar", "w") as t:
        for i in range(16):
            _member(t, f"{100 + i:04d}.jpg", good[20 + i])
    with tarfile.open(tmp_path / "bad-1.tar") as t:  # the reference: which samples lie wholly before the cut
        ends = [m.offset_data + m.size for m in t.getmembers()]
    cut = (ends[9] + ends[10]) // 2  # through the middle of the 11th image
    (tmp_path / "bad-1.tar").write_bytes((tmp_path / "bad-1.tar").read_bytes()[:cut])
    write_manifest(str(tmp_path / "_shards.json"), [{"url": "bad-0.tar", "samples": 24, "bytes": 0},
                                                    {"url": "bad-1.tar", "samples": 16, "bytes": 0}])
    ds = ShardDataset(str(tmp_path / "bad-{0..1}.tar"))
    assert len(ds) == 40
    counter = BadDataCounter(max_bad_fraction=1.0, min_samples=1)
    n_good = 0
    for b in build_train_loader(ds, TF, 4, 0, 1, seed=0, epoch=0, num_workers=2, shuffle_buffer=8):
        counter.update(len(b["labels"]), b["bad"])
        n_good += len(b["labels"])
        assert all(lab == 3 for lab in b["labels"].tolist() if lab >= 0)
    assert n_good == 20 + 10 and counter.total_seen == 40
    assert counter.counts["zero_bytes"] == 1 and counter.counts["truncated"] >= 1
    assert counter.counts["not_an_image"] == 2
    assert counter.counts["truncated"] + counter.counts.get("shard_error", 0) == 1 + 6
    assert counter.sources[str(tmp_path / "bad-1.tar")] == 6
    strict = BadDataCounter(max_bad_fraction=0.1, min_samples=1)
    with pytest.raises(DataError, match=r"bad-1\.tar x6.*data\.max_bad_fraction"):
        strict.update(0, [(k, r) for k, r in counter_examples(counter)])
    scan = scan_shards([str(tmp_path / "bad-0.tar"), str(tmp_path / "bad-1.tar")], decode=True)
    assert scan[0]["samples"] == 24 and scan[0]["no_image"] == 1 and sum(scan[0]["bad"].values()) == 3
    assert scan[1]["samples"] == 11 and scan[1]["error"] == "shard_error"


def counter_examples(counter):
    """(key, reason) pairs rebuilt from a counter's per-source tallies, to feed a stricter counter."""
    return [(f"{src}:{i}", "shard_error") for src, n in counter.sources.items() for i in range(n)]


def _awkward_images():
    """name -> (encoded bytes, the expected RGB array from an independent reference)."""
    rng = np.random.default_rng(1)
    out = {}

    def enc(img, fmt, **kw):
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        return buf.getvalue()

    def pil_rgb(data):  # Pillow's own orientation and conversion
        return np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))

    cmyk = enc(Image.fromarray(rng.integers(0, 256, (20, 24, 4), dtype=np.uint8), "CMYK"), "JPEG", quality=95)
    out["cmyk.jpg"] = (cmyk, pil_rgb(cmyk))
    g16 = rng.integers(0, 65536, (18, 22), dtype=np.uint16)
    out["g16.png"] = (enc(Image.fromarray(g16), "PNG"), np.repeat(np.round(g16 / 257.0).astype(np.uint8)[..., None], 3, 2))
    pal = rng.integers(0, 4, (16, 16), dtype=np.uint8)
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)
    p = Image.fromarray(pal, "P")
    p.putpalette(colours.ravel().tolist() + [0] * (768 - 12))
    want = colours[pal].copy()
    want[pal == 0] = 255  # index 0 is transparent: white shows through
    out["pal.png"] = (enc(p, "PNG", transparency=0), want)
    rgba = rng.integers(0, 256, (14, 12, 4), dtype=np.uint8)
    a = rgba[..., 3:].astype(np.float64) / 255.0
    out["rgba.png"] = (enc(Image.fromarray(rgba, "RGBA"), "PNG"),
                       np.round(rgba[..., :3] * a + 255.0 * (1.0 - a)).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees clockwise
    ramp = np.zeros((20, 40, 3), dtype=np.uint8)
    ramp[..., 0] = np.linspace(0, 255, 40, dtype=np.uint8)[None, :]
    rot = enc(Image.fromarray(ramp), "JPEG", quality=95, exif=exif.tobytes())
    out["rot6.jpg"] = (rot, pil_rgb(rot))
    assert out["rot6.jpg"][1].shape == (40, 20, 3) and out["rot6.jpg"][1][0, 0, 0] < out["rot6.jpg"][1][-1, 0, 0]
    return out


def test_awkward_members_are_converted_oriented_and_bad_ones_counted(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    expected = _awkward_images()
    for name, (data, _) in expected.items():
        (src / name).write_bytes(data)
    jpg = expected["rot6.jpg"][0]
    skipped = {"zero.jpg": (b"", "zero_bytes"), "cut.jpg": (jpg[: len(jpg) // 2], "truncated"),
               "tiny.png": (_png_1x1(), "too_small"), "text.jpg": (b"not an image at all", "not_an_image")}
    for name, (data, _) in skipped.items():
        (src / name).write_bytes(data)
    entries = list(folder_entries(str(src)))  # sorted names; the project's own writer packs the bytes as they are
    write_shards(str(src), entries, str(tmp_path / "out"), max_samples=5)
    ds = ShardDataset(str(tmp_path / "out" / "shard-{000000..000001}.tar"))
    assert len(ds) == 9
    got = {}
    for s, url in enumerate(ds.urls):  # the members as the stream reads and decodes them
        with open_url(url) as f:
            for key, parts, reason in iter_tar_samples(f):
                got[entries[int(key)][0]] = (key, ds.decode(s, key, parts, reason))
    for name, (_, want) in expected.items():
        img, label = got[name][1]
        assert img.mode == "RGB" and label == -1, name
        assert np.array_equal(np.asarray(img), want), name
    for name, (_, reason) in skipped.items():
        key, bad = got[name]
        assert bad.reason == reason and bad.key.endswith(".tar:" + key), name  # named by shard and member
    counter = BadDataCounter(max_bad_fraction=1.0, min_samples=1)
    for b in build_train_loader(ds, TF, 1, 0, 1, seed=0, epoch=0, num_workers=0, shuffle_buffer=4):
        counter.update(len(b["labels"]), b["bad"])
    assert counter.total_seen == 9 and counter.total_bad == 4
    assert counter.counts == {r: 1 for _, r in skipped.values()}


def _png_1x1() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    return buf.getvalue()
