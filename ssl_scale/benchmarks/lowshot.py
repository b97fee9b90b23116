"""Low-shot linear classification (VOC07 low-shot style, Goyal et al. 2019): for each k, k training images
per class drawn with several seeds; a linear SVM (or logistic regression) on L2-normalised frozen
features with its cost C chosen by cross-validation on the low-shot set when every class has at least two
images, else on a fixed grid scored on held-out train images; mean and std of test top-1 over seeds.
Features are centred on the train split's mean before the L2 normalisation."""
from __future__ import annotations

import warnings
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_COSTS = (0.01, 0.1, 1.0, 10.0, 100.0)
CLASSIFIERS = ("svm", "logistic")


def sample_lowshot(labels, k: int, seed: int) -> np.ndarray:
    """Indices (sorted) of exactly k samples of every class, drawn by a seeded permutation per class."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(int(seed))
    out: List[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < k:
            raise ValueError(f"low-shot: class {int(c)} has {len(idx)} training images, fewer than k={k}; "
                             "lower the shots or add images")
        out.append(rng.permutation(idx)[:k])
    return np.sort(np.concatenate(out))


def _classifier(kind: str, c: float, seed: int):
    if kind == "svm":
        from sklearn.svm import LinearSVC

        return LinearSVC(C=c, dual=False, max_iter=3000, random_state=seed)  # primal: fast at high C
    if kind == "logistic":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=c, max_iter=2000)
    raise ValueError(f"low-shot: unknown classifier {kind!r} (valid: {', '.join(CLASSIFIERS)})")


def _scores(model, x: np.ndarray) -> np.ndarray:
    s = model.decision_function(x)
    return s if s.ndim == 2 else np.stack([-s, s], 1)


def _choose_cost(kind: str, x: np.ndarray, y: np.ndarray, costs: Sequence[float], seed: int, folds: int,
                 pool_x: np.ndarray, pool_y: np.ndarray) -> float:
    if len(costs) == 1:
        return float(costs[0])
    min_per_class = min(np.sum(y == c) for c in np.unique(y))
    acc = np.zeros(len(costs))
    if min_per_class >= 2:  # cross-validation on the low-shot set itself
        from sklearn.model_selection import StratifiedKFold

        n_splits = int(min(folds, min_per_class))
        skf = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        for tr, va in skf.split(x, y):
            for i, c in enumerate(costs):
                m = _classifier(kind, c, seed).fit(x[tr], y[tr])
                acc[i] += (m.predict(x[va]) == y[va]).mean()
    else:  # one image a class: score the grid on held-out train images
        for i, c in enumerate(costs):
            m = _classifier(kind, c, seed).fit(x, y)
            acc[i] = (m.predict(pool_x) == pool_y).mean()
    return float(costs[int(np.argmax(acc))])  # first of equally good values: deterministic


def lowshot_eval(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, shots: Sequence[int] = (1, 5, 10), seeds: Sequence[int] = (0, 1, 2),
                 costs: Sequence[float] = DEFAULT_COSTS, classifier: str = "svm", folds: int = 3,
                 val_per_class: int = 5) -> Dict[str, float]:
    """{f"{k}shot_top1": mean, f"{k}shot_top1_std": std over seeds} (fractions) for every k in shots."""
    if classifier not in CLASSIFIERS:
        raise ValueError(f"low-shot: unknown classifier {classifier!r} (valid: {', '.join(CLASSIFIERS)})")
    # centred on the train split's mean (an unsupervised statistic), then L2-normalised: frozen features
    # are often nearly collinear (all cosines near 1), which makes the SVM slow and its cost meaningless
    mean = train_feats.double().mean(0, keepdim=True)
    xtr = F.normalize(train_feats.double() - mean, dim=1).numpy()
    xte = F.normalize(test_feats.double() - mean, dim=1).numpy()
    ytr, yte = train_labels.long().numpy(), test_labels.long().numpy()
    out: Dict[str, float] = {}
    for k in shots:
        accs = []
        for seed in seeds:
            idx = sample_lowshot(ytr, int(k), int(seed))
            rest = np.setdiff1d(np.arange(len(ytr)), idx)
            pool = rest[sample_lowshot(ytr[rest], min(val_per_class, _min_count(ytr[rest])), seed + 7919)] \
                if len(rest) else idx
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ConvergenceWarning on tiny sets
                c = _choose_cost(classifier, xtr[idx], ytr[idx], list(costs), int(seed), folds, xtr[pool], ytr[pool])
                model = _classifier(classifier, c, int(seed)).fit(xtr[idx], ytr[idx])
            accs.append(float((model.predict(xte) == yte).mean()))
        out[f"{k}shot_top1"] = float(np.mean(accs))
        out[f"{k}shot_top1_std"] = float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0
    return out


def _min_count(y: np.ndarray) -> int:
    return int(min(np.sum(y == c) for c in np.unique(y))) if len(y) else 0
