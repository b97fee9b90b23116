"""Streaming shards to ranks x workers: the epoch plan, its split into equal slots, a bounded block
shuffle, exact resume with the same layout and a lossless re-plan with another one.

Coordinates. An epoch concatenates the shards in its own order (a seeded permutation of the shard
list): "epoch position" p is a sample's place in that concatenation. The epoch's *plan* is a list of
ranges of epoch positions still to be used ([0, N) for a fresh epoch); "plan position" v numbers the
samples of those ranges in order. The plan is cut into ``slots = world_size x workers`` equal,
contiguous runs of P plan positions (P a multiple of the batch size; the remainder, fewer than
slots x batch samples, is the epoch's drop-last tail, different every epoch). Slot ``rank * workers + w``
is read by worker w of that rank, shard after shard, mostly sequentially.

Shuffle. Each slot is emitted in blocks of ``shuffle_buffer`` samples, each block in a seeded random
order: the encoded bytes of one block are held in memory (as a shuffle buffer would be), and the
order at any point is a pure function of the position, so a resume re-reads at most one block.

Batches. A rank's loader gets batch j from its worker ``j % workers`` (PyTorch's DataLoader takes
batches from its workers in turn); every slot holds the same whole number of batches, so batch j of
a rank and the samples in it are known from j alone: the trainer's step count is the exact position.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ssl_scale.data.decode import BadSample, DataError
from ssl_scale.data.loader import collate_multicrop, seeded_crops
from ssl_scale.data.shards import ShardDataset, iter_tar_samples, open_url

__all__ = ["Layout", "EpochPlan", "ShardStream", "build_stream_loader", "stream_steps", "remaining_ranges"]


@dataclass(frozen=True)
class Layout:
    """How an epoch is split: processes, data-loader workers per process (0 counts as 1), batch size."""

    world_size: int
    workers: int
    batch_size: int

    def __post_init__(self):
        object.__setattr__(self, "workers", max(1, int(self.workers)))

    @property
    def slots(self) -> int:
        return self.world_size * self.workers

    def per_slot(self, plan_len: int) -> int:
        """Samples each slot reads: the most whole batches that every slot can get."""
        return (plan_len // (self.slots * self.batch_size)) * self.batch_size

    def steps(self, plan_len: int) -> int:
        """Batches per rank in an epoch of `plan_len` samples."""
        return self.per_slot(plan_len) // self.batch_size * self.workers

    def consumed(self, batches_done: int, worker: int) -> int:
        """Samples worker `worker` of a rank has delivered once the rank has used `batches_done` batches."""
        return max(0, -(-(batches_done - worker) // self.workers)) * self.batch_size


def _rng(seed: int, epoch: int, salt: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(seed) >> 32, int(epoch), int(salt)])


class EpochPlan:
    """One epoch's shard order and the ranges of epoch positions it uses (see the module docstring).

    Args:
        counts: samples per shard, in listed order.
        seed, epoch: fix the shard order.
        shuffle: False keeps the listed shard order.
        ranges: (k, 2) epoch-position ranges [a, b) still to use; None = the whole epoch.
    """

    def __init__(self, counts: np.ndarray, seed: int, epoch: int, shuffle: bool = True,
                 ranges: Optional[np.ndarray] = None):
        counts = np.asarray(counts, dtype=np.int64)
        self.order = _rng(seed, epoch, 0).permutation(len(counts)) if shuffle else np.arange(len(counts))
        self.cum = np.concatenate([[0], np.cumsum(counts[self.order])]).astype(np.int64)
        self.listed_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        n = int(self.cum[-1])
        self.ranges = np.array([[0, n]], dtype=np.int64) if ranges is None else np.asarray(ranges, np.int64).reshape(-1, 2)
        self.range_cum = np.concatenate([[0], np.cumsum(self.ranges[:, 1] - self.ranges[:, 0])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.range_cum[-1])

    def positions(self, lo: int, hi: int) -> np.ndarray:
        """Epoch positions of plan positions [lo, hi)."""
        v = np.arange(lo, hi, dtype=np.int64)
        r = np.searchsorted(self.range_cum, v, side="right") - 1
        return self.ranges[r, 0] + v - self.range_cum[r]

    def locate(self, pos: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Epoch positions -> (listed shard index, sample index in the shard, sample identity)."""
        k = np.searchsorted(self.cum, pos, side="right") - 1
        shard = self.order[k]
        member = pos - self.cum[k]
        return shard, member, self.listed_offsets[shard] + member

    def to_ranges(self, lo: int, hi: int) -> List[Tuple[int, int]]:
        """Plan positions [lo, hi) as ranges of epoch positions."""
        out = []
        r = int(np.searchsorted(self.range_cum, lo, side="right") - 1)
        while lo < hi and r < len(self.ranges):
            a, b = int(self.ranges[r, 0]), int(self.ranges[r, 1])
            start = a + lo - int(self.range_cum[r])
            end = min(b, start + hi - lo)
            out.append((start, end))
            lo += end - start
            r += 1
        return out


