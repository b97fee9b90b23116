"""Data-parallel training on 2 gloo processes with synchronised batch norm equals one process with
the same global batch and the same crops; GroupSyncBatchNorm equals BatchNorm on the whole batch."""
import json

import torch
import torch.distributed as dist

from tests.distributed._spawn import run_distributed


def _train(run_dir, batch, steps):
    from ssl_scale.train.trainer import Trainer
    from tests.helpers import tiny_config

    t = Trainer(tiny_config(run_dir, f"data.batch_size={batch}", f"train.max_steps={steps}",
                            "run.checkpoint_every=100", "train.sync_bn=global"))
    t.fit()
    return {k: v.detach().clone() for k, v in t.model.state_dict().items()}


def test_ddp_two_processes_equal_one_process(tmp_path):
    single = _train(tmp_path / "one", 16, 3)
    ranks = run_distributed(_train, 2, tmp_path / "two", 8, 3)
    for k, v in single.items():
        if v.is_floating_point():
            assert torch.allclose(ranks[0][k], ranks[1][k], atol=0, rtol=0), f"ranks differ on {k}"
            assert torch.allclose(v, ranks[0][k], atol=2e-5, rtol=1e-4), f"{k}: max diff {(v - ranks[0][k]).abs().max()}"
    one = [json.loads(l) for l in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(l) for l in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["world_size"] for r in two] == [2, 2, 2]
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) < 1e-5


def _in_backward_under_ddp(run_dir):
    from ssl_scale.config import ConfigError
    from ssl_scale.train.trainer import Trainer
    from tests.helpers import tiny_config

    try:
        Trainer(tiny_config(run_dir / str(dist.get_rank()), "data.batch_size=8", "optim.in_backward=true"))
    except ConfigError as e:
        return str(e)
    return "no error"


def test_optimizer_in_backward_under_ddp_is_a_clear_error(tmp_path):
    """DDP all-reduces gradients after autograd accumulates them, so a per-parameter step would use a
    rank's own gradient: the trainer refuses it, naming the key and the fix."""
    for message in run_distributed(_in_backward_under_ddp, 2, tmp_path):
        assert message.startswith("'optim.in_backward': needs parallel.mode=fsdp on more than one process"), message


def _syncbn(x_full, w_grad_seed):
    from ssl_scale.distributed.syncbn import convert_sync_batchnorm

    torch.manual_seed(0)
    bn = convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3)))
    r, n = dist.get_rank(), dist.get_world_size()
    x = x_full.chunk(n)[r].clone().requires_grad_(True)
    g = torch.randn(x_full.shape, generator=torch.Generator().manual_seed(w_grad_seed)).chunk(n)[r]
    y = bn(x)
    (y * g).sum().backward()
    return y.detach(), x.grad, bn[0].weight.grad, bn[0].running_var.clone()


def test_group_sync_batchnorm_equals_full_batch():
    x = torch.randn(8, 3, 5, 5) * 3 + 1
    outs = run_distributed(_syncbn, 2, x, 7)
    bn = torch.nn.BatchNorm2d(3)
    xf = x.clone().requires_grad_(True)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    y = bn(xf)
    (y * g).sum().backward()
    assert torch.allclose(torch.cat([o[0] for o in outs]), y.detach(), atol=1e-5)
    assert torch.allclose(torch.cat([o[1] for o in outs]), xf.grad, atol=1e-5)
    # DDP averages gradients over ranks; the parameter gradient of each rank is its share of the sum
    assert torch.allclose(outs[0][2] + outs[1][2], bn.weight.grad, atol=1e-4)
    assert torch.allclose(outs[0][3], bn.running_var, atol=1e-6)
