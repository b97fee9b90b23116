"""The head registry, filled by explicit imports of the head modules."""
from __future__ import annotations

from ssl_scale.registry import Registry

HEADS: Registry = Registry("head")

from . import swav  # noqa: E402,F401
from .swav import SwAVHead  # noqa: E402,F401
