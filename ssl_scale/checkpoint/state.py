"""Model and optimizer state in the layout torch.distributed.checkpoint saves and reshards
(fully qualified names, DDP wrappers stripped); the trainer never imports torch.distributed."""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict


def model_optim_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    return get_state_dict(model, optimizer)


def load_model_optim_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                           model_state: Dict[str, Any], optim_state: Dict[str, Any]) -> None:
    # strict=False: a parameter may lawfully have no optimizer state yet (frozen prototypes); the model
    # keys are checked against the checkpoint by the trainer before this call.
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                   options=StateDictOptions(strict=False))
