"""Two gloo processes read one shard set: together they see every sample of the epoch exactly once,
each process gets the batches a single process computes for its rank, and both run the same steps."""
from __future__ import annotations

import itertools

import pytest

from ssl_scale.data.prepare import folder_entries, write_shards

from tests.distributed._spawn import run_distributed
from tests.helpers import shared_photos


def _read_my_shards(pattern: str):
    import torch.distributed as dist

    from ssl_scale.data import build_train_loader
    from ssl_scale.data.shards import ShardDataset
    from tests.unit.test_data_shards import TF

    ds = ShardDataset(pattern)
    batches = [b["indices"].tolist() for b in build_train_loader(
        ds, TF, 4, dist.get_rank(), dist.get_world_size(), seed=11, epoch=0, num_workers=2, shuffle_buffer=10)]
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, batches)  # what the other rank read, through the process group
    return everyone


@pytest.mark.slow
def test_two_processes_read_each_sample_once(tmp_path):
    photos = shared_photos("cifar10-mini", "test")
    entries = list(itertools.islice(folder_entries(str(photos)), 3, None, 20))  # 100 photos
    write_shards(str(photos), entries, str(tmp_path), max_samples=12)  # 8 x 12 + 4
    pattern = str(tmp_path / "shard-{000000..000008}.tar")
    out = run_distributed(_read_my_shards, 2, pattern)
    assert out[0] == out[1]  # both ranks gathered the same picture
    per_rank = out[0]
    assert len(per_rank[0]) == len(per_rank[1]) == 12  # equal steps: 100 // (2 x 2 x 4) = 6 batches a worker
    flat = [i for batches in per_rank for b in batches for i in b]
    assert len(flat) == len(set(flat)) == 96 and set(flat) <= set(range(100))

    from ssl_scale.data import build_train_loader
    from ssl_scale.data.shards import ShardDataset
    from tests.unit.test_data_shards import TF

    ds = ShardDataset(pattern)
    for r in range(2):  # the single-process reference for each rank
        ref = [b["indices"].tolist() for b in build_train_loader(ds, TF, 4, r, 2, seed=11, epoch=0, num_workers=2,
                                                                 shuffle_buffer=10)]
        assert ref == per_rank[r]
