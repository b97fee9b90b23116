"""ResNet trunks: torchvision's ResNets and SwAV's wide ResNet-50 (w2/w4/w5), with an ImageNet or CIFAR stem."""
from __future__ import annotations

from typing import Callable, List

import torch.nn as nn
import torchvision
from torchvision.models.resnet import Bottleneck, ResNet

from . import TRUNKS, check_stem, finish_trunk

TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
WIDE_RESNETS = {"resnet50w2": 2, "resnet50w4": 4, "resnet50w5": 5}


class WideResNet(ResNet):
    """ResNet-50 with the width of every layer, the stem included, multiplied by `width`.

    This is the SimCLR/SwAV definition (stem of 64*w channels, bottleneck widths 64w..512w, outputs
    256w..2048w); torchvision's wide_resnet50_2 widens only the inner 3x3 convolutions. Only the
    width bookkeeping differs from torchvision's ResNet, so the state-dict keys are the same.
    """

    def __init__(self, width: int, layers: List[int] = (3, 4, 6, 3), num_classes: int = 1000, **kwargs):
        self.width = width  # read by _make_layer, which ResNet.__init__ calls
        super().__init__(Bottleneck, list(layers), num_classes=num_classes, **kwargs)
        self.fc = nn.Linear(512 * Bottleneck.expansion * width, num_classes)
        # torchvision built a 64-channel stem; swap in the widened one and initialise it the same way.
        self.conv1 = nn.Conv2d(3, 64 * width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64 * width)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        if planes == 64:  # layer1 is fed by the widened stem
            self.inplanes = 64 * self.width
        return super()._make_layer(block, planes * self.width, blocks, stride, dilate)


def apply_cifar_stem(model: ResNet) -> None:
    """3x3 stride-1 first convolution and no max-pool, for 32-px images."""
    model.conv1 = nn.Conv2d(3, model.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()


def torchvision_resnet(name: str, stem: str = "imagenet", zero_init_residual: bool = False) -> nn.Module:
    """The model as torchvision builds it (its public builder or WideResNet), stem applied, fc removed."""
    check_stem(stem)
    if name in WIDE_RESNETS:
        model = WideResNet(WIDE_RESNETS[name], zero_init_residual=zero_init_residual)
    else:
        model = getattr(torchvision.models, name)(weights=None, zero_init_residual=zero_init_residual)
    if stem == "cifar":
        apply_cifar_stem(model)
    return model


def _builder(name: str) -> Callable[..., nn.Module]:
    def build(stem: str = "imagenet", zero_init_residual: bool = False) -> nn.Module:
        model = torchvision_resnet(name, stem, zero_init_residual)
        return finish_trunk(model, model.fc.in_features)

    build.__name__ = f"build_{name}"
    return build


for _name in TORCHVISION_RESNETS:
    TRUNKS.add(_name, _builder(_name), f"torchvision {_name}")
for _name, _w in WIDE_RESNETS.items():
    TRUNKS.add(_name, _builder(_name), f"SwAV wide ResNet-50 x{_w} (every layer {_w}x wider, stem included)")
