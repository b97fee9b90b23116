"""Sinkhorn-Knopp against a plain-loop float64 reference, its marginals, overflow and float64 option."""
import math

import torch

from ssl_scale.methods import sinkhorn_knopp


def reference_sinkhorn(scores, eps, iters):
    """Written out with python loops over prototypes and samples, in float64."""
    s = scores.double().tolist()
    b, k = len(s), len(s[0])
    top = max(max(row) for row in s)
    q = [[math.exp((s[i][j] - top) / eps) for i in range(b)] for j in range(k)]  # (K, B)
    total = sum(sum(row) for row in q)
    q = [[v / total for v in row] for row in q]
    for _ in range(iters):
        for j in range(k):
            r = sum(q[j])
            q[j] = [v / r / k for v in q[j]]
        for i in range(b):
            c = sum(q[j][i] for j in range(k))
            for j in range(k):
                q[j][i] = q[j][i] / c / b
    return torch.tensor([[q[j][i] * b for j in range(k)] for i in range(b)], dtype=torch.float64)


def _scores(b=12, k=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(b, 5, generator=g), dim=1)
    c = torch.nn.functional.normalize(torch.randn(k, 5, generator=g), dim=1)
    return z @ c.t()


def test_matches_reference_loop():
    scores = _scores().double()
    for iters in (1, 3, 5):
        got = sinkhorn_knopp(scores, 0.05, iters)
        assert got.dtype == torch.float64 and got.shape == scores.shape
        torch.testing.assert_close(got, reference_sinkhorn(scores, 0.05, iters), rtol=1e-10, atol=1e-12)


def test_float32_close_to_reference():
    scores = _scores(seed=1)
    got = sinkhorn_knopp(scores, 0.05, 3)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), reference_sinkhorn(scores, 0.05, 3), rtol=1e-4, atol=1e-5)


def test_marginals():
    b, k = 16, 4
    scores = _scores(b, k, seed=2)
    q = sinkhorn_knopp(scores.double(), 0.5, 3)
    torch.testing.assert_close(q.sum(1), torch.ones(b, dtype=torch.float64))  # each sample: a distribution
    q = sinkhorn_knopp(scores.double(), 0.5, 200)  # converged: each prototype gets B / K of the mass
    torch.testing.assert_close(q.sum(0), torch.full((k,), b / k, dtype=torch.float64), rtol=1e-6, atol=1e-6)


def test_huge_scores_do_not_overflow():
    base = _scores(seed=3)
    scores = base + 1e4  # exp(score / eps) alone would be inf, even in float64
    assert torch.isinf(torch.exp(scores.double() / 0.05)).all()
    q = sinkhorn_knopp(scores, 0.05, 3)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(1), torch.ones(q.shape[0]))
    # a constant shift of every score changes nothing (up to float32 rounding of the shifted scores)
    torch.testing.assert_close(q.double(), reference_sinkhorn(base, 0.05, 3), rtol=0.05, atol=1e-3)
    torch.testing.assert_close(sinkhorn_knopp(base.double() + 1e4, 0.05, 3), reference_sinkhorn(base, 0.05, 3))


def test_float64_option():
    scores = _scores(seed=4)
    q = sinkhorn_knopp(scores, 0.01, 3, use_float64=True)
    assert q.dtype == torch.float32  # computed in float64, returned in the scores' float32
    torch.testing.assert_close(q.double(), reference_sinkhorn(scores, 0.01, 3), rtol=1e-6, atol=1e-7)


def test_no_grad_and_reduce_callables_called():
    scores = _scores().requires_grad_()
    calls = {"sum": 0, "max": 0}

    def rsum(t):
        calls["sum"] += 1
        return t

    def rmax(t):
        calls["max"] += 1
        return t

    q = sinkhorn_knopp(scores, 0.05, 3, reduce_sum=rsum, reduce_max=rmax)
    assert not q.requires_grad
    assert calls == {"sum": 1 + 3, "max": 1}
    torch.testing.assert_close(q, sinkhorn_knopp(scores, 0.05, 3))
