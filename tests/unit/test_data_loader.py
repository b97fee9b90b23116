"""Training loader: bitwise-equal batches across worker counts, rank layouts and resumes; bad-sample handling."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_scale.data import BadDataCounter, DataError, FolderDataset, build_train_loader
from ssl_scale.data.multicrop import CropSpec, MultiCropTransform

CROPS = [CropSpec(24, 2, 0.3, 1.0), CropSpec(12, 2, 0.1, 0.3)]


def _folder(root: Path, n: int, classes=("a", "b")) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / classes[i % len(classes)]
        d.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
        Image.fromarray(arr).save(d / f"{i:03d}.png")
    return root


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Decode/augment with one intra-op thread in the main process too, as DataLoader workers do: tiny
    crops gain nothing from threads, and on a shared, busy CPU the thread hand-offs cost ~30x."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return FolderDataset(_folder(tmp_path_factory.mktemp("imgs"), 24))


def _batches(ds, world=1, rank=0, batch=4, epoch=0, start=0, workers=0, seed=3):
    tf = MultiCropTransform(CROPS, blur_p=[1.0, 0.5], solarize_p=0.2)
    return list(build_train_loader(ds, tf, batch, rank, world, seed, epoch, start_batch=start, num_workers=workers))


def _by_index(batches):
    out = {}
    for b in batches:
        for row, i in enumerate(b["indices"].tolist()):
            out[i] = [c[row] for c in b["crops"]]
    return out


def _same(b1, b2):
    assert len(b1) == len(b2)
    for x, y in zip(b1, b2):
        assert torch.equal(x["indices"], y["indices"]) and torch.equal(x["labels"], y["labels"])
        assert len(x["crops"]) == len(y["crops"]) and all(torch.equal(p, q) for p, q in zip(x["crops"], y["crops"]))


def test_batch_layout(folder):
    batches = _batches(folder)
    assert len(batches) == 6
    b = batches[0]
    assert [tuple(c.shape) for c in b["crops"]] == [(4, 3, 24, 24)] * 2 + [(4, 3, 12, 12)] * 2
    assert b["labels"].dtype == torch.long and b["indices"].dtype == torch.long and b["bad"] == []
    assert sorted(i for x in batches for i in x["indices"].tolist()) == list(range(24))
    assert all(folder.labels[i] == lab for x in batches for i, lab in zip(x["indices"].tolist(), x["labels"].tolist()))


def test_workers_do_not_change_a_single_bit(folder):
    _same(_batches(folder, workers=0), _batches(folder, workers=2))


def test_resume_at_batch_k_equals_the_uninterrupted_tail(folder):
    full = _batches(folder, epoch=1)
    _same(_batches(folder, epoch=1, start=4), full[4:])
    assert not torch.equal(full[0]["crops"][0], _batches(folder, epoch=2)[0]["crops"][0])


def test_a_reused_persistent_loader_follows_set_epoch_and_set_start(folder):
    tf = MultiCropTransform(CROPS, blur_p=[1.0, 0.5], solarize_p=0.2)
    loader = build_train_loader(folder, tf, 4, 0, 1, 3, 0, num_workers=2, persistent_workers=True)
    assert loader.persistent_workers
    _same(list(loader), _batches(folder, epoch=0))
    loader.batch_sampler.set_epoch(1)
    loader.batch_sampler.set_start(2)
    assert loader.batch_sampler.state_dict() == {"epoch": 1, "batches_done": 2} and len(loader) == 4
    _same(list(loader), _batches(folder, epoch=1)[2:])  # same workers, new epoch's order and crops


def test_crops_do_not_depend_on_rank_layout(folder):
    single = _by_index(_batches(folder, batch=4))
    sharded = {}
    for r in range(2):
        sharded.update(_by_index(_batches(folder, world=2, rank=r, batch=2)))
    assert sharded.keys() == single.keys()
    for i in single:
        assert all(torch.equal(p, q) for p, q in zip(single[i], sharded[i]))


def test_loader_leaves_the_callers_rng_alone(folder):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    _batches(folder, workers=0)
    assert torch.equal(before, torch.get_rng_state())


def test_bad_files_are_skipped_and_reported(tmp_path):
    root = _folder(tmp_path, 13)
    (root / "a" / "zero.jpg").write_bytes(b"")
    (root / "b" / "text.jpg").write_text("hello, not a jpeg\n" * 5)
    good_png = (root / "a" / "000.png").read_bytes()
    (root / "b" / "cut.png").write_bytes(good_png[: len(good_png) // 2])
    ds = FolderDataset(root)
    assert len(ds) == 16
    batches = _batches(ds, batch=4)
    bad = sorted((Path(k).name, r) for b in batches for k, r in b["bad"])
    assert bad == [("cut.png", "truncated"), ("text.jpg", "not_an_image"), ("zero.jpg", "zero_bytes")]
    n_good = sum(len(b["labels"]) for b in batches)
    assert n_good == 13 and all(c.shape[0] == len(b["labels"]) for b in batches for c in b["crops"])
    counter = BadDataCounter(max_bad_fraction=0.5, min_samples=1)
    for b in batches:
        counter.update(len(b["labels"]), b["bad"])
    assert (counter.total_seen, counter.total_bad) == (16, 3)


class _Exploding:
    """A dataset whose odd samples raise inside the transform's input."""

    classes = ["x"]

    def __len__(self):
        return 8

    def key(self, i):
        return f"item{i}"

    def __getitem__(self, i):
        if i % 2:
            raise RuntimeError("boom")
        return Image.new("RGB", (32, 32), (i * 20, 0, 0)), 0


