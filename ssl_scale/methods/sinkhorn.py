"""Sinkhorn-Knopp equipartition of samples over prototypes (SwAV codes); reductions come in as callables."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

Reduce = Callable[[Tensor], object]


@torch.no_grad()
def sinkhorn_knopp(scores: Tensor, epsilon: float, iterations: int, reduce_sum: Optional[Reduce] = None,
                   reduce_max: Optional[Reduce] = None, use_float64: bool = False) -> Tensor:
    """SwAV codes: soft assignments of this rank's samples, equipartitioned over the K prototypes
    within the GLOBAL batch (all ranks together).

    Q = exp((scores - global max) / eps), seen as (K, B); Q /= global total; then ``iterations``
    times: each prototype row is divided by its (all-reduced) sum and by K, each sample column by
    its sum and by B (B = global batch, the all-reduced local sizes); finally Q *= B so that every
    column sums to 1 (and, after the last row step, each prototype gets B / K of the mass).

    Args:
        scores: (B_local, K) sample-prototype scores of this rank (no gradient flows).
        epsilon: entropic regularisation.
        iterations: number of Sinkhorn iterations.
        reduce_sum: in-place sum all-reduce ``f(t)`` over the ranks (its return value is ignored);
            None = one process.
        reduce_max: in-place max all-reduce; None = one process.
        use_float64: compute in float64 (float32 otherwise).

    Returns:
        (B_local, K) codes whose rows sum to 1; float64 when ``scores`` is float64, else float32.
    """
    out_dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    dtype = torch.float64 if use_float64 else out_dtype
    scores = scores.detach().to(dtype)
    # exp(max / eps) is a common factor of every entry: dividing it out changes nothing but overflow.
    top = scores.max().reshape(1)
    if reduce_max is not None:
        reduce_max(top)
    q = torch.exp((scores - top) / epsilon).t()  # (K, B_local): rows are prototypes, columns samples
    k = q.shape[0]
    # Total mass and global batch size in one all-reduce (no host copy of the batch size).
    total_and_batch = torch.stack([q.sum(), q.new_tensor(float(q.shape[1]))])
    if reduce_sum is not None:
        reduce_sum(total_and_batch)
    q /= total_and_batch[0]
    b = total_and_batch[1]
    for _ in range(iterations):
        row_sums = q.sum(dim=1, keepdim=True)
        if reduce_sum is not None:
            reduce_sum(row_sums)
        q /= row_sums
        q /= k
        q /= q.sum(dim=0, keepdim=True)  # a sample's column lives on one rank: no reduction
        q /= b
    q *= b
    return q.t().to(out_dtype)
