"""Low-shot sampling takes exactly k images a class, deterministically per seed; the label-fraction subset
of fine-tuning likewise; the low-shot evaluation is seeded and reports mean and std over seeds."""
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from ssl_scale.benchmarks.finetune import label_subset
from ssl_scale.benchmarks.lowshot import lowshot_eval, sample_lowshot


def _labels():
    rng = np.random.default_rng(0)
    return rng.permutation(np.repeat(np.arange(7), [30, 12, 25, 10, 40, 11, 19]))


@pytest.mark.parametrize("k", [1, 5, 10])
def test_exactly_k_per_class_and_seed_deterministic(k):
    y = _labels()
    idx = sample_lowshot(y, k, seed=1)
    assert len(idx) == len(set(idx.tolist())) == 7 * k
    assert np.bincount(y[idx]).tolist() == [k] * 7
    assert np.array_equal(idx, sample_lowshot(y, k, seed=1))
    assert not np.array_equal(idx, sample_lowshot(y, k, seed=2))


def test_too_few_images_is_a_clear_error():
    with pytest.raises(ValueError, match="class 3 has 10 training images, fewer than k=11"):
        sample_lowshot(_labels(), 11, seed=0)


def test_label_fraction_subset():
    y = np.repeat(np.arange(4), 100)
    idx = label_subset(y, 0.1, seed=0)
    assert np.bincount(y[idx]).tolist() == [10] * 4
    assert np.array_equal(idx, label_subset(y, 0.1, seed=0))
    assert np.bincount(y[label_subset(y, 0.01, seed=0)]).tolist() == [1] * 4
    assert len(label_subset(y, 1.0, seed=0)) == 400
    with pytest.raises(ValueError, match="label_fraction"):
        label_subset(y, 0.0, seed=0)


def test_lowshot_eval_on_real_digits_is_seeded():
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    xtr, ytr, xte, yte = x[:1000], y[:1000], x[1000:], y[1000:]
    out = lowshot_eval(xtr, ytr, xte, yte, shots=[1, 5], seeds=[0, 1, 2], costs=[0.1, 1.0, 10.0])
    assert set(out) == {"1shot_top1", "1shot_top1_std", "5shot_top1", "5shot_top1_std"}
    assert out["5shot_top1"] > out["1shot_top1"] > 0.3  # far above chance (0.1)
    assert out["1shot_top1_std"] > 0
    assert lowshot_eval(xtr, ytr, xte, yte, shots=[1, 5], seeds=[0, 1, 2], costs=[0.1, 1.0, 10.0]) == out
