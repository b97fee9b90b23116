"""Sinkhorn-Knopp and the SwAV loss on 2 gloo processes, each with half of the batch, equal one
process on the whole batch. The all-reduce callables are built here from torch.distributed."""
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ssl_scale.methods import ReduceOps, SwAVLoss, sinkhorn_knopp

try:  # tests/ as a package, or tests/distributed on sys.path (pytest's default rootdir mode)
    from ._spawn import run_distributed
except ImportError:
    from _spawn import run_distributed

WORLD, CROPS, B, D, KS, L = 2, 3, 8, 6, [5, 7], 8  # B: global batch; L: queue length per process


def _reduce_ops() -> ReduceOps:
    return ReduceOps(sum=lambda t: dist.all_reduce(t, op=dist.ReduceOp.SUM),
                     max=lambda t: dist.all_reduce(t, op=dist.ReduceOp.MAX))


def _inputs():
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(CROPS, B, D, generator=g, dtype=torch.float64), dim=2)  # (crop, sample, D)
    protos = [F.normalize(torch.randn(k, D, generator=g, dtype=torch.float64), dim=1) for k in KS]
    queue = F.normalize(torch.randn(2, WORLD * L, D, generator=g, dtype=torch.float64), dim=2)
    return z, protos, queue


def _losses(z, protos, queue, ops, queue_length):
    """Loss, its gradient w.r.t. the scores and statistics, without and with a full queue."""
    out = {}
    for name, qlen in (("plain", 0), ("queue", queue_length)):
        loss_fn = SwAVLoss(num_crops=CROPS, queue_length=qlen, queue_start_epoch=1, reduce_ops=ops)
        if qlen:
            loss_fn.load_state_dict({"queue": queue.clone(), "queue_filled": torch.tensor(qlen)})
        scores = [(z @ c.t()).requires_grad_(True) for c in protos]
        loss = loss_fn(z, scores, protos, epoch=1)
        loss.backward()
        out[name] = {"loss": loss.detach(), "grads": [s.grad for s in scores],
                     **{k: torch.as_tensor(v) for k, v in loss_fn.last_stats.items()}}
    return out


def _per_rank():
    rank = dist.get_rank()
    z, protos, queue = _inputs()
    half = B // WORLD
    z_local = z[:, rank * half:(rank + 1) * half].reshape(-1, D)  # crop-major rows of this rank
    scores = z_local[:half] @ protos[0].t()
    ops = _reduce_ops()
    return {"codes": sinkhorn_knopp(scores, 0.05, 3, ops),
            "codes32": sinkhorn_knopp(scores.float(), 0.05, 3, ops, use_float64=True),
            **_losses(z_local, protos, queue[:, rank * L:(rank + 1) * L], ops, L)}


@pytest.fixture(scope="module")
def both():
    z, protos, queue = _inputs()
    full = z.reshape(-1, D)
    scores = z[0] @ protos[0].t()
    single = {"codes": sinkhorn_knopp(scores, 0.05, 3), "codes32": sinkhorn_knopp(scores.float(), 0.05, 3,
                                                                                     use_float64=True),
              **_losses(full, protos, queue, None, WORLD * L)}
    return single, run_distributed(_per_rank, WORLD)


def test_sinkhorn_two_processes_equal_one(both):
    single, ranks = both
    torch.testing.assert_close(torch.cat([r["codes"] for r in ranks]), single["codes"], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(torch.cat([r["codes32"] for r in ranks]), single["codes32"], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("case", ["plain", "queue"])
def test_swav_loss_two_processes_equal_one(both, case):
    single, ranks = both
    one, two = single[case], [r[case] for r in ranks]
    # Equal shares of the global batch: the global loss is the mean of the ranks' losses ...
    torch.testing.assert_close(sum(r["loss"] for r in two) / WORLD, one["loss"], rtol=1e-12, atol=1e-14)
    # ... and each rank's gradient (which DDP averages) is WORLD x its rows of the global gradient.
    half = B // WORLD
    for i in range(len(KS)):
        g_one = one["grads"][i].view(CROPS, B, -1)
        for rank, r in enumerate(two):
            torch.testing.assert_close(r["grads"][i].view(CROPS, half, -1) / WORLD,
                                       g_one[:, rank * half:(rank + 1) * half], rtol=1e-10, atol=1e-14)
    # Prototype usage is over the global batch; the entropy is this rank's mean.
    for r in two:
        torch.testing.assert_close(r["prototype_usage"], one["prototype_usage"])
    torch.testing.assert_close(sum(r["assignment_entropy"] for r in two) / WORLD, one["assignment_entropy"])


def test_queue_changes_the_loss(both):
    single, _ = both
    assert not torch.allclose(single["plain"]["loss"], single["queue"]["loss"])