def block_order(seed: int, epoch: int, block_start: int, n: int, shuffle: bool) -> np.ndarray:
    """Emission order of one block of n samples whose first plan position is `block_start`."""
    return _rng(seed, epoch, 1 + block_start).permutation(n) if shuffle and n > 1 else np.arange(n)


def stream_steps(dataset: ShardDataset, world_size: int, batch_size: int, num_workers: int,
                 plan: Optional[Sequence[int]] = None) -> int:
    """Batches per rank in an epoch (the re-planned remainder of one when `plan` is given)."""
    n = len(dataset) if not plan else int(np.sum(np.diff(np.asarray(plan, np.int64).reshape(-1, 2), axis=1)))
    return Layout(world_size, num_workers, batch_size).steps(n)


def remaining_ranges(dataset: ShardDataset, plan: Optional[Sequence[int]], old: Layout, batches_done: int,
                     seed: int, epoch: int, shuffle: bool, shuffle_buffer: int) -> List[int]:
    """What an epoch has not yet delivered after `batches_done` batches per rank under layout `old`.

    Returns the epoch-position ranges (flattened [a0, b0, a1, b1, ...]) of every sample no rank has
    used yet, the old epoch's drop-last tail included: a run on another layout reads exactly these,
    so no sample of the epoch is lost or seen twice.
    """
    ep = EpochPlan(dataset.counts, seed, epoch, shuffle, None if not plan else np.asarray(plan).reshape(-1, 2))
    per, s_buf = old.per_slot(len(ep)), max(1, int(shuffle_buffer))
    pieces: List[Tuple[int, int]] = []
    for slot in range(old.slots):
        base = slot * per
        c = old.consumed(batches_done, slot % old.workers)
        blk = (c // s_buf) * s_buf
        if c > blk:  # a started block: the samples it has not emitted yet, one by one
            n = min(s_buf, per - blk)
            left = np.sort(block_order(seed, epoch, base + blk, n, shuffle)[c - blk:])
            for j in left.tolist():
                pieces += ep.to_ranges(base + blk + j, base + blk + j + 1)
            blk += n
        pieces += ep.to_ranges(base + blk, base + per)
    pieces += ep.to_ranges(old.slots * per, len(ep))
    merged: List[List[int]] = []
    for a, b in sorted(p for p in pieces if p[1] > p[0]):
        if merged and merged[-1][1] == a:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    return [x for ab in merged for x in ab]


class _ShardCursor:
    """Reads samples by (shard, index), keeping the current tar open while reads are sequential."""

    def __init__(self, dataset: ShardDataset):
        self.ds = dataset
        self.shard, self.next, self.it, self.f = -1, 0, None, None
        self.broken: Dict[int, int] = {}  # shard -> first sample index that could not be reached

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
        self.shard, self.it, self.f = -1, None, None

    def get(self, shard: int, member: int) -> Tuple[str, Optional[Dict[str, bytes]], str]:
        if member >= self.broken.get(shard, 1 << 62):
            return "", None, "shard_error"
        if shard != self.shard or member != self.next:
            self.close()
            try:
                self.f = open_url(self.ds.urls[shard])
            except (OSError, ValueError):
                self.broken[shard] = 0
                return "", None, "shard_error"
            self.shard, self.it = shard, iter_tar_samples(self.f, start=member)
        self.next = member + 1
        item = next(self.it, ("", None, "shard_error"))
        if not item[0]:  # the tar ended or broke before the count its manifest gives
            self.broken[shard] = member
            self.close()
        return item


class ShardStream(IterableDataset):
    """This rank's samples of one epoch as (crops, label, identity) or BadSample, for DataLoader(batch_size=b).

    Built per epoch; every DataLoader worker reads its own slot (see the module docstring), starting
    where batch `start_batch` of the rank begins.
    """

    def __init__(self, dataset: ShardDataset, transform, layout: Layout, rank: int, seed: int, epoch: int,
                 start_batch: int = 0, shuffle: bool = True, shuffle_buffer: int = 1000,
                 plan: Optional[Sequence[int]] = None):
        self.ds, self.transform, self.layout = dataset, transform, layout
        self.rank, self.seed, self.epoch, self.start_batch = int(rank), int(seed), int(epoch), int(start_batch)
        self.shuffle, self.buffer = bool(shuffle), max(1, int(shuffle_buffer))
        self.plan = None if not plan else np.asarray(plan, np.int64).reshape(-1, 2)

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        lay = self.layout
        # DataLoader worker 0 serves the rank's next batch, so it plays logical worker start_batch % workers.
        w = ((info.id if info is not None else 0) + self.start_batch) % lay.workers
        ep = EpochPlan(self.ds.counts, self.seed, self.epoch, self.shuffle, self.plan)
        per = lay.per_slot(len(ep))
        base = (self.rank * lay.workers + w) * per
        skip = lay.consumed(self.start_batch, w)
        cursor = _ShardCursor(self.ds)
        try:
            for blk in range((skip // self.buffer) * self.buffer, per, self.buffer):
                n = min(self.buffer, per - blk)
                shard, member, ident = ep.locate(ep.positions(base + blk, base + blk + n))
                raw = [cursor.get(int(s), int(m)) for s, m in zip(shard, member)]
                for j in block_order(self.seed, self.epoch, base + blk, n, self.shuffle)[max(0, skip - blk):]:
                    item = self.ds.decode(int(shard[j]), *raw[j])
                    if isinstance(item, BadSample):
                        yield item
                        continue
                    try:
                        yield seeded_crops(self.transform, item[0], self.seed, self.epoch, int(ident[j])), \
                            item[1], int(ident[j])
                    except Exception as e:  # noqa: BLE001 - one sample's failure is counted, not fatal
                        yield BadSample(f"{self.ds.urls[int(shard[j])]}:{raw[j][0]}", f"error:{type(e).__name__}")
        finally:
            cursor.close()


def build_stream_loader(dataset: ShardDataset, transform, batch_size: int, rank: int, world_size: int, seed: int,
                        epoch: int, start_batch: int = 0, num_workers: int = 0, pin_memory: bool = False,
                        prefetch_factor: Optional[int] = 2, shuffle: bool = True, shuffle_buffer: int = 1000,
                        plan: Optional[Sequence[int]] = None) -> DataLoader:
    """This rank's loader over a shard stream, positioned at batch `start_batch` of `epoch`.

    Batch j holds the same samples with the same crops for any resume point k <= j, given the same
    world_size and num_workers. Build one per epoch.

    Args:
        plan: the epoch's remaining ranges after a re-plan (see remaining_ranges); None = whole epoch.
        shuffle_buffer: samples per shuffled block (memory: that many encoded images per worker).
        Others: as for build_train_loader.
    """
    layout = Layout(world_size, num_workers, batch_size)
    if not plan and stream_steps(dataset, world_size, batch_size, num_workers) < 1:  # a re-planned rest may be empty
        raise DataError(f"{len(dataset)} samples in {len(dataset.urls)} shards cannot give each of the "
                        f"{layout.slots} readers ({world_size} processes x {layout.workers} workers) one batch of "
                        f"{batch_size}; lower data.batch_size or data.num_workers, or add shards")
    stream = ShardStream(dataset, transform, layout, rank, seed, epoch, start_batch, shuffle, shuffle_buffer, plan)
    kwargs: Dict[str, Any] = {}
    if num_workers > 0:
        kwargs["prefetch_factor"] = prefetch_factor
    return DataLoader(stream, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_multicrop(transform),
                      pin_memory=pin_memory, **kwargs)
