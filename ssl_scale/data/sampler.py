"""A resumable, world-size-aware batch sampler: each global batch is the same set of samples at any process count."""
from __future__ import annotations

from typing import Any, Dict, Iterator, List

import torch

__all__ = ["ResumableShardSampler"]


class ResumableShardSampler:
    """Yields this rank's batches of dataset indices for one epoch, starting at batch `start_batch`.

    The epoch's order is one permutation of all indices (torch.Generator seeded with
    ``seed * 1_000_003 + epoch``). With ``drop_last=True`` (the default) it is cut to a whole number of
    global batches of ``world_size * batch_size``: the remainder, fewer than one global batch, is dropped
    for this epoch (a later epoch's permutation drops different samples). With ``drop_last=False`` the
    last global batch is instead filled by wrapping around to the start of the permutation, so a few
    samples are seen twice but every rank still gets full, equal batches (DDP needs equal step counts).

    Global batch j is ``perm[j*W*b : (j+1)*W*b]`` and rank r takes its contiguous slice
    ``[r*b : (r+1)*b]`` (not the strided ``[r::W]``: both give the same global set per step, but the
    contiguous slice makes the ranks' batches, concatenated in rank order as all_gather does, equal to
    batch j of one process with batch W*b). So the data seen per step does not depend on how the global
    batch is split over processes, and a resume at batch k continues exactly where an uninterrupted run
    would be. Every sample is used exactly once per epoch across ranks, up to the dropped remainder.

    Position: ``set_epoch(e)`` selects the permutation (and restarts at batch 0); ``set_start(k)`` skips
    the first k batches of this rank (resume). The sampler does not count batches as it yields them:
    a DataLoader prefetches ahead of what the trainer consumed, so only the trainer knows the true
    position; it calls ``set_start`` and ``state_dict()`` records ``{"epoch", "batches_done"}``.

    Args:
        num_samples: dataset length.
        rank, world_size: this process's position (plain ints; no torch.distributed here).
        batch_size: samples per process per step.
        seed: fixes the permutation of every epoch (with the epoch).
        epoch: initial epoch (see set_epoch).
        start_batch: batches of this epoch already consumed (see set_start).
        shuffle: False keeps file order (still sharded and truncated the same way).
        drop_last: drop the incomplete last global batch (True) or wrap around to fill it (False).
    """

    def __init__(self, num_samples: int, rank: int, world_size: int, batch_size: int, seed: int, epoch: int = 0,
                 start_batch: int = 0, shuffle: bool = True, drop_last: bool = True):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank} world_size={world_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if num_samples < 1 or (drop_last and num_samples < world_size * batch_size):
            raise ValueError(f"{num_samples} samples cannot fill one global batch of {world_size * batch_size} "
                             f"({batch_size} x {world_size} processes); lower the batch size or add data")
        self.num_samples, self.rank, self.world_size = int(num_samples), int(rank), int(world_size)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.epoch = int(epoch)
        self.start_batch = 0
        self.set_start(start_batch)

    def set_epoch(self, epoch: int) -> None:
        """Select epoch `epoch`'s permutation and start it from its first batch."""
        self.epoch, self.start_batch = int(epoch), 0

    def set_start(self, batches_done: int) -> None:
        """Skip this rank's first `batches_done` batches of the current epoch (resume mid-epoch)."""
        if not 0 <= batches_done <= self.batches_per_epoch():
            raise ValueError(f"batches_done must be in [0, {self.batches_per_epoch()}], got {batches_done}")
        self.start_batch = int(batches_done)

    def state_dict(self) -> Dict[str, Any]:
        return {"epoch": self.epoch, "batches_done": self.start_batch}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.set_epoch(int(state["epoch"]))
        self.set_start(int(state["batches_done"]))

    def batches_per_epoch(self) -> int:
        """Steps in a full epoch (the same on every rank)."""
        gb = self.world_size * self.batch_size
        return self.num_samples // gb if self.drop_last else -(-self.num_samples // gb)

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            order = torch.arange(self.num_samples)
        else:
            g = torch.Generator()
            g.manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=g)
        total = self.batches_per_epoch() * self.world_size * self.batch_size
        if total > self.num_samples:  # drop_last=False: wrap around to fill the last global batch
            order = order[torch.arange(total) % self.num_samples]
        return order

    def __iter__(self) -> Iterator[List[int]]:
        order = self._order()
        gb, b = self.world_size * self.batch_size, self.batch_size
        for j in range(self.start_batch, self.batches_per_epoch()):
            lo = j * gb + self.rank * b
            yield order[lo:lo + b].tolist()

    def __repr__(self) -> str:
        return (f"ResumableShardSampler(n={self.num_samples}, rank={self.rank}/{self.world_size}, "
                f"batch={self.batch_size}, seed={self.seed}, epoch={self.epoch}, start_batch={self.start_batch}, "
                f"drop_last={self.drop_last})")
