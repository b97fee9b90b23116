"""The SwAV head: projection MLP, L2-normalised embeddings and one or more sets of L2-normalised prototypes."""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from . import HEADS


def projection_mlp(in_dim: int, hidden_dims: Sequence[int], output_dim: int, batch_norm: bool) -> nn.Module:
    """in_dim -> [Linear, (BN), ReLU] per hidden width -> Linear to output_dim; Identity when output_dim is 0."""
    if output_dim == 0:
        return nn.Identity()
    layers: List[nn.Module] = []
    width = in_dim
    for hidden in hidden_dims:
        layers.append(nn.Linear(width, hidden))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(nn.ReLU(inplace=True))
        width = hidden
    layers.append(nn.Linear(width, output_dim))
    return nn.Sequential(*layers)


@HEADS.register("swav", "projection MLP + L2 norm + prototype scores (SwAV)")
class SwAVHead(nn.Module):
    """Projects trunk features, L2-normalises them and scores them against each prototype set.

    Args:
        in_dim: trunk feature width.
        hidden_dims: widths of the hidden layers of the projection ([] = a single Linear).
        output_dim: embedding width; 0 = no projection (the trunk features are normalised directly).
        batch_norm: BatchNorm1d after each hidden Linear.
        num_prototypes: size K of each prototype set ([] = embeddings only).
    """

    def __init__(self, in_dim: int, hidden_dims: Sequence[int] = (2048,), output_dim: int = 128,
                 batch_norm: bool = True, num_prototypes: Sequence[int] = (3000,)):
        super().__init__()
        if output_dim == 0 and hidden_dims:
            raise ValueError("hidden_dims needs an output_dim > 0 (output_dim 0 means no projection)")
        self.output_dim = output_dim or in_dim
        self.projection = projection_mlp(in_dim, list(hidden_dims), output_dim, batch_norm)
        self.prototypes = nn.ModuleList(nn.Linear(self.output_dim, k, bias=False) for k in num_prototypes)
        self.normalize_prototypes()

    @torch.no_grad()
    def normalize_prototypes(self) -> None:
        """Puts every prototype back on the unit sphere; call after each optimizer step."""
        for proto in self.prototypes:
            # F.normalize's formula, with clamp for its clamp_min: sharded (DTensor) weights support
            # clamp on every torch from 2.6 on, clamp_min only on newer ones.
            w = proto.weight
            w.copy_(w / w.norm(dim=1, keepdim=True).clamp(min=1e-12))

    def forward(self, x: Tensor) -> Tuple[Tensor, List[Tensor]]:
        """x: (B, in_dim) -> (z: (B, output_dim) unit rows, [z @ C_i^T: (B, K_i)])."""
        z = F.normalize(self.projection(x), dim=1)
        return z, [proto(z) for proto in self.prototypes]
