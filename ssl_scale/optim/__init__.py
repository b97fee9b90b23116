"""Optimizers (registry, parameter groups, builders) and learning-rate schedules."""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.nn as nn

from ssl_scale.registry import Registry

from .in_backward import OptimizerInBackward
from .lars import LARS
from .schedule import SCHEDULES, ConstantSchedule, CosineSchedule, scale_lr

OPTIMIZERS = Registry("optimizer")

# Every builder takes the same keywords (the trainer passes them all) and uses the ones it needs.


@OPTIMIZERS.register("lars_sgd", "SGD with momentum + LARS trust ratio (SwAV); groups with lars_exclude are plain SGD")
def lars_sgd(params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, trust_coefficient: float = 0.001,
             betas: Sequence[float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    return LARS(params, lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient)


@OPTIMIZERS.register("sgd", "torch SGD with momentum (weight decay per group)")
def sgd(params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, trust_coefficient: float = 0.001,
        betas: Sequence[float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw", "torch AdamW (decoupled weight decay per group)")
def adamw(params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, trust_coefficient: float = 0.001,
          betas: Sequence[float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


def build_optimizer(name: str, params_or_groups, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                    trust_coefficient: float = 0.001, betas: Sequence[float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """Builds the registered optimizer ``name``.

    Args:
        name: lars_sgd | sgd | adamw.
        params_or_groups: parameters, or groups from ``param_groups``.
        lr: learning rate (the schedule overwrites it every step).
        momentum: SGD / LARS momentum.
        weight_decay: default weight decay (groups may override it).
        trust_coefficient: LARS eta.
        betas: AdamW betas.
    """
    return OPTIMIZERS.get(name)(params_or_groups, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                trust_coefficient=trust_coefficient, betas=betas)


def param_groups(model: nn.Module, weight_decay: float, exclude_bias_and_norm: bool = True) -> List[Dict]:
    """Trainable parameters in (up to) two groups: matrices and kernels with ``weight_decay`` and
    LARS adaptation; 1-D parameters (biases, norm scales and shifts) with weight decay 0 and
    ``lars_exclude=True`` when ``exclude_bias_and_norm``. Empty groups are left out."""
    regular: List[nn.Parameter] = []
    excluded: List[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (excluded if exclude_bias_and_norm and p.ndim <= 1 else regular).append(p)
    groups = [{"params": regular, "weight_decay": weight_decay, "lars_exclude": False},
              {"params": excluded, "weight_decay": 0.0, "lars_exclude": True}]
    return [g for g in groups if g["params"]]


__all__ = ["LARS", "OPTIMIZERS", "OptimizerInBackward", "SCHEDULES", "ConstantSchedule", "CosineSchedule", "adamw",
           "build_optimizer", "lars_sgd", "param_groups", "scale_lr", "sgd"]
