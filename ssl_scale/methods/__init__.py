"""Self-supervised methods: the SwAV loss (queue, statistics, prototype freezing) and Sinkhorn-Knopp."""
from .sinkhorn import sinkhorn_knopp
from .swav import LOSSES, SwAVLoss, cancel_prototype_gradients

__all__ = ["LOSSES", "SwAVLoss", "cancel_prototype_gradients", "sinkhorn_knopp"]
