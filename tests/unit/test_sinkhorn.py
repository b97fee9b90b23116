"""Sinkhorn-Knopp against a plain float64 loop written out here; marginals, float64, overflow."""
import numpy as np
import pytest
import torch

from ssl_scale.methods import sinkhorn_knopp


def reference_sinkhorn(scores: np.ndarray, eps: float, iters: int) -> np.ndarray:
    """The SwAV recipe in numpy float64, loops spelled out."""
    Q = np.exp(scores / eps).T  # K x B
    K, B = Q.shape
    Q = Q / Q.sum()
    for _ in range(iters):
        for k in range(K):
            Q[k, :] = Q[k, :] / Q[k, :].sum() / K
        for b in range(B):
            Q[:, b] = Q[:, b] / Q[:, b].sum() / B
    return (Q * B).T


@pytest.mark.parametrize("iters", [1, 3, 10])
def test_equals_reference_loop(iters):
    g = torch.Generator().manual_seed(0)
    scores = torch.nn.functional.normalize(torch.randn(12, 8, generator=g), dim=1)  # cosine-like scores
    ref = reference_sinkhorn(scores.double().numpy(), 0.05, iters)
    q = sinkhorn_knopp(scores, epsilon=0.05, iterations=iters)
    assert q.shape == (12, 8) and q.dtype == torch.float32
    np.testing.assert_allclose(q.numpy(), ref, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("iters,row_tol", [(3, 0.1), (300, 1e-6)])
def test_marginals_after_final_scaling(iters, row_tol):
    g = torch.Generator().manual_seed(1)
    B, K = 20, 5
    q = sinkhorn_knopp(torch.randn(B, K, generator=g).double(), epsilon=0.5, iterations=iters)
    # The last step normalises samples: each sample's code sums to 1 exactly ...
    torch.testing.assert_close(q.sum(dim=1), torch.ones(B, dtype=torch.float64))
    # ... and prototypes share the batch: each gets B/K of the mass (exactly once converged).
    torch.testing.assert_close(q.sum(dim=0), torch.full((K,), B / K, dtype=torch.float64), rtol=row_tol, atol=0)
    assert (q >= 0).all()


def test_float64_option_matches_reference_tightly():
    g = torch.Generator().manual_seed(2)
    scores = torch.rand(16, 6, generator=g) * 2 - 1
    ref = reference_sinkhorn(scores.double().numpy(), 0.05, 3)
    q64 = sinkhorn_knopp(scores, epsilon=0.05, iterations=3, use_float64=True)
    assert q64.dtype == torch.float32  # float32 in, float32 out; only the arithmetic is float64
    np.testing.assert_allclose(q64.numpy(), ref, rtol=1e-6, atol=1e-9)
    assert sinkhorn_knopp(scores.double(), 0.05, 3).dtype == torch.float64


def test_large_scores_do_not_overflow():
    g = torch.Generator().manual_seed(3)
    big = torch.rand(10, 7, generator=g) + 1000.0
    # exp(1000 / 0.05) overflows any float; the global max subtraction makes it a common factor,
    # so the codes are those of the scores without the offset.
    ref = reference_sinkhorn(big.double().numpy() - 1000.0, 0.05, 3)
    for use_float64 in (False, True):
        q = sinkhorn_knopp(big, epsilon=0.05, iterations=3, use_float64=use_float64)
        assert torch.isfinite(q).all()
        np.testing.assert_allclose(q.numpy(), ref, rtol=1e-4, atol=1e-7)


def test_no_gradient_flows():
    scores = torch.randn(4, 3, requires_grad=True)
    q = sinkhorn_knopp(scores, 0.05, 3)
    assert not q.requires_grad
