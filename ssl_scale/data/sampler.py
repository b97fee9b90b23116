"""A resumable, world-size-aware batch sampler: each global batch is the same set of samples at any process count."""
from __future__ import annotations

from typing import Iterator, List

import torch

__all__ = ["ResumableShardSampler"]


class ResumableShardSampler:
    """Yields this rank's batches of dataset indices for one epoch, starting at batch `start_batch`.

    The epoch's order is one permutation of all indices (torch.Generator seeded with
    ``seed * 1_000_003 + epoch``), cut to a whole number of global batches of ``world_size * batch_size``
    (the remainder, fewer than one global batch, is dropped for this epoch; a later epoch's permutation
    drops different samples). Global batch j is ``perm[j*W*b : (j+1)*W*b]`` and rank r takes its slice
    ``[r*b : (r+1)*b]``, so batch j of all ranks together is exactly batch j of one process with batch
    W*b: the data seen per step does not depend on how the global batch is split over processes, and a
    resume at batch k (``start_batch=k``) continues exactly where an uninterrupted run would be.

    Args:
        num_samples: dataset length.
        rank, world_size: this process's position (plain ints; no torch.distributed here).
        batch_size: samples per process per step.
        seed, epoch: fix the permutation.
        start_batch: batches of this epoch already consumed (skipped).
        shuffle: False keeps file order (still sharded and truncated the same way).
    """

    def __init__(self, num_samples: int, rank: int, world_size: int, batch_size: int, seed: int, epoch: int = 0,
                 start_batch: int = 0, shuffle: bool = True):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank} world_size={world_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if num_samples < world_size * batch_size:
            raise ValueError(f"{num_samples} samples cannot fill one global batch of {world_size * batch_size} "
                             f"({batch_size} x {world_size} processes); lower the batch size or add data")
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        self.num_samples, self.rank, self.world_size = int(num_samples), int(rank), int(world_size)
        self.batch_size, self.seed, self.epoch = int(batch_size), int(seed), int(epoch)
        self.start_batch, self.shuffle = int(start_batch), bool(shuffle)

    def batches_per_epoch(self) -> int:
        """Steps in a full epoch (the same on every rank)."""
        return self.num_samples // (self.world_size * self.batch_size)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch)

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_samples)
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.num_samples, generator=g)

    def __iter__(self) -> Iterator[List[int]]:
        order = self._order()
        gb, b = self.world_size * self.batch_size, self.batch_size
        for j in range(self.start_batch, self.batches_per_epoch()):
            lo = j * gb + self.rank * b
            yield order[lo:lo + b].tolist()

    def __repr__(self) -> str:
        return (f"ResumableShardSampler(n={self.num_samples}, rank={self.rank}/{self.world_size}, "
                f"batch={self.batch_size}, seed={self.seed}, epoch={self.epoch}, start_batch={self.start_batch})")
