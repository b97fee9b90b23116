"""The training DataLoader: sharded resumable batches, per-sample seeded augmentation, bad-sample accounting."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader

from ssl_scale.data.decode import BadSample, DataError
from ssl_scale.data.sampler import ResumableShardSampler

__all__ = ["build_train_loader", "SeededTransformDataset", "collate_multicrop", "BadDataCounter", "sample_seed",
           "seeded_crops", "steps_per_epoch"]

_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64 finaliser: a fixed, well-spread 64-bit mix (Python's hash() is salted per process)."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of dataset sample `index` in `epoch`: a pure function of the three ints."""
    h = _mix64(int(seed) * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019)
    h = _mix64(h ^ (int(epoch) * 0xD1B54A32D192ED03 + 0x8CB92BA72F3D8DD7))
    h = _mix64(h ^ (int(index) * 0xABC98388FB8FAC03 + 0x27D4EB2F165667C5))
    return h >> 1  # < 2**63: valid for torch.manual_seed on every version


def seeded_crops(transform, img, seed: int, epoch: int, index: int) -> List[torch.Tensor]:
    """transform(img) with the global torch generator seeded from (seed, epoch, index), then restored."""
    gen = torch.default_generator
    saved = gen.get_state()
    gen.manual_seed(sample_seed(seed, epoch, index))
    try:
        crops = transform(img)
    finally:
        gen.set_state(saved)
    return [crops] if isinstance(crops, torch.Tensor) else list(crops)


class SeededTransformDataset:
    """dataset[i] -> (crops, label, i), or a BadSample; the augmentation is seeded from (seed, epoch, i).

    ``i`` may also be ``(epoch, i)``, which overrides the epoch given at construction (see _EpochTagged).

    Why this is exact: torchvision v2 transforms draw every random number from the global torch CPU
    generator, and nothing else touches that generator between seeding it and the end of the transform
    call. Each sample therefore gets the same crops whichever process decodes it (the main process or
    any worker), in whatever order, with any number of ranks, and after a resume. The generator's state
    is saved and restored around the call, so the caller's RNG stream (e.g. the trainer's, when
    num_workers=0) is left exactly as it was. A per-call torch.Generator is not an option (v2 transforms
    take none), and seeding per sample rather than per worker is what makes the crops independent of
    num_workers, of the rank layout and of the resume point.
    Why not ``fork_rng`` + ``torch.manual_seed``: the latter also seeds every accelerator backend and
    costs ~110 us a call here; seeding and restoring ``torch.default_generator`` directly costs ~2 us.

    Any exception while loading or transforming one sample becomes ``BadSample(key, "error:<Type>")``
    so one broken file never stops a run (BadDataCounter decides when there are too many).
    """

    def __init__(self, dataset, transform, seed: int, epoch: int):
        self.dataset, self.transform = dataset, transform
        self.seed, self.epoch = int(seed), int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def key(self, i: int) -> str:
        try:
            return str(self.dataset.key(i))
        except Exception:  # noqa: BLE001 - a key is for messages only
            return f"index{i}"

    def __getitem__(self, i):
        epoch = self.epoch
        if isinstance(i, tuple):  # (epoch, index) from _EpochTagged: a reused loader's workers get the epoch
            epoch, i = i
        try:
            item = self.dataset[i]
            if isinstance(item, BadSample):
                return item
            img, label = item
            return seeded_crops(self.transform, img, self.seed, epoch, i), int(label), int(i)
        except Exception as e:  # noqa: BLE001 - reported per sample, counted by BadDataCounter
            return BadSample(self.key(i), f"error:{type(e).__name__}")


def _empty_crops(transform) -> List[torch.Tensor]:
    """Zero-row crop tensors of the right shapes for a batch whose samples were all bad."""
    specs = getattr(transform, "crops", None)
    if not specs:
        return []
    return [torch.empty(0, 3, s.size, s.size) for s in specs for _ in range(s.count)]


