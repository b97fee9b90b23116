"""Activation checkpointing changes memory, not results: for every registered trunk up to 25 M
parameters (ResNet basic and bottleneck blocks, RegNetY blocks), the same output, input gradient,
parameter gradients and batch-norm running statistics as the same trunk without it; and the
state-dict keys are unchanged."""
import copy

import pytest
import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

from ssl_scale.distributed.parallelize import apply_ac
from ssl_scale.models.trunks import TRUNKS, build_trunk, trunk_blocks


def _size(name):
    return sum(p.numel() for p in build_trunk(name, device="meta").parameters())


SMALL_TRUNKS = [n for n in TRUNKS.names() if _size(n) <= 25e6]


def _run(trunk, x):
    x = x.clone().requires_grad_(True)
    out = trunk(x)
    (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in trunk.named_parameters()}


@pytest.mark.parametrize("name", SMALL_TRUNKS)
def test_same_output_and_gradients_with_checkpointing(name, one_thread):
    torch.manual_seed(0)
    plain = build_trunk(name, stem="cifar")
    wrapped = copy.deepcopy(plain)
    n = apply_ac(wrapped)
    assert n == len(trunk_blocks(plain)) and all(isinstance(b, CheckpointWrapper) for b in trunk_blocks(wrapped))
    x = torch.randn(4, 3, 16, 16)
    out_a, gx_a, g_a = _run(plain, x)
    out_b, gx_b, g_b = _run(wrapped, x)
    torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx_b, gx_a, rtol=1e-4, atol=1e-6)
    g_b = {k.replace("_checkpoint_wrapped_module.", ""): v for k, v in g_b.items()}
    assert g_a.keys() == g_b.keys()
    for k in g_a:
        torch.testing.assert_close(g_b[k], g_a[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")
    # the recomputation in backward does not count the batch a second time
    sd_a, sd_b = plain.state_dict(), wrapped.state_dict()
    assert sd_a.keys() == sd_b.keys()
    for k in sd_a:
        if "running" in k or "num_batches" in k:
            torch.testing.assert_close(sd_b[k], sd_a[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")


def test_every_kth_block():
    trunk = build_trunk("resnet50", device="meta")
    assert apply_ac(trunk, every=3) == 6  # blocks 0, 3, ..., 15 of 16
    flags = [isinstance(b, CheckpointWrapper) for b in trunk_blocks(trunk)]
    assert flags == [i % 3 == 0 for i in range(16)]
