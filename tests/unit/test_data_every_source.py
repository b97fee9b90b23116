"""Every indexed source kind (folder, file list, synthetic) through the training loader: each sample once
over 3 ranks x 2 workers, a mid-epoch resume equal to the uninterrupted run, and a resume on another
rank count that loses and repeats nothing. (Streamed shards: the same three in test_data_shards.py.)"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_scale.config import ConfigError, load_config
from ssl_scale.data import DATASETS, FileListDataset, FolderDataset, SyntheticDataset, build_train_loader
from ssl_scale.data.multicrop import CropSpec, MultiCropTransform
from ssl_scale.train.build import build_train_dataset

N = 30
TF = MultiCropTransform([CropSpec(8, 1, 0.5, 1.0)], color_jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)


def _folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for i in range(N):
        Image.fromarray(rng.integers(0, 256, (12, 14, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module", params=["folder", "filelist", "synthetic"])
def source(request, tmp_path_factory):
    kind = request.param
    if kind == "synthetic":
        return SyntheticDataset(num_samples=N, image_size=12)
    root = _folder(tmp_path_factory.mktemp(kind))
    if kind == "folder":
        return FolderDataset(root)
    lst = root / "list.txt"
    lst.write_text("".join(f"{i:03d}.png\n" for i in range(N)))
    return FileListDataset(lst)


def _batches(ds, rank, world, batch=4, workers=2, start=0, epoch=0):
    return list(build_train_loader(ds, TF, batch, rank, world, seed=5, epoch=epoch, start_batch=start,
                                   num_workers=workers))


def _indices(batches):
    return [i for b in batches for i in b["indices"].tolist()]


def test_every_sample_once_over_3_ranks_x_2_workers(source):
    seen = [_indices(_batches(source, r, 3)) for r in range(3)]
    flat = [i for s in seen for i in s]
    assert [len(s) for s in seen] == [8, 8, 8]  # 30 // 12 = 2 global batches of 3 ranks x 4
    assert len(flat) == len(set(flat)) == 24 and set(flat) <= set(range(N))  # 6 = the stated drop-last tail
    assert flat != sorted(flat)  # shuffled


def test_resume_mid_epoch_equals_the_uninterrupted_run(source):
    full = _batches(source, 1, 2, batch=3, epoch=1)  # 5 batches a rank, from its 2 workers in turn
    resumed = _batches(source, 1, 2, batch=3, epoch=1, start=3)  # odd: the resumed run starts on worker 0
    assert len(resumed) == len(full) - 3
    for a, b in zip(full[3:], resumed):
        assert torch.equal(a["indices"], b["indices"]) and torch.equal(a["crops"][0], b["crops"][0])


def test_resume_on_another_rank_count_loses_and_repeats_nothing(source):
    k = 1  # global batches of 12 done by 2 ranks x 6 before the stop; then 3 ranks x 4 (same global batch)
    # workers only split batches (tested above), so one process per rank keeps this test quick
    full = [_batches(source, r, 2, batch=6, workers=0) for r in range(2)]
    before = [i for r in range(2) for i in _indices(full[r][:k])]
    after = [i for r in range(3) for i in _indices(_batches(source, r, 3, batch=4, workers=0, start=k))]
    uninterrupted = [i for r in range(2) for i in _indices(full[r])]
    assert len(before + after) == len(set(before + after)) == 24  # nothing twice
    assert sorted(before + after) == sorted(uninterrupted)  # and nothing the uninterrupted epoch had is lost


def test_synthetic_images_are_a_function_of_the_index_only():
    a, b = SyntheticDataset(num_samples=50, image_size=20), SyntheticDataset(num_samples=50, image_size=20)
    x = [np.asarray(a[i][0]) for i in (7, 3, 7)]
    assert x[0].shape == (20, 20, 3) and x[0].dtype == np.uint8 and a[7][1] == -1 and len(a) == 50
    assert np.array_equal(x[0], x[2]) and np.array_equal(x[0], np.asarray(b[7][0]))  # any order, any instance
    assert not np.array_equal(x[0], x[1]) and x[0].std() > 10  # distinct, not flat
    with pytest.raises(IndexError):
        a[50]


def test_synthetic_from_a_recipe_and_its_bad_keys(tmp_path, capsys):
    cfg = load_config("quickstart", ["data.train.source=synthetic", "data.train.num_samples=40",
                                     "data.train.image_size=48"])
    ds = build_train_dataset(cfg.data)
    assert DATASETS.get("synthetic") is SyntheticDataset and len(ds) == 40 and ds[0][0].size == (48, 48)
    for key, value, msg in [("num_samples", 0, "at least 1 image"), ("image_size", 1, "at least 2 pixels")]:
        with pytest.raises(ConfigError, match=f"'data.train.{key}': must be {msg}") as e:
            load_config("quickstart", ["data.train.source=synthetic", f"data.train.{key}={value}"])
        assert "\n" not in str(e.value)
    from ssl_scale.cli import main

    assert main(["list", "datasets"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.split()[:1] == ["synthetic"])
    assert "no disk reads" in line