class collate_multicrop:  # noqa: N801 - used like a function
    """List of samples -> {"crops": [Tensor (b, 3, s, s)] in crop order, "labels", "indices", "bad"}.

    BadSamples are dropped from the tensors and listed in ``bad`` as (key, reason), so the batch may
    hold fewer than batch_size samples.
    """

    def __init__(self, transform=None):
        self.transform = transform

    def __call__(self, samples: Sequence[Any]) -> Dict[str, Any]:
        good = [s for s in samples if not isinstance(s, BadSample)]
        bad = [(s.key, s.reason) for s in samples if isinstance(s, BadSample)]
        if good:
            n_crops = len(good[0][0])
            crops = [torch.stack([s[0][k] for s in good]) for k in range(n_crops)]
        else:
            crops = _empty_crops(self.transform)
        return {"crops": crops,
                "labels": torch.tensor([s[1] for s in good], dtype=torch.long),
                "indices": torch.tensor([s[2] for s in good], dtype=torch.long),
                "bad": bad}


class _EpochTagged:
    """Batch sampler adaptor: yields [(epoch, i), ...] so persistent workers always see the current epoch.

    With ``persistent_workers=True`` the workers keep the dataset object they were started with, so an
    epoch stored on it would go stale when the loader is reused; tagging each index with the sampler's
    epoch at iteration time keeps every sample's augmentation seed right. ``set_epoch`` / ``set_start`` /
    ``state_dict`` / ``load_state_dict`` / ``batches_per_epoch`` pass through to the sampler.
    """

    def __init__(self, sampler: ResumableShardSampler):
        self.sampler = sampler

    def __iter__(self):
        epoch = self.sampler.epoch
        for batch in self.sampler:
            yield [(epoch, i) for i in batch]

    def __len__(self) -> int:
        return len(self.sampler)

    def __getattr__(self, name):  # set_epoch, set_start, state_dict, ...
        if name == "sampler":
            raise AttributeError(name)
        return getattr(self.sampler, name)


def build_train_loader(dataset, transform, batch_size: int, rank: int, world_size: int, seed: int, epoch: int,
                       start_batch: int = 0, num_workers: int = 0, pin_memory: bool = False,
                       prefetch_factor: Optional[int] = 2, persistent_workers: bool = False,
                       drop_last: bool = True, shuffle: bool = True, shuffle_buffer: int = 1000,
                       plan: Optional[Sequence[int]] = None) -> DataLoader:
    """This rank's training loader, positioned at batch `start_batch` of `epoch`.

    Build one per epoch, or keep one (``persistent_workers=True`` keeps its worker processes alive) and
    call ``loader.batch_sampler.set_epoch(e)`` (then ``set_start(k)`` to resume) before iterating it again.

    Args:
        dataset: map-style source returning (PIL image, label) or a BadSample, with ``key(i)``.
        transform: image -> list of crop tensors (e.g. MultiCropTransform).
        batch_size: samples per process per step.
        rank, world_size: this process's position, as plain ints.
        seed, epoch: fix both the sample order and every sample's augmentation.
        start_batch: batches of this epoch already trained on (resume).
        num_workers, pin_memory, prefetch_factor, persistent_workers: as for torch DataLoader (the last two
            only apply with workers).
        drop_last: see ResumableShardSampler (streamed shards always drop their short tail).
        shuffle: False keeps the listed order (files, or shards and their members).
        shuffle_buffer, plan: streamed shards only (see stream.build_stream_loader).

    Returns:
        a DataLoader yielding ``collate_multicrop`` dicts; batch j is identical for any num_workers and
        for a run resumed at any batch k <= j.
    """
    if getattr(dataset, "streaming", False):
        from ssl_scale.data.stream import build_stream_loader  # stream builds on this module

        return build_stream_loader(dataset, transform, batch_size, rank, world_size, seed, epoch, start_batch,
                                   num_workers, pin_memory, prefetch_factor, shuffle, shuffle_buffer, plan)
    sampler = ResumableShardSampler(len(dataset), rank, world_size, batch_size, seed, epoch=epoch,
                                    start_batch=start_batch, shuffle=shuffle, drop_last=drop_last)
    kwargs: Dict[str, Any] = {}
    if num_workers > 0:
        kwargs["prefetch_factor"] = prefetch_factor
        kwargs["persistent_workers"] = persistent_workers
    # Our own generator for the workers' base seed: a DataLoader otherwise draws it from the global
    # RNG at every iter(), silently shifting the trainer's random stream once per epoch.
    g = torch.Generator()
    g.manual_seed(sample_seed(seed, epoch, -1))
    return DataLoader(SeededTransformDataset(dataset, transform, seed, epoch), batch_sampler=_EpochTagged(sampler),
                      num_workers=num_workers, collate_fn=collate_multicrop(transform), pin_memory=pin_memory,
                      generator=g, **kwargs)