def test_any_exception_becomes_a_badsample_and_all_bad_batches_keep_shapes():
    tf = MultiCropTransform(CROPS)
    batches = list(build_train_loader(_Exploding(), tf, 1, 0, 1, 0, 0))
    bad = [b for b in batches if b["bad"]]
    assert len(bad) == 4 and all(b["bad"][0][1] == "error:RuntimeError" for b in bad)
    assert all(b["bad"][0][0].startswith("item") for b in bad)
    assert [tuple(c.shape) for c in bad[0]["crops"]] == [(0, 3, 24, 24)] * 2 + [(0, 3, 12, 12)] * 2
    assert bad[0]["labels"].shape == (0,)


def test_bad_data_counter_threshold_and_state():
    c = BadDataCounter(max_bad_fraction=0.1, min_samples=20)
    c.update(5, [("img/a.jpg", "truncated"), ("img/b.jpg", "truncated")])  # 2/7 but below min_samples
    c.update(10, [])
    assert (c.total_seen, c.total_bad) == (17, 2)
    with pytest.raises(DataError) as e:
        c.update(1, [(f"img/z{i}.jpg", "zero_bytes") for i in range(7)])
    msg = str(e.value)
    assert "zero_bytes x7" in msg and "img/z0.jpg" in msg and "img/z4.jpg" in msg and "img/z5.jpg" not in msg
    assert msg.index("zero_bytes") < msg.index("truncated") and "img/a.jpg" in msg and "max_bad_fraction" in msg
    fresh = BadDataCounter(0.1, min_samples=20)
    fresh.load_state_dict(c.state_dict())
    assert fresh.state_dict() == c.state_dict() and fresh.counts == {"truncated": 2, "zero_bytes": 7}
    assert all(isinstance(v, (int, list)) for v in c.state_dict().values())
    ok = BadDataCounter(0.5, min_samples=1)
    ok.update(3, [("k", "too_small")])  # 25% <= 50%
    with pytest.raises(ValueError):
        BadDataCounter(1.5)


def test_bad_data_counter_round_trips_through_dcp_into_a_fresh_counter(tmp_path):
    import warnings

    import torch.distributed.checkpoint as dcp

    from ssl_scale.checkpoint.manager import no_dist

    c = BadDataCounter(0.5)
    c.update(40, [("x/1.jpg", "truncated"), ("x/2.jpg", "error:OSError")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"bad_data": c.state_dict()}, checkpoint_id=str(tmp_path / "ck"), **no_dist(dcp.save))
        fresh = BadDataCounter(0.5)
        state = {"bad_data": fresh.state_dict()}
        dcp.load(state, checkpoint_id=str(tmp_path / "ck"), **no_dist(dcp.load))
    fresh.load_state_dict(state["bad_data"])
    assert fresh.state_dict() == c.state_dict()


def test_real_cifar10_mini_folder_loads(cifar_mini):
    root = cifar_mini / "test"
    ds = FolderDataset(root)
    assert len(ds) == 2000 and len(ds.classes) == 10 and "airplane" in ds.classes
    tf = MultiCropTransform([CropSpec(32, 2, 0.14, 1.0), CropSpec(16, 2, 0.05, 0.14)])
    loader = build_train_loader(ds, tf, 16, 0, 1, seed=0, epoch=0)
    assert len(loader) == 125
    b = next(iter(loader))
    assert b["bad"] == [] and [tuple(c.shape) for c in b["crops"]] == [(16, 3, 32, 32)] * 2 + [(16, 3, 16, 16)] * 2
    assert b["labels"].min() >= 0 and b["labels"].max() <= 9
    assert all(torch.isfinite(c).all() for c in b["crops"])
