"""Pretraining from shards written by the project's script: the same learning as from the folder they
were written from (same samples, same crops, bitwise), and exact resume mid-epoch from a checkpoint."""
from __future__ import annotations

import itertools
import json
import logging

import pytest
import torch

from ssl_scale.data.prepare import folder_entries, write_shards
from ssl_scale.train.trainer import Trainer

from tests.helpers import shared_photos, tiny_config

N = 48  # photos: 3 global batches of 16


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    photos = shared_photos("cifar10-mini", "test")
    root = tmp_path_factory.mktemp("photos")
    entries = list(itertools.islice(folder_entries(str(photos)), 0, None, 2000 // N))[:N]
    for rel, _ in entries:  # the same photos as a folder of their own
        (root / "folder" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "folder" / rel).write_bytes((photos / rel).read_bytes())
    write_shards(str(photos), entries, str(root / "shards"), max_samples=10)
    return root / "folder", str(root / "shards" / "shard-{000000..000004}.tar")


def _train(run_dir, steps, *overrides):
    t = Trainer(tiny_config(run_dir, f"train.max_steps={steps}", "run.checkpoint_every=2", *overrides))
    t.fit()
    return t


def _losses(run_dir):
    return [json.loads(l)["loss"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_shards_train_exactly_like_their_folder(data, tmp_path):
    folder, shards = data
    a = _train(tmp_path / "folder", 3, "data.train.source=folder", f"data.train.path={folder}", "data.train.shuffle=false")
    b = _train(tmp_path / "shards", 3, "data.train.source=shards", f"data.train.path={shards}", "data.train.shuffle=false")
    assert _losses(tmp_path / "folder") == _losses(tmp_path / "shards")
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_shard_run_resumes_exactly_and_survives_a_new_worker_count(data, tmp_path, caplog):
    _, shards = data
    src = ["data.train.source=shards", f"data.train.path={shards}", "data.train.shuffle_buffer=8"]
    full = _train(tmp_path / "full", 4, *src)  # 4 steps: into the second epoch (3 steps an epoch)
    _train(tmp_path / "split", 2, *src)
    resumed = _train(tmp_path / "split", 4, *src)
    assert resumed.resumed_from.name == "step_000000002"
    assert _losses(tmp_path / "full") == _losses(tmp_path / "split")
    sa, sb = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)

    # Batches of 8: 6 steps an epoch on 1 reader. After 2 steps, 32 photos of epoch 0 are left: 2 readers
    # take 2 batches each (4 re-planned steps), then epoch 1 starts. (Step 2, not 1: a checkpoint written
    # while the prototypes are still frozen has no momentum for them yet.)
    small = [*src, "data.batch_size=8"]
    _train(tmp_path / "relayout", 2, *small)
    with caplog.at_level(logging.WARNING, logger="ssl_scale"):
        t = _train(tmp_path / "relayout", 7, *small, "data.num_workers=2")
    assert "re-planned" in caplog.text and (t.step, t.epoch) == (7, 1)
