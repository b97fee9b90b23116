"""Values derived from a recipe and the run's world size, computed in one visible place and logged;
they are never written back into the user's config."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class Derived:
    world_size: int
    global_batch: int
    num_crops: int
    steps_per_epoch: int
    total_steps: int  # epochs x steps_per_epoch: the schedule's length (train.max_steps only stops early)
    stop_step: int  # where this run stops: total_steps, or train.max_steps when smaller
    warmup_steps: int
    lr: float  # peak learning rate after the scaling rule
    queue_length_total: int  # over all processes, rounded down to a multiple of the global batch
    queue_length: int  # rows each process keeps: queue_length_total / world_size (as in SwAV)
    jpeg_draft: Optional[Tuple[int, int]] = None  # JPEG draft request (draft_size below); None = full-size decode

    def lines(self) -> list[str]:
        return [f"{k} = {v}" for k, v in asdict(self).items()]


def derive(cfg, world_size: int, dataset_len: int, steps_per_epoch: Optional[int] = None) -> Derived:
    """steps_per_epoch: the data layer's count when it is not dataset_len // global batch (streamed shards)."""
    from ssl_scale.config.loader import ConfigError

    global_batch = cfg.data.batch_size * world_size
    steps = dataset_len // global_batch if steps_per_epoch is None else int(steps_per_epoch)
    if steps == 0:
        raise ConfigError(
            f"'data.batch_size': {dataset_len} images cannot fill one global batch of {global_batch} "
            f"({cfg.data.batch_size} x {world_size} processes"
            f"{'' if steps_per_epoch is None else f', whole batches for each of {max(1, cfg.data.num_workers)} workers'}); "
            f"lower data.batch_size or add images")
    total = steps * cfg.train.epochs
    stop = min(total, cfg.train.max_steps) if cfg.train.max_steps else total
    lr = cfg.optim.base_lr * global_batch / cfg.optim.reference_batch if cfg.optim.scale_lr else cfg.optim.base_lr
    q = cfg.loss.queue_length
    if q:
        q = (q // global_batch) * global_batch
        if q == 0:
            raise ConfigError(f"'loss.queue_length': {cfg.loss.queue_length} is shorter than one global batch ({global_batch}); raise it or set 0")
    return Derived(world_size, global_batch, sum(c.count for c in cfg.data.crops), steps, total, stop,
                   int(round(cfg.schedule.warmup_epochs * steps)), lr, q, q // world_size, draft_size(cfg.data))


def draft_size(data_cfg) -> Optional[Tuple[int, int]]:
    """The JPEG draft request of `data` (see decode.load_image): the largest crop's size on both sides, or
    None when data.decode.draft is off.

    Pillow's draft mode then decodes at the largest 1/2, 1/4 or 1/8 reduction that keeps the image at
    least this large on both sides, so even a crop of the whole image still has as many pixels as the
    largest crop; photos already smaller than twice the largest crop are decoded at full size.
    """
    if not data_cfg.decode.draft:
        return None
    side = max(int(c.size) for c in data_cfg.crops)
    return side, side
