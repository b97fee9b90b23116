"""Feature extraction from a trunk: batched, no_grad, eval mode, optional bf16; the pooled output or the
globally average-pooled output of an earlier stage (via a forward hook that also stops the forward pass)."""
from __future__ import annotations

import contextlib
from typing import Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from ssl_scale.data import BadSample, DataError

POOLED = "pooled"
STAGE_NAMES = ("layer1", "layer2", "layer3", "layer4")


class _Transformed(Dataset):
    def __init__(self, base, transform):
        self.base, self.transform = base, transform

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        item = self.base[i]
        if isinstance(item, BadSample):  # evaluation sets must be complete: name the file, don't skip it
            raise DataError(f"image {item.key!r} cannot be used for feature extraction ({item.reason}); "
                            "remove or replace it")
        img, label = item
        return self.transform(img), label


class _StopForward(Exception):
    pass


def resolve_layer(trunk: torch.nn.Module, layer: str) -> torch.nn.Module:
    """The module whose output is the `layer` feature: "layer1".."layer4" are the trunk's stages in order
    (ResNet layer1..4, RegNet block1..4); any other name is a submodule path (e.g. "layer3.1")."""
    if layer in STAGE_NAMES:
        from ssl_scale.models.trunks import trunk_stages

        try:
            stages = trunk_stages(trunk)
        except TypeError:
            stages = [getattr(trunk, layer)] * 4 if hasattr(trunk, layer) else []
        i = STAGE_NAMES.index(layer)
        if i < len(stages):
            return stages[i]
    try:
        return trunk.get_submodule(layer)
    except AttributeError:
        raise ValueError(f"feature layer {layer!r} is not a module of the trunk (valid: {POOLED}, "
                         f"{', '.join(STAGE_NAMES)}, or a submodule path such as 'layer3.1')") from None


@torch.no_grad()
def extract_features(trunk: torch.nn.Module, dataset, transform, batch_size: int = 256, device="cpu",
                     num_workers: int = 0, bf16: bool = False, layer: str = POOLED) -> Tuple[torch.Tensor, torch.Tensor]:
    """(features (N, D) float32, labels (N,)) in dataset order.

    layer: "pooled" (the trunk's output) or a stage ("layer1".."layer4") / submodule path, whose output
        is globally average-pooled to (N, C); the forward pass stops right after that module.
    """
    was_training = trunk.training
    trunk.eval()
    loader = DataLoader(_Transformed(dataset, transform), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers)
    dev = torch.device(device)
    ctx = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    captured = {}
    handle = None
    if layer != POOLED:
        module = resolve_layer(trunk, layer)

        def hook(_m, _inp, out):
            captured["x"] = out
            raise _StopForward

        handle = module.register_forward_hook(hook)
    feats, labels = [], []
    try:
        for x, y in loader:
            with ctx():
                if handle is None:
                    f = trunk(x.to(dev))
                else:
                    try:
                        trunk(x.to(dev))
                    except _StopForward:
                        pass
                    out = captured.pop("x")
                    f = out.float().mean(dim=(2, 3)) if out.dim() == 4 else out.flatten(1)
            feats.append(f.float().cpu())
            labels.append(torch.as_tensor(y))
    finally:
        if handle is not None:
            handle.remove()
        trunk.train(was_training)
    return torch.cat(feats), torch.cat(labels)
