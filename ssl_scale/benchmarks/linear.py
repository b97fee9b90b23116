"""Linear probe on frozen (cached) features: multinomial logistic regression in torch, full-batch L-BFGS on
standardised features, the weight decay chosen on a held-out part of the train split, then refit on all
of it and scored on the test split."""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

DEFAULT_WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def stratified_holdout(labels: torch.Tensor, fraction: float, seed: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(fit indices, held-out indices): `fraction` of every class (at least one when the class has two or
    more samples), chosen by a seeded permutation."""
    g = torch.Generator().manual_seed(int(seed))
    fit, held = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n = int(round(fraction * len(idx)))
        n = min(max(n, 1 if len(idx) > 1 else 0), len(idx) - 1) if len(idx) > 1 else 0
        held.append(idx[:n])
        fit.append(idx[n:])
    return torch.cat(fit).sort().values, torch.cat(held).sort().values


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float,
                 max_iter: int = 300, tol: float = 1e-7) -> Tuple[torch.Tensor, torch.Tensor]:
    """Minimises mean cross-entropy + weight_decay/2 * ||W||^2 (bias not decayed) with L-BFGS in float64.

    Equivalent to scikit-learn's LogisticRegression(C=1 / (weight_decay * N)). Returns (W (C, D), b (C,)).
    """
    x = x.double()
    y = y.long()
    w = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + 0.5 * weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def _topk(scores: torch.Tensor, y: torch.Tensor) -> Dict[str, float]:
    ranked = scores.argsort(dim=1, descending=True, stable=True)
    y = y.long().view(-1, 1)
    k5 = min(5, scores.shape[1])
    return {"top1": (ranked[:, :1] == y).any(1).double().mean().item(),
            "top5": (ranked[:, :k5] == y).any(1).double().mean().item()}


class Standardiser:
    def __init__(self, x: torch.Tensor, eps: float = 1e-6):
        x = x.double()
        self.mean = x.mean(0)
        self.std = x.std(0, unbiased=False).clamp_min(eps)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.double() - self.mean) / self.std


def linear_probe(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: Optional[int] = None,
                 weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS, val_fraction: float = 0.2,
                 seed: int = 0, max_iter: int = 300) -> Dict[str, float]:
    """top1/top5 (fractions) on the test split and the chosen weight decay (and its held-out top-1, None
    when a single weight decay is given and nothing is held out)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"linear probe: val_fraction must be in (0, 1), got {val_fraction}")
    if not weight_decays:
        raise ValueError("linear probe: weight_decays must list at least one value")
    c = int(num_classes or int(max(train_labels.max(), test_labels.max())) + 1)
    wds = [float(v) for v in weight_decays]
    if len(wds) == 1:
        best_wd, best_val = wds[0], None
    else:
        fit_idx, val_idx = stratified_holdout(train_labels, val_fraction, seed)
        std = Standardiser(train_feats[fit_idx])
        xf, xv = std(train_feats[fit_idx]), std(train_feats[val_idx])
        best_wd, best_val = wds[0], -1.0
        for wd in wds:  # the first of equally good values wins: deterministic
            w, b = fit_logistic(xf, train_labels[fit_idx], c, wd, max_iter)
            acc = _topk(xv @ w.T + b, train_labels[val_idx])["top1"]
            if acc > best_val + 1e-12:
                best_wd, best_val = wd, acc
    std = Standardiser(train_feats)
    w, b = fit_logistic(std(train_feats), train_labels, c, best_wd, max_iter)
    out = _topk(std(test_feats) @ w.T + b, test_labels)
    out.update(weight_decay=best_wd, val_top1=best_val)
    return out
