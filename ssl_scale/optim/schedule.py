"""Stateless learning-rate schedules (warmup + cosine / constant) and the linear LR scaling rule."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ssl_scale.registry import Registry

SCHEDULES = Registry("schedule")


def _warmup(step: int, start_lr: float, peak_lr: float, warmup_steps: int) -> float:
    return start_lr + (peak_lr - start_lr) * step / warmup_steps


@dataclass(frozen=True)
class _WarmupSchedule:
    """Linear warmup from start_lr to peak_lr over [0, warmup_steps), then `after_warmup(step)`."""

    peak_lr: float
    total_steps: int = 0
    warmup_steps: int = 0
    start_lr: float = 0.0
    final_lr: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return _warmup(step, self.start_lr, self.peak_lr, self.warmup_steps)
        return self.after_warmup(step)

    def lr_at(self, step: int) -> float:
        return self(step)

    def after_warmup(self, step: int) -> float:
        raise NotImplementedError


@SCHEDULES.register("cosine", "linear warmup from start_lr to the peak, then cosine to final_lr at total_steps")
@dataclass(frozen=True)
class CosineSchedule(_WarmupSchedule):
    """lr(step): start_lr -> peak_lr linearly over [0, warmup_steps), then
    final_lr + (peak_lr - final_lr) * (1 + cos(pi * t)) / 2 with t = (step - warmup) / (total - warmup),
    and final_lr from total_steps on.

    Args:
        peak_lr: learning rate at the end of the warmup (already scaled with the batch).
        total_steps: step at which the cosine reaches final_lr.
        warmup_steps: length of the linear warmup (0 = none).
        start_lr: learning rate at step 0 of the warmup.
        final_lr: learning rate at total_steps (SwAV: peak_lr * 0.001).
    """

    def __post_init__(self):
        if self.total_steps <= 0:
            raise ValueError(f"a cosine schedule needs total_steps > 0, got {self.total_steps}")

    def after_warmup(self, step: int) -> float:
        t = min((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 1.0)
        return self.final_lr + 0.5 * (self.peak_lr - self.final_lr) * (1.0 + math.cos(math.pi * t))


@SCHEDULES.register("constant", "linear warmup from start_lr to the peak (if warmup_steps > 0), then constant")
@dataclass(frozen=True)
class ConstantSchedule(_WarmupSchedule):
    """lr(step) = peak_lr after an optional linear warmup from start_lr; total_steps and final_lr
    are accepted (the trainer passes every schedule the same arguments) and unused."""

    def after_warmup(self, step: int) -> float:
        return self.peak_lr


def scale_lr(base_lr: float, global_batch: int, reference_batch: int = 256) -> float:
    """Linear scaling rule: base_lr per reference_batch images (0.3 at 256 gives 4.8 at 4,096)."""
    return base_lr * global_batch / reference_batch
