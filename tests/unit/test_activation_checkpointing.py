"""Activation checkpointing changes memory, not results: for every registered trunk up to 25 M
parameters (ResNet basic and bottleneck blocks, RegNetY blocks), the same output, input gradient,
parameter gradients and batch-norm running statistics as the same trunk without it; and the
state-dict keys are unchanged."""
import copy

import pytest
import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

from ssl_scale.distributed.parallelize import apply_ac
from ssl_scale.models.trunks import TRUNKS, build_trunk, trunk_blocks, trunk_stages


def _size(name):
    return sum(p.numel() for p in build_trunk(name, device="meta").parameters())


SMALL_TRUNKS = [n for n in TRUNKS.names() if _size(n) <= 25e6]


def _run(trunk, x):
    x = x.clone().requires_grad_(True)
    out = trunk(x)
    (out * torch.linspace(-1, 1, out.shape[1])).sum().backward()
    return out.detach(), x.grad, {n: p.grad.clone() for n, p in trunk.named_parameters()}


def _assert_same_run(plain, wrapped, x):
    """The same output, input gradient and parameter gradients (checkpoint wrappers' prefixes removed)."""
    out_a, gx_a, g_a = _run(plain, x)
    out_b, gx_b, g_b = _run(wrapped, x)
    torch.testing.assert_close(out_b, out_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx_b, gx_a, rtol=1e-4, atol=1e-6)
    g_b = {k.replace("_checkpoint_wrapped_module.", ""): v for k, v in g_b.items()}
    assert g_a.keys() == g_b.keys()
    for k in g_a:
        torch.testing.assert_close(g_b[k], g_a[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("name", SMALL_TRUNKS)
def test_same_output_and_gradients_with_checkpointing(name, one_thread):
    torch.manual_seed(0)
    plain = build_trunk(name, stem="cifar")
    wrapped = copy.deepcopy(plain)
    n = apply_ac(wrapped)
    assert n == len(trunk_blocks(plain)) and all(isinstance(b, CheckpointWrapper) for b in trunk_blocks(wrapped))
    _assert_same_run(plain, wrapped, torch.randn(4, 3, 16, 16))
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


def test_chosen_stages_only_and_the_same_gradients(one_thread):
    torch.manual_seed(0)
    plain = build_trunk("regnet_y_400mf", stem="cifar")
    wrapped = copy.deepcopy(plain)
    depths = [len(list(s.children())) for s in trunk_stages(plain)]  # 1, 3, 6, 6
    assert apply_ac(wrapped, stages=[0, 2]) == depths[0] + depths[2]
    flags = [isinstance(b, CheckpointWrapper) for b in trunk_blocks(wrapped)]
    assert flags == [s in (0, 2) for s, d in enumerate(depths) for _ in range(d)]
    _assert_same_run(plain, wrapped, torch.randn(2, 3, 16, 16))


def test_a_stage_the_trunk_lacks_is_a_clear_error():
    from ssl_scale.config import ConfigError

    with pytest.raises(ConfigError, match=r"^'parallel.ac_stages': stage 4 does not exist; this trunk has stages 0-3"):
        apply_ac(build_trunk("resnet18", device="meta"), stages=[1, 4])


def test_large_blocks_split_into_layer_units_unless_torch_cannot_with_checkpointing(monkeypatch, caplog):
    from ssl_scale.distributed.parallelize import _units_to_split

    trunk = build_trunk("resnet18", device="meta")
    blocks = trunk_blocks(trunk)
    big = [b for b in blocks if sum(p.numel() for p in b.parameters()) > 500_000]  # stages 3 and 4: 4 blocks
    assert _units_to_split(blocks, 0) == []
    assert _units_to_split(blocks, 500_000) == big and len(big) == 4
    apply_ac(trunk, stages=[3])  # the last stage's 2 blocks checkpointed
    blocks = trunk_blocks(trunk)
    monkeypatch.setattr(torch, "__version__", "2.11.0")
    assert len(_units_to_split(blocks, 500_000)) == 4
    monkeypatch.setattr(torch, "__version__", "2.10.0")
    with caplog.at_level("WARNING"):
        kept = _units_to_split(blocks, 500_000)
    assert kept == [b for b in blocks if b in big and not isinstance(b, CheckpointWrapper)] and len(kept) == 2
    assert "2 checkpointed block(s) over 500000 parameters stay one FSDP unit each: torch 2.10.0" in caplog.text
