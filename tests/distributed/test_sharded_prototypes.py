"""Prototypes split by rows over 2 and 4 gloo processes equal the unsharded head on one process
holding the whole batch: the loss, the prototype gradients (each rank's rows), the embedding
gradients, the statistics and the Sinkhorn codes; and each rank stores only K/N prototypes."""
import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ssl_scale.methods import SwAVLoss, sinkhorn_knopp
from tests.distributed._spawn import run_distributed

CROPS, B, D, KS = 3, 8, 6, (8, 12)  # B: global batch


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(CROPS, B, D, generator=g), dim=2)
    protos = [F.normalize(torch.randn(k, D, generator=g), dim=1) for k in KS]
    return emb, protos


def _reference():
    emb, protos = _data()
    z = emb.reshape(-1, D).clone().requires_grad_(True)
    cs = [p.clone().requires_grad_(True) for p in protos]
    fn = SwAVLoss(num_crops=CROPS, crops_for_assign=(0, 1))
    loss = fn(z, [z @ c.t() for c in cs], cs)
    loss.backward()
    codes = sinkhorn_knopp(emb[0] @ protos[0].t(), 0.05, 3)
    return {"loss": loss.detach(), "proto_grads": [c.grad for c in cs], "emb_grad": z.grad.view(CROPS, B, D),
            "codes": codes, **{k: v.clone() for k, v in fn.last_stats.items()}}


def _sharded():
    from torch.distributed.device_mesh import init_device_mesh

    from ssl_scale.distributed import reduce_fns, shard_reductions
    from ssl_scale.distributed.prototypes import ShardedPrototypes

    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    emb, protos = _data()
    per = B // world
    z = emb[:, rank * per:(rank + 1) * per].reshape(-1, D).clone().requires_grad_(True)
    layers = []
    for c in protos:
        linear = nn.Linear(D, c.shape[0], bias=False)
        linear.weight.data.copy_(c)
        layers.append(ShardedPrototypes(linear, mesh))
    s, m = reduce_fns()
    fn = SwAVLoss(num_crops=CROPS, crops_for_assign=(0, 1), reduce_sum=s, reduce_max=m, **shard_reductions(world))
    loss = fn(z, [layer(z) for layer in layers], [layer.weight for layer in layers])
    loss.backward()
    k0 = KS[0] // world
    scores0 = emb[0] @ protos[0][rank * k0:(rank + 1) * k0].t()  # every sample, this rank's prototypes
    codes = sinkhorn_knopp(scores0, 0.05, 3, reduce_sum=s, reduce_max=m, prototypes_split=True)
    return {"loss": loss.detach(), "proto_grads": [layer.weight.grad.to_local() for layer in layers],
            "local_rows": [layer.weight.to_local().shape[0] for layer in layers], "emb_grad": z.grad.view(CROPS, per, D),
            "codes": codes, **{k: v.clone() for k, v in fn.last_stats.items()}}


@pytest.mark.parametrize("world", [2, 4])
def test_sharded_prototypes_equal_unsharded_head(world):
    ref = _reference()
    ranks = run_distributed(_sharded, world)
    per = B // world
    for r, out in enumerate(ranks):
        torch.testing.assert_close(out["loss"], ref["loss"], rtol=1e-5, atol=1e-6)
        assert out["local_rows"] == [k // world for k in KS]
        for i, k in enumerate(KS):
            rows = slice(r * k // world, (r + 1) * k // world)
            torch.testing.assert_close(out["proto_grads"][i], ref["proto_grads"][i][rows], rtol=1e-4, atol=1e-6)
        # every rank's loss is the global loss, so its embedding gradient is N times its share of the
        # one-process gradient: what a data-parallel rank gets from its own batch before averaging
        torch.testing.assert_close(out["emb_grad"], world * ref["emb_grad"][:, r * per:(r + 1) * per],
                                   rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(out["prototype_usage"], ref["prototype_usage"])
        torch.testing.assert_close(out["assignment_entropy"], ref["assignment_entropy"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out["ln_k"], ref["ln_k"])
    k0 = KS[0] // world
    codes = torch.cat([out["codes"] for out in ranks], dim=1)  # prototype columns side by side
    torch.testing.assert_close(codes, ref["codes"], rtol=1e-5, atol=1e-7)
    assert all(c.shape == (B, k0) for c in (out["codes"] for out in ranks))
