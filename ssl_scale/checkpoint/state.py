"""Model and optimizer state in the layout torch.distributed.checkpoint saves and reshards
(fully qualified names, DDP wrappers stripped); the trainer never imports torch.distributed."""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict


def model_optim_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    return get_state_dict(model, optimizer)


def drop_unsaved_optimizer_state(optim_state: Dict[str, Any], stored_keys: Dict[str, Any], prefix: str = "optim") -> None:
    """Removes from the load template the per-parameter optimizer state the checkpoint never had (the
    prototypes while frozen: their grad is None, so momentum never started), so that they keep none on
    load, exactly as in the uninterrupted run; every other expected entry must still be in the checkpoint."""
    head = f"{prefix}.state."
    saved = {k[len(head):].rsplit(".", 1)[0] for k in stored_keys if k.startswith(head)}  # "<fqn>.<state name>"
    per_param = optim_state.get("state", {})
    for fqn in [f for f in per_param if f not in saved]:
        del per_param[fqn]


def load_model_optim_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                           model_state: Dict[str, Any], optim_state: Dict[str, Any]) -> None:
    # strict=False: a parameter may lawfully have no optimizer state yet (frozen prototypes); the model
    # keys are checked against the checkpoint by the trainer before this call.
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                   options=StateDictOptions(strict=False))
