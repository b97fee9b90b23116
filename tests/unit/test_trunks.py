"""Every registered trunk: build on meta (widths, parameter counts), small ones forward/backward on CPU,
exported weights loading strictly into the torchvision reference."""
import pytest
import torch
import torch.nn as nn
import torchvision
from torchvision.models.regnet import ResBottleneckBlock
from torchvision.models.resnet import BasicBlock, Bottleneck

from ssl_scale.models.trunks import (REGNET_SIZES, TRUNKS, RegNetParams, build_regnet, build_trunk,
                                     torchvision_reference, trunk_blocks, trunk_stages)
from ssl_scale.registry import UnknownNameError

torch.set_num_threads(1)

# name -> (num_features, trunk parameters in millions or None); the counts come from the papers' facts
# or, for torchvision's own sizes, from torchvision's published models minus their classifier.
EXPECTED = {
    "resnet18": (512, 11.18), "resnet34": (512, 21.28), "resnet50": (2048, 23.51),
    "resnet101": (2048, 42.50), "resnet152": (2048, 58.14),
    "resnet50w2": (4096, 94), "resnet50w4": (8192, 375), "resnet50w5": (10240, 586),
    "regnet_y_400mf": (440, None), "regnet_y_800mf": (784, None), "regnet_y_1_6gf": (888, None),
    "regnet_y_3_2gf": (1512, None), "regnet_y_8gf": (2016, None), "regnet_y_16gf": (3024, None),
    "regnet_y_32gf": (3712, None), "regnet_y_128gf": (7392, None),
    "regnet_y_256gf": (10444, 1272), "regnet_y_10b": (28280, 9320), "regnet_y_debug": (128, None),
}


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_every_trunk_has_expectations():
    assert set(TRUNKS.names()) == set(EXPECTED)
    assert len(TORCHVISION_SHIPPED) == 13  # 5 ResNets + 8 RegNetYs with published counts


@pytest.mark.parametrize("name", TRUNKS.names())
def test_meta_build(name):
    trunk = build_trunk(name, device="meta")
    width, millions = EXPECTED[name]
    assert trunk.num_features == width
    assert isinstance(trunk.fc, nn.Identity)
    assert all(p.is_meta for p in trunk.parameters())
    if millions is not None:  # the facts round to 3-4 significant digits
        assert n_params(trunk) == pytest.approx(millions * 1e6, rel=0.005)
    # the torchvision reference has exactly the same tensors (names and shapes)
    ref = torchvision_reference(name, device="meta")
    assert {k: v.shape for k, v in ref.state_dict().items()} == {k: v.shape for k, v in trunk.state_dict().items()}
    # stages and blocks are the real submodules, in forward order, covering every block
    stages, blocks = trunk_stages(trunk), trunk_blocks(trunk)
    assert len(stages) == 4
    kinds = (BasicBlock, Bottleneck, ResBottleneckBlock)
    every = [m for m in trunk.modules() if isinstance(m, kinds)]
    assert len(blocks) == len(every) and all(a is b for a, b in zip(blocks, every))


def test_regnet_sizes_match_torchvision_builders(monkeypatch):
    """Our numbers for torchvision's sizes give the block params its builders compute (no model built)."""
    import torchvision.models.regnet as tv_regnet

    seen = {}
    monkeypatch.setattr(tv_regnet, "RegNet", lambda block_params, **kw: seen.setdefault("p", block_params))
    shipped = [n for n in REGNET_SIZES if hasattr(torchvision.models, n)]
    assert len(shipped) == 8
    for name in shipped:
        getattr(tv_regnet, name)(weights=None)
        theirs, ours = seen.pop("p"), REGNET_SIZES[name].block_params()
        for field in ("depths", "widths", "group_widths", "bottleneck_multipliers", "strides", "se_ratio"):
            assert getattr(ours, field) == getattr(theirs, field), (name, field)


TORCHVISION_SHIPPED = [n for n in EXPECTED if hasattr(torchvision.models, n)]


@pytest.mark.parametrize("name", TORCHVISION_SHIPPED)
def test_param_count_equals_torchvision_published(name):
    """Exactly torchvision's published parameter count minus its 1000-class classifier."""
    meta = next(iter(torchvision.models.get_model_weights(name))).meta
    trunk = build_trunk(name, device="meta")
    assert n_params(trunk) == meta["num_params"] - (trunk.num_features * 1000 + 1000)


