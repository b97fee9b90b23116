"""Prototype layers split by rows over the ranks: each rank keeps K/N prototypes and scores the
embeddings of the whole (gathered) batch against them, so no rank holds all K prototypes or all
K scores. The loss combines the shards through the reductions of `shard_reductions`."""
from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.distributed.nn.functional as dist_nn
import torch.nn as nn
from torch import Tensor
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard



class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.scale, None


class ShardedPrototypes(nn.Module):
    """Stands in for one `nn.Linear(D, K, bias=False)` prototype layer.

    `weight` is a DTensor sharded by rows (Shard(0)) over `mesh`: state dicts and checkpoints see
    the whole (K, D) matrix under the same key, and reshard to any world size. Forward gathers the
    (rows, D) embeddings of every rank (rank-major, differentiably) and returns their
    (N * rows, K/N) scores against this rank's prototypes.

    Every rank's loss is the global loss, and data parallelism averages the trunk's gradients
    over the N ranks; the prototype rows live on one rank only, so their gradient is divided by N
    here to match that averaging.
    """

    def __init__(self, linear: nn.Linear, mesh: DeviceMesh):
        super().__init__()
        n, k = mesh.size(), linear.weight.shape[0]
        if k % n:
            raise ValueError(f"'model.head.num_prototypes': {k} prototypes cannot be split evenly over {n} "
                             f"processes; use a multiple of {n} or parallel.shard_prototypes=false")
        local = linear.weight.detach().chunk(n)[mesh.get_local_rank()].clone()
        self.weight = nn.Parameter(DTensor.from_local(local, mesh, [Shard(0)], run_check=False))
        self.world_size = n

    def forward(self, z: Tensor) -> Tensor:
        w = _ScaleGrad.apply(self.weight.to_local(), 1.0 / self.world_size)
        gathered = torch.cat(dist_nn.all_gather(z.contiguous()))
        return gathered.to(w.dtype) @ w.t()

    def extra_repr(self) -> str:
        return f"prototypes={self.weight.shape[0]}, dim={self.weight.shape[1]}, shards={self.world_size}"


def shard_prototype_layers(head: nn.Module, mesh: DeviceMesh) -> None:
    """Replaces every layer of `head.prototypes` by its ShardedPrototypes (same keys, same values)."""
    for i, layer in enumerate(head.prototypes):
        head.prototypes[i] = ShardedPrototypes(layer, mesh)


def _sum_with_grad(t: Tensor) -> Tensor:
    """Sum over ranks whose backward sums the gradients of every rank (out of place)."""
    return dist_nn.all_reduce(t)


def shard_reductions(world_size: int) -> Dict[str, Callable]:
    """Keyword arguments of the SwAV loss for prototypes split over `world_size` ranks (besides the
    in-place reductions of `reduce_fns`)."""
    return {"prototype_shards": world_size, "reduce_sum_grad": _sum_with_grad}
