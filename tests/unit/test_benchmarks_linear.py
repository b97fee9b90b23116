"""The torch linear probe agrees with scikit-learn's LogisticRegression on the same real features."""
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from ssl_scale.benchmarks.linear import Standardiser, fit_logistic, linear_probe, stratified_holdout


pytestmark = pytest.mark.usefixtures("one_thread")


def _digits():
    """1,797 real 8x8 handwritten digits (64 pixel features), a fixed seeded train/test split."""
    x, y = load_digits(return_X_y=True)
    perm = np.random.default_rng(0).permutation(len(y))
    x, y = torch.tensor(x[perm], dtype=torch.float32), torch.tensor(y[perm])
    return x[:1200], y[:1200], x[1200:], y[1200:]


@pytest.mark.parametrize("weight_decay", [1e-3, 1e-2])
def test_fixed_weight_decay_matches_sklearn(weight_decay):
    xtr, ytr, xte, yte = _digits()
    std = Standardiser(xtr)
    w, b = fit_logistic(std(xtr), ytr, 10, weight_decay, max_iter=500)
    ours = ((std(xte) @ w.T + b).argmax(1) == yte).double().mean().item()
    # mean CE + wd/2 |W|^2  ==  (1 / N) * (sum CE + 1 / (2 C) |W|^2)  with  C = 1 / (wd N)
    ref = LogisticRegression(C=1.0 / (weight_decay * len(ytr)), max_iter=5000, tol=1e-8)
    ref.fit(std(xtr).numpy(), ytr.numpy())
    theirs = ref.score(std(xte).numpy(), yte.numpy())
    assert abs(ours - theirs) <= 0.01, (ours, theirs)
    # the same optimum, not only the same accuracy
    agree = ((std(xte) @ w.T + b).argmax(1).numpy() == ref.predict(std(xte).numpy())).mean()
    assert agree >= 0.99


def test_sweep_refit_is_within_one_point_of_sklearn_at_the_chosen_cost():
    xtr, ytr, xte, yte = _digits()
    out = linear_probe(xtr, ytr, xte, yte, 10, weight_decays=[1e-3, 1e-2, 1e-1], val_fraction=0.2, seed=0)
    assert out["weight_decay"] in (1e-3, 1e-2, 1e-1)
    std = Standardiser(xtr)
    ref = LogisticRegression(C=1.0 / (out["weight_decay"] * len(ytr)), max_iter=5000, tol=1e-8)
    ref.fit(std(xtr).numpy(), ytr.numpy())
    assert abs(out["top1"] - ref.score(std(xte).numpy(), yte.numpy())) <= 0.01
    assert out["top1"] > 0.9 and out["top5"] >= out["top1"]
    assert linear_probe(xtr, ytr, xte, yte, 10, weight_decays=[1e-3, 1e-2, 1e-1]) == out  # deterministic


def test_stratified_holdout_takes_a_fraction_of_every_class():
    y = torch.arange(10).repeat_interleave(50)
    fit, held = stratified_holdout(y, 0.2, seed=3)
    assert len(set(fit.tolist()) & set(held.tolist())) == 0 and len(fit) + len(held) == 500
    assert torch.bincount(y[held]).tolist() == [10] * 10
    assert torch.equal(held, stratified_holdout(y, 0.2, seed=3)[1])
    assert not torch.equal(held, stratified_holdout(y, 0.2, seed=4)[1])
