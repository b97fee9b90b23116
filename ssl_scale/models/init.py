"""Initialisation of a model whose parameters were allocated empty (built on the meta device, then
materialised): the same distributions the trunk and head constructors use."""
from __future__ import annotations

import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models.regnet import ResBottleneckBlock
from torchvision.models.resnet import BasicBlock, Bottleneck


def init_weights(model: nn.Module, zero_init_residual: bool = False) -> None:
    """Re-initialises every parameter and buffer of `model` in place.

    Convolutions get torchvision's ResNet/RegNet rule (Kaiming normal, fan-out, ReLU gain), norm
    layers scale 1, shift 0 and fresh running statistics, linear layers their default init. Works
    on sharded parameters too: fans come from the global shape.

    Args:
        model: a trunk, a head or a whole SwAV model.
        zero_init_residual: zero the scale of the last norm of every residual branch.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (_BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.Linear)):
            m.reset_parameters()
    if zero_init_residual:
        for m in model.modules():
            last = {Bottleneck: lambda b: b.bn3, BasicBlock: lambda b: b.bn2,
                    ResBottleneckBlock: lambda b: b.f.c[1]}.get(type(m))
            if last is not None:
                nn.init.zeros_(last(m).weight)
