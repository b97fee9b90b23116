"""JPEG draft decode driven by the recipe: a real photograph is decoded smaller than full size when
data.decode.draft is on and the largest crop allows it, at full size when it is off, and never below the
largest crop, for every image-file source built by the trainer's builder."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_image

from ssl_scale.config import load_config
from ssl_scale.config.derived import draft_size
from ssl_scale.data.prepare import folder_entries, write_shards
from ssl_scale.data.shards import iter_tar_samples, open_url
from ssl_scale.train.build import build_train_dataset

FULL = (640, 427)  # china.jpg, a real photograph shipped with scikit-learn (w, h)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("photo")
    Image.fromarray(load_sample_image("china.jpg")).save(root / "china.jpg", quality=90)
    (root / "list.txt").write_text("china.jpg\n")
    write_shards(str(root), list(folder_entries(str(root))), str(root / "shards"))
    return root


def _decoded(photo_dir, source, crop, draft):
    path = {"folder": photo_dir, "filelist": photo_dir / "list.txt",
            "shards": photo_dir / "shards" / "shard-000000.tar"}[source]
    crops = f"[{{size: {crop}, count: 2, scale: [0.3, 1.0]}}, {{size: 32, count: 2, scale: [0.05, 0.3]}}]"
    cfg = load_config("quickstart", [f"data.train.source={source}", f"data.train.path={path}",
                                     f"data.crops={crops}", f"data.decode.draft={str(draft).lower()}"])
    ds = build_train_dataset(cfg.data)
    if source == "shards":
        with open_url(ds.urls[0]) as f:
            key, parts, reason = next(iter_tar_samples(f))
        img, _ = ds.decode(0, key, parts, reason)
    else:
        img, _ = ds[0]
    return img, draft_size(cfg.data)


@pytest.mark.parametrize("source", ["folder", "filelist", "shards"])
def test_draft_decodes_smaller_but_never_below_the_largest_crop(photo_dir, source):
    full, none = _decoded(photo_dir, source, 100, draft=False)
    assert full.size == FULL and none is None
    small, req = _decoded(photo_dir, source, 100, draft=True)
    assert req == (100, 100)
    # Pillow reduces by 1/2, 1/4 or 1/8; 1/4 (160 x 107) is the smallest that still covers 100 x 100
    assert small.size == (160, 107) and min(small.size) >= 100
    ref = np.asarray(full.resize(small.size, Image.BOX), dtype=np.float64)  # the same photo, only smaller
    assert np.abs(np.asarray(small, dtype=np.float64) - ref).mean() < 6
    big, _ = _decoded(photo_dir, source, 224, draft=True)  # 1/2 would be 320 x 214 < 224: full size
    assert big.size == FULL