def steps_per_epoch(dataset, world_size: int, batch_size: int, num_workers: int,
                    plan: Optional[Sequence[int]] = None) -> int:
    """Batches per process in one epoch of `dataset` (streamed shards depend on the worker count too)."""
    if getattr(dataset, "streaming", False):
        from ssl_scale.data.stream import stream_steps

        return stream_steps(dataset, world_size, batch_size, num_workers, plan)
    return len(dataset) // (world_size * batch_size)


class BadDataCounter:
    """Counts unusable samples by reason and stops the run once too large a fraction is bad.

    The check starts after ``min_samples`` samples so a few bad files at the start do not stop a run.

    Args:
        max_bad_fraction: the largest tolerated bad / seen ratio (0 stops at the first bad sample).
        min_samples: samples to see before the ratio is checked.
    """

    MAX_EXAMPLES = 5

    def __init__(self, max_bad_fraction: float, min_samples: int = 100):
        if not 0 <= max_bad_fraction <= 1:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        self.max_bad_fraction = float(max_bad_fraction)
        self.min_samples = int(min_samples)
        self.total_seen = 0
        self.total_bad = 0
        self.counts: Dict[str, int] = {}
        self.examples: Dict[str, List[str]] = {}
        self.sources: Dict[str, int] = {}  # shard URL or parent folder -> bad samples from it

    @staticmethod
    def source_of(key: str) -> str:
        """Where a bad sample came from: its shard (``url:member`` keys) or the folder of its file."""
        head, sep, tail = str(key).rpartition(".tar:")
        return head + ".tar" if sep else os.path.dirname(str(key)) or "."

    def update(self, n_good: int, bad: Sequence[Tuple[str, str]]) -> None:
        """Add one batch: `n_good` usable samples and the (key, reason) of each bad one; may raise DataError."""
        self.total_seen += int(n_good) + len(bad)
        self.total_bad += len(bad)
        for key, reason in bad:
            self.counts[reason] = self.counts.get(reason, 0) + 1
            src = self.source_of(key)
            self.sources[src] = self.sources.get(src, 0) + 1
            ex = self.examples.setdefault(reason, [])
            if len(ex) < self.MAX_EXAMPLES and key not in ex:
                ex.append(str(key))
        self.check()

    @property
    def bad_fraction(self) -> float:
        return self.total_bad / self.total_seen if self.total_seen else 0.0

    def check(self) -> None:
        if self.total_seen >= self.min_samples and self.bad_fraction > self.max_bad_fraction:
            raise DataError(self.message())

    def message(self) -> str:
        worst = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        parts = "; ".join(f"{r} x{n} (e.g. {', '.join(self.examples.get(r, []))})" for r, n in worst)
        srcs = sorted(self.sources.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        where = ", ".join(f"{s} x{n}" for s, n in srcs)
        return (f"{self.total_bad} of {self.total_seen} samples ({self.bad_fraction:.1%}) could not be used, more "
                f"than data.max_bad_fraction={self.max_bad_fraction:g}: {parts}; worst sources: {where}; fix or "
                f"remove those files, or raise data.max_bad_fraction")

    def state_dict(self) -> Dict[str, Any]:
        """Plain ints and lists of str/int (fixed keys), so a fresh counter can load it from a DCP checkpoint."""
        reasons = sorted(self.counts)
        return {"total_seen": self.total_seen, "total_bad": self.total_bad, "reasons": reasons,
                "counts": [self.counts[r] for r in reasons],
                "examples": [list(self.examples.get(r, [])) for r in reasons],
                "sources": sorted(self.sources), "source_counts": [self.sources[k] for k in sorted(self.sources)]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.total_seen, self.total_bad = int(state["total_seen"]), int(state["total_bad"])
        reasons = [str(r) for r in state.get("reasons", [])]
        self.counts = {r: int(n) for r, n in zip(reasons, state.get("counts", []))}
        self.examples = {r: [str(k) for k in ex] for r, ex in zip(reasons, state.get("examples", []))}
        self.sources = {str(k): int(n) for k, n in zip(state.get("sources", []), state.get("source_counts", []))}

    def __repr__(self) -> str:
        return f"BadDataCounter(bad={self.total_bad}/{self.total_seen}, by_reason={self.counts})"
