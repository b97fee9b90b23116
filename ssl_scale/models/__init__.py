"""The SSL model (trunk + head), multi-crop forward, and `build_model`."""
from __future__ import annotations

import contextlib
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from .heads import HEADS
from .trunks import TRUNKS, build_trunk


def group_by_resolution(crops: Sequence[Tensor]) -> List[List[Tensor]]:
    """Runs of consecutive crops with the same spatial size (e.g. 2 x 224 then 6 x 96)."""
    groups: List[List[Tensor]] = []
    for crop in crops:
        if groups and groups[-1][0].shape[-2:] == crop.shape[-2:]:
            groups[-1].append(crop)
        else:
            groups.append([crop])
    return groups


class SwAVModel(nn.Module):
    """A trunk and a head; crops of one resolution share one trunk forward, as in the SwAV paper."""

    def __init__(self, trunk: nn.Module, head: nn.Module):
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, crops: Union[Tensor, Sequence[Tensor]]) -> Tuple[Tensor, List[Tensor]]:
        """crops: list of (B, 3, H_i, W_i) -> (z, scores) with rows crop-major (crop 0's B rows first)."""
        if isinstance(crops, Tensor):
            crops = [crops]
        feats = [self.trunk(torch.cat(group)) for group in group_by_resolution(crops)]
        return self.head(torch.cat(feats) if len(feats) > 1 else feats[0])


def build_model(trunk: str, stem: str = "imagenet", head_kwargs: Optional[dict] = None,
                device: Optional[Union[str, torch.device]] = None, zero_init_residual: bool = False) -> SwAVModel:
    """Trunk + head, the head's `in_dim` taken from the trunk.

    Args:
        trunk: registered trunk name.
        stem: "imagenet" or "cifar".
        head_kwargs: the head's arguments except in_dim; an optional "name" picks the head (default "swav").
        device: where parameters are created ("meta" allocates nothing).
        zero_init_residual: zero the last BN scale of every residual block of the trunk.
    """
    kwargs = dict(head_kwargs or {})
    head_cls = HEADS.get(kwargs.pop("name", "swav"))
    body = build_trunk(trunk, stem, device=device, zero_init_residual=zero_init_residual)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        head = head_cls(in_dim=body.num_features, **kwargs)
    return SwAVModel(body, head)


__all__ = ["SwAVModel", "build_model", "group_by_resolution", "HEADS", "TRUNKS"]
