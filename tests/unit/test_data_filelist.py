"""File lists: the memory-mapped index returns exactly the listed paths and labels, rebuilds when the
list changes, serves the same samples as the folder it was made from, and names bad lines and files."""
from __future__ import annotations

import os

import numpy as np
import pytest

from ssl_scale.data import DataError, FileListDataset, FolderDataset, build_train_loader
from ssl_scale.data.filelist import FileListIndex, index_dir_for, open_or_build_index
from ssl_scale.data.multicrop import CropSpec, MultiCropTransform
from ssl_scale.data.prepare import write_filelist

TF = MultiCropTransform([CropSpec(8, 1, 0.5, 1.0)], color_jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)


def test_index_returns_every_path_and_label(tmp_path):
    names = [f"d{i % 7}/é {i}.jpg" for i in range(2500)]  # non-ASCII and spaces survive
    labels = [i % 5 if i % 3 else -1 for i in range(2500)]
    lst = tmp_path / "list.txt"
    lst.write_text("# a comment\n" + "".join(f"{n}\t{lab}\n" if lab >= 0 else f"{n}\n" for n, lab in zip(names, labels)),
                   encoding="utf-8")
    idx = open_or_build_index(lst)
    assert len(idx) == 2500
    assert [idx.path(i) for i in range(2500)] == names
    assert [idx.label(i) for i in range(2500)] == labels
    assert isinstance(idx.offsets, np.memmap) and isinstance(idx.blob, np.memmap)


def test_npy_list_and_rebuild_when_the_list_changes(tmp_path):
    lst = tmp_path / "paths.npy"
    np.save(lst, np.array(["a.jpg", "b/c.png"]))
    assert [open_or_build_index(lst).path(i) for i in range(2)] == ["a.jpg", "b/c.png"]
    np.save(lst, np.array(["x.jpg", "y.jpg", "z.jpg"]))
    os.utime(lst, ns=(1, 1))  # a different modification time, whatever the clock's resolution
    idx = open_or_build_index(lst)
    assert len(idx) == 3 and idx.path(2) == "z.jpg" and idx.labels is None
    assert len(FileListIndex(index_dir_for(lst))) == 3  # the .idx folder opens on its own too


def test_a_bad_label_names_the_line(tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text("a.jpg\t1\nb.jpg\tcat\n")
    with pytest.raises(DataError, match=r"list\.txt:2: label 'cat'"):
        open_or_build_index(lst)
    with pytest.raises(DataError, match="does not exist"):
        FileListDataset(tmp_path / "missing.txt")


def test_list_from_a_folder_serves_the_folders_samples(cifar_mini, tmp_path):
    folder = cifar_mini / "test"
    n, idx_dir = write_filelist(str(folder), str(tmp_path / "test.txt"))
    fd, fl = FolderDataset(folder), FileListDataset(idx_dir)
    assert n == len(fd) == len(fl) == 2000
    assert [fl.key(i) for i in range(0, 2000, 97)] == [fd.key(i) for i in range(0, 2000, 97)]
    assert np.array_equal(fl.labels, fd.labels)
    a = next(iter(build_train_loader(fd, TF, 16, 1, 3, seed=4, epoch=1)))
    b = next(iter(build_train_loader(fl, TF, 16, 1, 3, seed=4, epoch=1)))
    assert a["indices"].tolist() == b["indices"].tolist() and (a["crops"][0] == b["crops"][0]).all()


def test_every_listed_sample_once_over_3_ranks_and_bad_files_counted(tmp_path):
    (tmp_path / "ok.png").write_bytes(b"")  # zero bytes
    lst = tmp_path / "l.txt"
    lst.write_text("".join(f"ok.png\n" if i == 7 else f"missing{i}.jpg\n" for i in range(30)))
    ds = FileListDataset(lst)
    seen, bad = [], []
    for r in range(3):
        for b in build_train_loader(ds, TF, 5, r, 3, seed=0, epoch=0, num_workers=0):
            seen += [k for k, _ in b["bad"]]
            bad += [reason for _, reason in b["bad"]]
    assert sorted(seen) == sorted(ds.key(i) for i in range(30))  # 30 = 2 global batches of 15: no tail
    assert bad.count("zero_bytes") == 1 and bad.count("io_error") == 29
