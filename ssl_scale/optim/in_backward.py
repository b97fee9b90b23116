"""The optimizer step fused into the backward pass: each parameter is updated as soon as its gradient
is final, and that gradient is freed at once, so no moment of the step holds every gradient.

One optimizer per parameter, stepped by a post-accumulate-grad hook. Under FSDP2 the hook fires on
the sharded parameter right after its reduce-scatter, so it sees the reduced shard; on one process it
fires when autograd has summed the parameter's gradient over all its uses. Under DDP it would fire
before the all-reduce, so the trainer refuses that combination. Gradient clipping and gradient
scaling need every gradient at once and cannot be combined with it either.
"""
from __future__ import annotations

import functools
from typing import Callable, Dict, List

import torch


class OptimizerInBackward:
    """A facade over per-parameter optimizers that the trainer uses like one optimizer.

    Args:
        build: makes an optimizer from a list of parameter groups (a registered optimizer builder with
            its settings bound); it is called once per parameter with one group.
        groups: parameter groups as for a single optimizer (``param_groups``); each parameter keeps its
            group's settings (weight decay, LARS exclusion).
        skip: called with a parameter whose gradient is ready; when it returns True the parameter is not
            stepped (its gradient is dropped, as for frozen prototypes).

    ``param_groups`` lists every per-parameter group, so setting ``lr`` on each (the schedule) reaches
    them all; ``step`` is a no-op (the steps ran in backward); ``optimizers`` is the list that
    torch.distributed.checkpoint's state-dict functions accept in place of one optimizer.
    """

    def __init__(self, build: Callable[[List[Dict]], torch.optim.Optimizer], groups: List[Dict],
                 skip: Callable[[torch.Tensor], bool] = lambda p: False):
        self.optimizers: List[torch.optim.Optimizer] = []
        self.skip = skip
        for group in groups:
            settings = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                opt = build([{"params": [p], **settings}])
                self.optimizers.append(opt)
                p.register_post_accumulate_grad_hook(functools.partial(self._step, opt))

    def _step(self, opt: torch.optim.Optimizer, p: torch.Tensor) -> None:
        if not self.skip(p):
            opt.step()
        p.grad = None

    @property
    def param_groups(self) -> List[Dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    @property
    def state(self):
        return {p: s for opt in self.optimizers for p, s in opt.state.items()}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None) -> None:
        """Nothing left to do: every parameter was stepped during backward."""
