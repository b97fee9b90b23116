"""Batch norm synchronised over a process group that also works on CPU (gloo).

PyTorch's SyncBatchNorm refuses CPU tensors; this one computes the batch mean and variance from
all-reduced sums with differentiable all-reduces, so forward and backward equal one process
holding the whole global batch."""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm


class GroupSyncBatchNorm(_BatchNorm):
    """Drop-in BatchNorm{1,2,3}d whose batch statistics span `process_group`."""

    process_group: Optional[dist.ProcessGroup] = None

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized():
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        xf = x.float()
        count = torch.tensor([x.numel() / x.shape[1]], dtype=torch.float32, device=x.device)
        # Two passes (mean, then centred squares) for the same accuracy as local batch norm.
        local = torch.cat([xf.sum(dims), count])
        total = dist_nn.all_reduce(local, group=self.process_group or dist.group.WORLD)
        n = total[-1]
        mean = total[:-1] / n
        shape = [1, -1] + [1] * (x.dim() - 2)
        centred = xf - mean.view(shape)
        var = dist_nn.all_reduce(centred.pow(2).sum(dims), group=self.process_group or dist.group.WORLD) / n
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                self.num_batches_tracked.add_(1)
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                unbiased = var.detach() * n / torch.clamp(n - 1, min=1)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, process_group: Optional[dist.ProcessGroup] = None) -> nn.Module:
    """Replace every BatchNorm of `module` by GroupSyncBatchNorm, keeping parameters and buffers."""
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, GroupSyncBatchNorm):
        out = GroupSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats, device=None)
        out.process_group = process_group
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        if module.track_running_stats:
            out.running_mean = module.running_mean
            out.running_var = module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, process_group))
    return out


def new_bn_groups(group_size: int) -> Optional[dist.ProcessGroup]:
    """Split the world into consecutive groups of `group_size` ranks; returns this rank's group."""
    world, rank = dist.get_world_size(), dist.get_rank()
    if group_size <= 0 or group_size >= world:
        return None
    if world % group_size:
        raise ValueError(f"train.sync_bn_group_size={group_size} must divide the world size {world}")
    mine = None
    for start in range(0, world, group_size):
        g = dist.new_group(list(range(start, start + group_size)))
        if start <= rank < start + group_size:
            mine = g
    return mine
