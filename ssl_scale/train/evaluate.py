"""The kNN check at the end of a run: learned trunk against the same trunk at its random initialisation."""
from __future__ import annotations

from typing import Dict

import torch

from ssl_scale.benchmarks.features import extract_features
from ssl_scale.benchmarks.knn import knn_accuracy
from ssl_scale.data import DATASETS, TRANSFORMS
from ssl_scale.train.build import build_ssl_model


def _eval_sets(e):
    if e.source == "embedded":
        return DATASETS.get("embedded")(split="train"), DATASETS.get("embedded")(split="test")
    return DATASETS.get(e.source)(e.train_path), DATASETS.get(e.source)(e.test_path)


def knn_report(cfg, trunk: torch.nn.Module, device="cpu") -> Dict[str, Dict[str, float]]:
    """{'random': {top1, top5}, 'trained': {...}} on the eval datasets of `cfg.eval`."""
    e = cfg.eval
    train_set, test_set = _eval_sets(e)
    a = cfg.data.augment
    tf = TRANSFORMS.get("eval")(e.image_size, resize=e.resize, mean=tuple(a.mean), std=tuple(a.std))
    torch.manual_seed(cfg.seed)  # the exact initial weights of the run
    random_trunk = build_ssl_model(cfg.model).trunk.to(device)
    out = {}
    for name, net in (("random", random_trunk), ("trained", trunk)):
        xtr, ytr = extract_features(net, train_set, tf, e.batch_size, device)
        xte, yte = extract_features(net, test_set, tf, e.batch_size, device)
        out[name] = knn_accuracy(xtr, ytr, xte, yte, k=e.k, temperature=e.temperature)
    return out
