"""Applies data parallelism, synchronised batch norm, channels_last and torch.compile to an
unmodified model. Models, losses and data code never do any of this themselves."""
from __future__ import annotations

import logging

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from .env import DistEnv
from .syncbn import convert_sync_batchnorm, new_bn_groups

log = logging.getLogger(__name__)


def apply_sync_bn(model: nn.Module, mode: str, group_size: int, env: DistEnv) -> nn.Module:
    if mode == "none" or not env.distributed:
        return model
    group = new_bn_groups(group_size) if mode == "group" else None
    log.info("synchronised batch norm over %s", f"groups of {group_size}" if group is not None else "all ranks")
    return convert_sync_batchnorm(model, group)


def parallelize(model: nn.Module, env: DistEnv, *, sync_bn: str = "global", sync_bn_group_size: int = 0,
                channels_last: bool = False, compile_trunk: bool = False) -> nn.Module:
    """Returns the module to train (DDP-wrapped when several processes run); `unwrap` gives the model."""
    model = apply_sync_bn(model, sync_bn, sync_bn_group_size, env)
    model.to(env.device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if compile_trunk and hasattr(model, "trunk"):
        model.trunk.compile()  # in place: parameter names (and checkpoints) stay unchanged
    if env.distributed:
        ids = [env.device.index] if env.device.type == "cuda" else None
        # Buffers (BN running stats) are kept equal by synchronised BN; no per-step broadcast needed.
        model = DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    model = model.module if isinstance(model, DistributedDataParallel) else model
    return model
