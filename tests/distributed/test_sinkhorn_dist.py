"""Sinkhorn and the SwAV loss on 2 gloo processes (half the batch each) equal one process on the whole batch."""
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ssl_scale.methods import SwAVLoss, sinkhorn_knopp
from tests.distributed._spawn import run_distributed

WORLD, CROPS, B, D, KS = 2, 3, 8, 6, (7, 5)


def _reduce_sum(t):
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _reduce_max(t):
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(CROPS, B, D, generator=g), dim=2)  # (crop, global sample, dim)
    protos = [F.normalize(torch.randn(k, D, generator=g), dim=1) for k in KS]
    queue = F.normalize(torch.randn(WORLD, 2, 4, D, generator=g), dim=3)  # per rank: (assign crop, 4, D)
    return emb, protos, queue


def _local(emb, rank, world):
    """This rank's share of the global batch, crop-major rows."""
    per = emb.shape[1] // world
    return emb[:, rank * per:(rank + 1) * per].reshape(-1, emb.shape[2])


def _loss(emb, protos, epoch, queue=None, **reduce):
    emb = emb.clone().requires_grad_()
    protos = [p.clone().requires_grad_() for p in protos]
    fn = SwAVLoss(num_crops=CROPS, crops_for_assign=(0, 1), queue_length=0 if queue is None else queue.shape[1],
                  queue_start_epoch=1, **reduce)
    if queue is not None:
        fn.load_state_dict({"queue": queue, "queue_filled": torch.tensor(queue.shape[1])})
    loss = fn(emb, [emb @ c.t() for c in protos], protos, epoch=epoch)
    grads = torch.autograd.grad(loss, protos)
    return {"loss": loss.detach(), "proto_grads": [g.detach() for g in grads],
            **{k: v.clone() for k, v in fn.last_stats.items()}}


def _per_rank():
    rank, world = dist.get_rank(), dist.get_world_size()
    emb, protos, queue = _data()
    per = B // world
    scores = emb[0, rank * per:(rank + 1) * per] @ protos[0].t()  # crop 0, this rank's half
    red = dict(reduce_sum=_reduce_sum, reduce_max=_reduce_max)
    return {"codes": sinkhorn_knopp(scores.double(), 0.05, 3, **red),
            "codes32": sinkhorn_knopp(scores, 0.05, 3, use_float64=True, **red),
            "plain": _loss(_local(emb, rank, world), protos, epoch=0, **red),
            "queued": _loss(_local(emb, rank, world), protos, epoch=1, queue=queue[rank], **red)}


@pytest.fixture(scope="module")
def both():
    emb, protos, queue = _data()
    assign = emb[0] @ protos[0].t()  # crop 0 of the whole batch
    single = {"codes": sinkhorn_knopp(assign.double(), 0.05, 3),
              "codes32": sinkhorn_knopp(assign, 0.05, 3, use_float64=True),
              "plain": _loss(emb.reshape(-1, D), protos, epoch=0),
              # one process holding both ranks' queues (Sinkhorn does not care about sample order)
              "queued": _loss(emb.reshape(-1, D), protos, epoch=1, queue=torch.cat([queue[0], queue[1]], dim=1))}
    return single, run_distributed(_per_rank, WORLD)


def test_sinkhorn_two_processes_equal_one(both):
    single, ranks = both
    for key in ("codes", "codes32"):
        torch.testing.assert_close(torch.cat([r[key] for r in ranks]), single[key], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("variant", ["plain", "queued"])
def test_swav_loss_two_processes_equal_one(both, variant):
    single, ranks = both
    one, two = single[variant], [r[variant] for r in ranks]
    torch.testing.assert_close(sum(r["loss"] for r in two) / WORLD, one["loss"], rtol=1e-5, atol=1e-6)
    # DDP averages gradients over ranks: the averaged gradients equal the one-process gradients
    for i in range(len(KS)):
        torch.testing.assert_close(sum(r["proto_grads"][i] for r in two) / WORLD, one["proto_grads"][i],
                                   rtol=1e-4, atol=1e-6)
    for r in two:
        torch.testing.assert_close(r["prototype_usage"], one["prototype_usage"])
        torch.testing.assert_close(r["ln_k"], one["ln_k"])
    torch.testing.assert_close(sum(r["assignment_entropy"] for r in two) / WORLD, one["assignment_entropy"],
                               rtol=1e-4, atol=1e-6)


def _fails():
    if dist.get_rank() == 1:
        raise ValueError("boom on rank 1")
    return 0


def test_run_distributed_reports_rank_traceback():
    with pytest.raises(Exception, match="(?s)Process 1.*ValueError: boom on rank 1"):
        run_distributed(_fails, 2, timeout_s=60)
