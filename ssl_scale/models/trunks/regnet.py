"""RegNetY trunks on torchvision's RegNet: torchvision's sizes, SEER's 256GF and 10B, and a tiny debug size."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import partial
from typing import Dict

import torch
import torch.nn as nn
import torchvision
from torchvision.models.regnet import BlockParams, RegNet

from . import TRUNKS, check_stem, finish_trunk


@dataclass(frozen=True)
class RegNetParams:
    """Generator parameters of a RegNetY (Radosavovic et al. 2020); widths follow w_0 + w_a * j, quantised."""

    depth: int
    w_0: int
    w_a: float
    w_m: float
    group_width: int
    se_ratio: float = 0.25

    def block_params(self) -> BlockParams:
        # torchvision computes the widths with tensors: keep them off an ambient meta device
        with torch.device("cpu"):
            return BlockParams.from_init_params(**asdict(self))


REGNET_SIZES: Dict[str, RegNetParams] = {
    # torchvision's RegNetY sizes (same numbers as its builders)
    "regnet_y_400mf": RegNetParams(16, 48, 27.89, 2.09, 8),
    "regnet_y_800mf": RegNetParams(14, 56, 38.84, 2.4, 16),
    "regnet_y_1_6gf": RegNetParams(27, 48, 20.71, 2.65, 24),
    "regnet_y_3_2gf": RegNetParams(21, 80, 42.63, 2.66, 24),
    "regnet_y_8gf": RegNetParams(17, 192, 76.82, 2.19, 56),
    "regnet_y_16gf": RegNetParams(18, 200, 106.23, 2.48, 112),
    "regnet_y_32gf": RegNetParams(20, 232, 115.89, 2.53, 232),
    "regnet_y_128gf": RegNetParams(27, 456, 160.83, 2.52, 264),
    # SEER sizes: 1.27 B and 9.3 B trunk parameters
    "regnet_y_256gf": RegNetParams(27, 640, 230.83, 2.53, 373),
    "regnet_y_10b": RegNetParams(27, 1744, 620.83, 2.52, 1010),
    # stages of depth [1, 1, 3, 1] and widths [16, 32, 64, 128]: for CPU tests
    "regnet_y_debug": RegNetParams(6, 16, 16.0, 2.0, 8),
}

TORCHVISION_REGNETS = tuple(n for n in REGNET_SIZES if hasattr(torchvision.models, n))


def apply_cifar_stem(model: RegNet) -> None:
    """Stride-1 3x3 stem convolution, for 32-px images."""
    old = model.stem[0]
    model.stem[0] = nn.Conv2d(3, old.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.stem[0].weight, mode="fan_out", nonlinearity="relu")


def zero_init_last_bn(model: RegNet) -> None:
    """Each residual branch starts as zero, so every block starts as (a projection of) the identity."""
    for stage in model.trunk_output:
        for block in stage:
            nn.init.zeros_(block.f.c[1].weight)


def torchvision_regnet(params: RegNetParams, stem: str = "imagenet", name: str | None = None,
                       use_builder: bool = True) -> RegNet:
    """The model as torchvision builds it: its public builder for the sizes it ships (unless
    `use_builder` is False: the builders cannot run under a meta device), else RegNet(...)."""
    check_stem(stem)
    if use_builder and name in TORCHVISION_REGNETS:
        model = getattr(torchvision.models, name)(weights=None)
    else:
        # same batch-norm settings as torchvision's builders
        model = RegNet(params.block_params(), norm_layer=partial(nn.BatchNorm2d, eps=1e-5, momentum=0.1))
    if stem == "cifar":
        apply_cifar_stem(model)
    return model


def build_regnet(params: RegNetParams, stem: str = "imagenet", zero_init_residual: bool = False) -> nn.Module:
    """A RegNetY trunk of any size.

    Args:
        params: the generator parameters (see REGNET_SIZES).
        stem: "imagenet" (3x3 stride 2) or "cifar" (3x3 stride 1).
        zero_init_residual: zero the last BN scale of every residual branch.
    """
    check_stem(stem)
    model = RegNet(params.block_params(), num_classes=1,  # fc is dropped; keep it tiny
                   norm_layer=partial(nn.BatchNorm2d, eps=1e-5, momentum=0.1))
    if stem == "cifar":
        apply_cifar_stem(model)
    if zero_init_residual:
        zero_init_last_bn(model)
    return finish_trunk(model, model.fc.in_features)


def _builder(name: str):
    def build(stem: str = "imagenet", zero_init_residual: bool = False) -> nn.Module:
        return build_regnet(REGNET_SIZES[name], stem, zero_init_residual)

    build.__name__ = f"build_{name}"
    return build


for _name, _p in REGNET_SIZES.items():
    TRUNKS.add(_name, _builder(_name), f"RegNetY depth {_p.depth}, w_0 {_p.w_0}, w_a {_p.w_a}, "
               f"w_m {_p.w_m}, group width {_p.group_width}")
