"""Sinkhorn-Knopp equipartition of samples over prototypes (SwAV codes); reductions come in as callables."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

Reduce = Callable[[Tensor], object]


@torch.no_grad()
def sinkhorn_knopp(scores: Tensor, epsilon: float, iterations: int, reduce_sum: Optional[Reduce] = None,
                   reduce_max: Optional[Reduce] = None, use_float64: bool = False,
                   prototypes_split: bool = False) -> Tensor:
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
        prototypes_split: the ranks hold the same (global) samples and each a slice of the
            prototypes (sharded prototype head): the sample sums and K are reduced instead of the
            prototype sums and B.

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
    # Total mass and the split dimension's global size in one all-reduce (no host copy).
    total_and_size = torch.stack([q.sum(), q.new_tensor(float(q.shape[0] if prototypes_split else q.shape[1]))])
    if reduce_sum is not None:
        reduce_sum(total_and_size)
    q /= total_and_size[0]
    k, b = (total_and_size[1], q.shape[1]) if prototypes_split else (k, total_and_size[1])
    row_reduce = None if prototypes_split else reduce_sum  # a prototype's row lives on one rank
    col_reduce = reduce_sum if prototypes_split else None  # a sample's column lives on one rank
    for _ in range(iterations):
        row_sums = q.sum(dim=1, keepdim=True)
        if row_reduce is not None:
            row_reduce(row_sums)
        q /= row_sums
        q /= k
        col_sums = q.sum(dim=0, keepdim=True)
        if col_reduce is not None:
            col_reduce(col_sums)
        q /= col_sums
        q /= b
    q *= b
    return q.t().to(out_dtype)
