"""Model and optimizer state in the layout torch.distributed.checkpoint saves and reshards
(fully qualified names, DDP wrappers stripped); the trainer never imports torch.distributed."""
from __future__ import annotations

from typing import Any, Dict, List, Tuple, Union

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict


def _optimizers(optimizer) -> Union[torch.optim.Optimizer, List[torch.optim.Optimizer]]:
    """The optimizer, or the per-parameter optimizers of an optimizer stepped in backward."""
    return getattr(optimizer, "optimizers", optimizer)


def model_optim_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    return get_state_dict(model, _optimizers(optimizer))


def drop_unsaved_optimizer_state(optim_state: Dict[str, Any], stored_keys: Dict[str, Any], prefix: str = "optim") -> None:
    """Empties in the load template the per-parameter optimizer state the checkpoint never had (the
    prototypes while frozen: their grad is None, so momentum never started), so that they keep none on
    load, exactly as in the uninterrupted run; every other expected entry must still be in the checkpoint."""
    head = f"{prefix}.state."
    saved = {k[len(head):].rsplit(".", 1)[0] for k in stored_keys if k.startswith(head)}  # "<fqn>.<state name>"
    per_param = optim_state.get("state", {})
    for fqn in [f for f in per_param if f not in saved]:
        per_param[fqn] = {}  # no state to read (an empty entry: torch 2.6 insists on one per parameter)


def set_aside_param_groups(optim_state: Dict[str, Any], stored_keys: Dict[str, Any], prefix: str = "optim") -> List[Any]:
    """When the checkpoint's optimizer had another group layout (one group per parameter when it was
    stepped in backward, two otherwise), takes the groups out of the load template and returns them:
    they are then kept from the recipe (they hold only its settings and the scheduled lr) while the
    per-parameter state, keyed by parameter name in both layouts, is loaded. Returns [] otherwise."""
    head = f"{prefix}.param_groups."
    stored = {k[len(head):].split(".", 1)[0] for k in stored_keys if k.startswith(head)}
    groups = optim_state.get("param_groups", [])
    if len(stored) == len(groups):
        return []
    return optim_state.pop("param_groups")


def load_model_optim_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                           model_state: Dict[str, Any], optim_state: Dict[str, Any]) -> None:
    # strict=False: a parameter may lawfully have no optimizer state yet (frozen prototypes); the model
    # keys are checked against the checkpoint by the trainer before this call.
    set_state_dict(model, _optimizers(optimizer), model_state_dict=model_state, optim_state_dict=optim_state,
                   options=StateDictOptions(strict=False))
