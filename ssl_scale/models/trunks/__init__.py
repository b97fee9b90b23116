"""The trunk registry, `build_trunk`, the torchvision reference models and the block/stage lists of a trunk."""
from __future__ import annotations

import contextlib
from typing import List, Optional, Union

import torch
import torch.nn as nn
from torchvision.models import RegNet, ResNet

from ssl_scale.registry import Registry

TRUNKS: Registry = Registry("trunk")
STEMS = ("imagenet", "cifar")


def check_stem(stem: str) -> None:
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r} (valid: {', '.join(STEMS)})")


def finish_trunk(model: nn.Module, num_features: int) -> nn.Module:
    """Drops the classifier so the model returns pooled features, and records their width."""
    model.fc = nn.Identity()
    model.num_features = int(num_features)
    return model


def _on(device: Optional[Union[str, torch.device]]):
    return torch.device(device) if device is not None else contextlib.nullcontext()


def build_trunk(name: str, stem: str = "imagenet", device: Optional[Union[str, torch.device]] = None,
                zero_init_residual: bool = False) -> nn.Module:
    """A registered trunk: a torchvision ResNet/RegNet whose `fc` is nn.Identity.

    Args:
        name: registered name (`TRUNKS.names()`).
        stem: "imagenet" or "cifar" (stride-1 3x3 stem without max-pool, for 32-px images).
        device: where parameters are created; "meta" builds a 10 B trunk without allocating memory.
        zero_init_residual: zero the last BN scale of every residual block.
    """
    builder = TRUNKS.get(name)
    with _on(device):
        return builder(stem=stem, zero_init_residual=zero_init_residual)


def torchvision_reference(name: str, stem: str = "imagenet",
                          device: Optional[Union[str, torch.device]] = None) -> nn.Module:
    """The plain torchvision model (fc = Identity, same stem) into which exported trunk weights load strictly."""
    from .regnet import torchvision_regnet  # REGNET_SIZES is imported at module level below
    from .resnet import torchvision_resnet

    TRUNKS.get(name)  # an unknown name fails with the list of valid ones
    with _on(device):
        if name in REGNET_SIZES:
            on_meta = device is not None and torch.device(device).type == "meta"
            model = torchvision_regnet(REGNET_SIZES[name], stem, name=name, use_builder=not on_meta)
        else:
            model = torchvision_resnet(name, stem)
        model.fc = nn.Identity()
    return model


def trunk_stages(trunk: nn.Module) -> List[nn.Module]:
    """The stages in forward order (ResNet layer1..4, RegNet trunk_output.block1..), as real submodules."""
    if isinstance(trunk, ResNet):
        return [trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4]
    if isinstance(trunk, RegNet):
        return list(trunk.trunk_output.children())
    raise TypeError(f"not a ResNet or RegNet trunk: {type(trunk).__name__}")


def trunk_blocks(trunk: nn.Module) -> List[nn.Module]:
    """The residual blocks in forward order (Bottleneck/BasicBlock or ResBottleneckBlock modules)."""
    return [block for stage in trunk_stages(trunk) for block in stage.children()]


# Filling the registry: explicit imports, after the helpers they use are defined.
from . import regnet, resnet  # noqa: E402,F401
from .regnet import REGNET_SIZES, RegNetParams, build_regnet  # noqa: E402,F401
