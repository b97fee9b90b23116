"""ResumableShardSampler: exactly-once sharding, per-epoch order, world-size invariance, resume."""
from __future__ import annotations

import pytest

from ssl_scale.data.sampler import ResumableShardSampler

N, B, W = 100, 4, 3


def _epoch(world, batch, epoch=0, start=0, seed=5, n=N):
    return [list(ResumableShardSampler(n, r, world, batch, seed, epoch=epoch, start_batch=start))
            for r in range(world)]


def test_exactly_once_across_ranks_per_epoch():
    per_rank = _epoch(W, B)
    steps = N // (W * B)
    assert all(len(batches) == steps for batches in per_rank)
    assert len(ResumableShardSampler(N, 1, W, B, 5)) == steps == ResumableShardSampler(N, 0, W, B, 5).batches_per_epoch()
    flat = [i for batches in per_rank for b in batches for i in b]
    assert all(len(b) == B for batches in per_rank for b in batches)
    assert len(flat) == len(set(flat)) == steps * W * B  # the remainder (4 samples) is dropped
    assert set(flat) <= set(range(N))


def test_epochs_differ_and_are_reproducible():
    e0, e1 = _epoch(W, B, epoch=0), _epoch(W, B, epoch=1)
    assert e0 != e1
    assert e0 == _epoch(W, B, epoch=0)
    assert _epoch(W, B, seed=6) != e0


def test_one_process_with_the_global_batch_sees_the_same_sets():
    sharded = _epoch(W, B)
    single = _epoch(1, W * B)[0]
    assert len(single) == len(sharded[0])
    for j, big in enumerate(single):
        together = [i for r in range(W) for i in sharded[r][j]]
        assert together == big  # same samples, rank r holding slice [r*b:(r+1)*b]


def test_start_batch_resume_is_the_tail():
    full = _epoch(W, B, epoch=2)
    for k in (0, 1, 5, 8):
        resumed = _epoch(W, B, epoch=2, start=k)
        assert resumed == [f[k:] for f in full]
        assert len(ResumableShardSampler(N, 0, W, B, 5, epoch=2, start_batch=k)) == 8 - k


def test_no_shuffle_and_errors():
    assert list(ResumableShardSampler(10, 1, 2, 2, 0, shuffle=False)) == [[2, 3], [6, 7]]
    with pytest.raises(ValueError, match="cannot fill one global batch"):
        ResumableShardSampler(5, 0, 2, 3, 0)
    with pytest.raises(ValueError, match="rank"):
        ResumableShardSampler(10, 2, 2, 1, 0)


def test_set_epoch_set_start_and_state_dict():
    s = ResumableShardSampler(N, 1, W, B, 5)
    s.set_epoch(2)
    assert list(s) == _epoch(W, B, epoch=2)[1]
    s.set_start(5)
    assert list(s) == _epoch(W, B, epoch=2)[1][5:] and len(s) == 3
    assert s.state_dict() == {"epoch": 2, "batches_done": 5}
    fresh = ResumableShardSampler(N, 1, W, B, 5)
    fresh.load_state_dict(s.state_dict())
    assert list(fresh) == list(s)
    s.set_epoch(3)  # a new epoch starts at its first batch
    assert s.state_dict() == {"epoch": 3, "batches_done": 0} and list(s) == _epoch(W, B, epoch=3)[1]
    with pytest.raises(ValueError, match="batches_done"):
        s.set_start(9)


def test_no_drop_last_wraps_around_so_every_sample_is_seen():
    per_rank = [list(ResumableShardSampler(N, r, W, B, 5, drop_last=False)) for r in range(W)]
    assert all(len(b) == 9 for b in per_rank) and all(len(x) == B for b in per_rank for x in b)
    flat = [i for b in per_rank for x in b for i in x]
    assert set(flat) == set(range(N)) and len(flat) == 108  # 8 samples seen twice to fill the last batch
    assert list(ResumableShardSampler(3, 0, 2, 2, 0, shuffle=False, drop_last=False)) == [[0, 1]]
