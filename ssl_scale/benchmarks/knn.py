"""Weighted k-nearest-neighbour classification on L2-normalised features (cosine similarity,
votes weighted by exp(similarity / temperature)), as used to monitor SSL features."""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F


@torch.no_grad()
def knn_predict(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, k: int = 200,
                temperature: float = 0.07, num_classes: int | None = None, chunk: int = 1024) -> torch.Tensor:
    """Class scores (N_test, C): the sum over the k most similar training samples of
    exp(cos / temperature), per class. Ties in similarity are broken by training index."""
    train = F.normalize(train_feats.float(), dim=1)
    test = F.normalize(test_feats.float(), dim=1)
    labels = train_labels.long()
    c = int(num_classes or int(labels.max()) + 1)
    k = min(k, train.shape[0])
    out = []
    for i in range(0, test.shape[0], chunk):
        sim = test[i:i + chunk] @ train.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        scores = torch.zeros(sim.shape[0], c, device=sim.device)
        scores.scatter_add_(1, labels[top_idx], weights)
        out.append(scores)
    return torch.cat(out)


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, k: int = 200, temperature: float = 0.07,
                 num_classes: int | None = None) -> Dict[str, float]:
    """Top-1 and top-5 accuracy (fractions) of the weighted kNN classifier."""
    c = int(num_classes or int(max(train_labels.max(), test_labels.max())) + 1)
    scores = knn_predict(train_feats, train_labels, test_feats, k, temperature, c)
    ranked = scores.argsort(dim=1, descending=True, stable=True)
    labels = test_labels.long().view(-1, 1)
    top1 = (ranked[:, :1] == labels).any(1).float().mean().item()
    top5 = (ranked[:, : min(5, c)] == labels).any(1).float().mean().item()
    return {"top1": top1, "top5": top5}