def test_seer_10b_size():
    trunk = build_trunk("regnet_y_10b", device="meta")
    assert n_params(trunk) / 1e9 == pytest.approx(9.32, abs=0.005)
    assert trunk.num_features == 28280 and [len(s) for s in trunk_stages(trunk)] == [2, 7, 17, 1]


def test_seer_256gf_stages():
    trunk = build_trunk("regnet_y_256gf", device="meta")
    stages = trunk_stages(trunk)
    assert [s[0].f.c[0].out_channels for s in stages] == [746, 1492, 4103, 10444]
    assert [len(s) for s in stages] == [2, 7, 17, 1]
    assert n_params(trunk) / 1e9 == pytest.approx(1.272, abs=0.001)


def test_wide_resnet_widens_the_stem():
    trunk = build_trunk("resnet50w2", device="meta")
    assert trunk.conv1.out_channels == 128 and trunk.bn1.num_features == 128
    assert [trunk_stages(trunk)[i][0].conv2.out_channels for i in range(4)] == [128, 256, 512, 1024]


SMALL = [("resnet18", "cifar", 32), ("regnet_y_debug", "cifar", 32), ("regnet_y_debug", "imagenet", 32),
         ("regnet_y_400mf", "imagenet", 64)]


@pytest.mark.parametrize("name,stem,px", SMALL)
def test_forward_backward(name, stem, px):
    torch.manual_seed(0)
    trunk = build_trunk(name, stem)
    out = trunk(torch.randn(2, 3, px, px))
    assert out.shape == (2, trunk.num_features)
    out.square().mean().backward()
    missing = [n for n, p in trunk.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in trunk.parameters())


def test_cifar_stem_keeps_resolution():
    trunk = build_trunk("resnet18", "cifar")
    assert trunk.conv1.stride == (1, 1) and trunk.conv1.kernel_size == (3, 3)
    assert isinstance(trunk.maxpool, nn.Identity)
    reg = build_trunk("regnet_y_debug", "cifar")
    assert reg.stem[0].stride == (1, 1)
    with pytest.raises(ValueError, match="stem"):
        build_trunk("resnet18", "tiny")


@pytest.mark.parametrize("name,stem,px", [("resnet18", "cifar", 32), ("resnet18", "imagenet", 64),
                                          ("resnet50", "imagenet", 64),
                                          ("regnet_y_400mf", "imagenet", 64), ("regnet_y_debug", "cifar", 32)])
def test_exported_weights_load_into_torchvision(name, stem, px):
    torch.manual_seed(0)
    trunk = build_trunk(name, stem)
    for m in trunk.modules():  # non-trivial running statistics, so eval outputs exercise the buffers
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    ref = torchvision_reference(name, stem)
    ref.load_state_dict(trunk.state_dict(), strict=True)
    trunk.eval(), ref.eval()
    x = torch.randn(2, 3, px, px)
    with torch.no_grad():
        torch.testing.assert_close(ref(x), trunk(x), rtol=0, atol=0)


def test_reference_uses_torchvision_builder():
    assert type(torchvision_reference("resnet18")) is torchvision.models.ResNet
    assert type(torchvision_reference("regnet_y_debug", device="meta")) is torchvision.models.RegNet


@pytest.mark.parametrize("name", ["resnet18", "regnet_y_debug"])
def test_zero_init_residual(name):
    trunk = build_trunk(name, zero_init_residual=True)
    for block in trunk_blocks(trunk):
        last_bn = block.bn2 if isinstance(block, BasicBlock) else block.f.c[1]
        assert torch.count_nonzero(last_bn.weight) == 0
    block = trunk_blocks(build_trunk(name))[0]  # default: torchvision's init, ones
    assert torch.all((block.bn2 if name == "resnet18" else block.f.c[1]).weight == 1)


def test_custom_regnet_size():
    params = RegNetParams(depth=4, w_0=16, w_a=8.0, w_m=2.0, group_width=8)
    trunk = build_regnet(params, stem="cifar")
    assert trunk.num_features == 32
    assert trunk(torch.randn(1, 3, 32, 32)).shape == (1, 32)
    with pytest.raises(Exception):
        params.depth = 5  # frozen


def test_unknown_trunk_lists_names_with_suggestion():
    with pytest.raises(UnknownNameError) as err:
        build_trunk("resnet5O")
    msg = str(err.value)
    assert "did you mean" in msg and "'resnet50'" in msg
    assert all(n in msg for n in TRUNKS.names())
    with pytest.raises(UnknownNameError):
        torchvision_reference("regnet_y_999gf")
