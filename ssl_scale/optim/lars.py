"""LARS: SGD with momentum whose update is scaled per parameter by a trust ratio (SwAV's optimizer)."""
from __future__ import annotations

from typing import Callable, Iterator, List, Optional

import torch
from torch.distributed.tensor import DTensor
from torch.optim import Optimizer

from ssl_scale.distributed import full_tensor


def _local(tensors: List[torch.Tensor]) -> List[torch.Tensor]:
    """Each tensor's local shard (a view: in-place updates reach the DTensor), plain tensors as they are."""
    return [t.to_local() if isinstance(t, DTensor) else t for t in tensors]


def _chunks(params: List[torch.Tensor], max_numel: int) -> Iterator[List[torch.Tensor]]:
    """Consecutive runs of parameters of at most max_numel elements together (a larger one alone)."""
    chunk: List[torch.Tensor] = []
    size = 0
    for p in params:
        if chunk and size + p.numel() > max_numel:
            yield chunk
            chunk, size = [], 0
        chunk.append(p)
        size += p.numel()
    if chunk:
        yield chunk


class LARS(Optimizer):
    """SGD with momentum and the LARS trust ratio, without clipping.

    For a parameter p with gradient g in a group with ``lars_exclude=False``:
    u = g + wd * p, and when ||p|| > 0 and ||u|| > 0, u *= eta * ||p|| / ||u||. Groups with
    ``lars_exclude=True`` (biases, norm layers) use u = g: no weight decay and no trust ratio,
    whatever their ``weight_decay``. Then buf = momentum * buf + u (buf = u at the first step) and
    p -= lr * buf. Parameters whose grad is None are skipped (momentum and decay included).

    Args:
        params: parameters or param groups (a group may set lr, momentum, weight_decay,
            trust_coefficient, lars_exclude).
        lr: learning rate.
        momentum: momentum factor (0 = plain SGD).
        weight_decay: L2 weight decay folded into the update before the trust ratio.
        trust_coefficient: eta of the trust ratio.
        lars_exclude: default for groups that do not say.

    The update runs as foreach kernels over runs of parameters of at most ``chunk_numel`` elements, so
    its temporaries stay bounded (a billion-parameter shard would otherwise need a second copy of
    its gradients at once); the result does not depend on the chunking.
    """

    chunk_numel = 2 ** 26  # 64 M elements: 256 MB of fp32 temporaries at most

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, lars_exclude: bool = False):
        if lr < 0 or momentum < 0 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError(f"invalid LARS settings: lr={lr}, momentum={momentum}, weight_decay={weight_decay}, "
                             f"trust_coefficient={trust_coefficient}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, lars_exclude=lars_exclude)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("LARS does not support sparse gradients")
            for chunk in _chunks(params, self.chunk_numel):
                self._update(group, chunk)
        return loss

    def _update(self, group, params: List[torch.Tensor]) -> None:
        # Sharded (DTensor) parameters: the norms are of the whole parameter (DTensor reduces them over
        # the shards); the element-wise update then runs on the local shards as plain tensors.
        grads = [p.grad for p in params]
        if group["lars_exclude"]:
            updates = _local(grads)  # read only below
        else:
            wd = group["weight_decay"]
            updates = torch._foreach_add(grads, params, alpha=wd) if wd else torch._foreach_mul(grads, 1.0)
            p_norm = full_tensor(torch.stack(torch._foreach_norm(params)))
            u_norm = full_tensor(torch.stack(torch._foreach_norm(updates)))
            trust = torch.where((p_norm > 0) & (u_norm > 0),
                                group["trust_coefficient"] * p_norm / u_norm, torch.ones_like(p_norm))
            updates = _local(updates)
            torch._foreach_mul_(updates, list(trust.unbind()))
        momentum = group["momentum"]
        if momentum:
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:  # zeros * momentum + u = u: buf starts at u
                    state["momentum_buffer"] = torch.zeros_like(p)  # sharded like p, for checkpoints
                bufs.append(state["momentum_buffer"])
            bufs = _local(bufs)
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, updates)
            updates = bufs
        torch._foreach_add_(_local(params), updates, alpha=-group["lr"])
