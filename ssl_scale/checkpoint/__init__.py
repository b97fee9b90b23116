"""Run-state checkpoints (torch.distributed.checkpoint) and trunk export to plain state dicts."""
from .manager import CheckpointManager, latest_checkpoint, list_checkpoints, resolve_checkpoint

__all__ = ["CheckpointManager", "latest_checkpoint", "list_checkpoints", "resolve_checkpoint"]
