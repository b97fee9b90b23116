"""End-to-end fine-tuning (semi-supervised protocol of SwAV/SimCLR): the whole trunk plus a linear head,
trained on a seeded per-class fraction of the train labels (1%, 10% or 100%) with RandomResizedCrop +
horizontal flip, SGD with momentum and a cosine schedule; scored on the test split with the eval transform."""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from .features import _Transformed


def label_subset(labels, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of round(fraction x n_c) (at least one) images of every class c, seeded."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fine-tune: label_fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    if fraction >= 1.0:
        return np.arange(len(labels))
    rng = np.random.default_rng(int(seed))
    out = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n = max(1, int(round(fraction * len(idx))))
        out.append(rng.permutation(idx)[:n])
    return np.sort(np.concatenate(out))


def train_transform(size: int, mean: Sequence[float], std: Sequence[float], scale=(0.08, 1.0)):
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=tuple(scale), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
    ])


def _plain(t):
    return lambda img: t(img).as_subclass(torch.Tensor)


@torch.no_grad()
def evaluate(model: nn.Module, dataset, transform, batch_size: int, device, num_workers: int = 0) -> Dict[str, float]:
    model.eval()
    loader = DataLoader(_Transformed(dataset, transform), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers)
    hit1 = hit5 = n = 0
    for x, y in loader:
        scores = model(x.to(device)).float().cpu()
        ranked = scores.argsort(dim=1, descending=True, stable=True)
        y = torch.as_tensor(y).view(-1, 1)
        hit1 += (ranked[:, :1] == y).any(1).sum().item()
        hit5 += (ranked[:, : min(5, scores.shape[1])] == y).any(1).sum().item()
        n += len(y)
    return {"top1": hit1 / n, "top5": hit5 / n}


def finetune(trunk: nn.Module, train_set, test_set, num_classes: int, eval_transform, image_size: int,
             mean: Sequence[float], std: Sequence[float], label_fraction: float = 0.1, epochs: int = 20,
             steps: Optional[int] = None, batch_size: int = 64, lr: float = 0.01, head_lr: float = 0.1,
             weight_decay: float = 1e-4, momentum: float = 0.9, crop_scale=(0.08, 1.0), seed: int = 0,
             device="cpu", num_workers: int = 0, eval_batch_size: int = 256) -> Dict[str, float]:
    """Fine-tunes `trunk` in place (pass a fresh copy) and returns test top1/top5 (fractions) and the steps run."""
    device = torch.device(device)
    idx = label_subset(train_set.labels, label_fraction, seed)
    subset = train_set.subset(idx)
    bs = min(int(batch_size), len(subset))
    drop_last = len(subset) > bs  # full batches only (never a last batch of one image under BatchNorm)
    per_epoch = len(subset) // bs
    total = int(steps) if steps else int(epochs) * per_epoch
    if total <= 0:
        raise ValueError(f"fine-tune: needs steps > 0 or epochs > 0 (got steps={steps}, epochs={epochs})")
    fork = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork):
        torch.manual_seed(int(seed))
        head = nn.Linear(int(trunk.num_features), int(num_classes))
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)
        model = nn.Sequential(trunk, head).to(device)
        decay, no_decay = [], []
        for name, p in trunk.named_parameters():
            (no_decay if p.ndim <= 1 else decay).append(p)
        groups = [{"params": decay, "lr": lr, "base_lr": lr, "weight_decay": weight_decay},
                  {"params": no_decay, "lr": lr, "base_lr": lr, "weight_decay": 0.0},
                  {"params": list(head.parameters()), "lr": head_lr, "base_lr": head_lr,
                   "weight_decay": weight_decay}]
        opt = torch.optim.SGD(groups, lr=lr, momentum=momentum)
        gen = torch.Generator().manual_seed(int(seed))
        loader = DataLoader(_Transformed(subset, _plain(train_transform(image_size, mean, std, crop_scale))),
                            batch_size=bs, shuffle=True, drop_last=drop_last, generator=gen,
                            num_workers=num_workers)
        step = 0
        model.train()
        while step < total:
            for x, y in loader:
                if step >= total:
                    break
                f = 0.5 * (1.0 + math.cos(math.pi * step / total))
                for g in opt.param_groups:
                    g["lr"] = g["base_lr"] * f
                loss = F.cross_entropy(model(x.to(device)), torch.as_tensor(y).to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
            if not torch.isfinite(loss):
                raise ValueError(f"fine-tune: the loss became non-finite at step {step}; lower the learning rate")
    out = evaluate(model, test_set, eval_transform, eval_batch_size, device, num_workers)
    out["steps"] = float(total)
    out["labelled_images"] = float(len(subset))
    return out
