"""A model built on the meta device and materialised gets the initialisation of a normally built one:
Kaiming-normal convolutions (torchvision's rule), unit norm scales, fresh running statistics,
unit-norm prototypes, and zeroed last norms with zero_init_residual."""
import math

import pytest
import torch
import torch.nn as nn

from ssl_scale.distributed.parallelize import materialize
from ssl_scale.models import build_model


@pytest.mark.parametrize("trunk,zero", [("resnet50", False), ("regnet_y_800mf", True)])
def test_meta_init_matches_constructor_init(trunk, zero, one_thread):
    head = dict(hidden_dims=[256], output_dim=64, num_prototypes=[500])
    torch.manual_seed(0)
    meta = build_model(trunk, "imagenet", head, device="meta", zero_init_residual=zero)
    materialize(meta, torch.device("cpu"), rank=0, zero_init_residual=zero)
    ref = build_model(trunk, "imagenet", head, zero_init_residual=zero)
    assert not any(p.is_meta for p in meta.parameters()) and not any(b.is_meta for b in meta.buffers())
    mods, ref_mods = dict(meta.named_modules()), dict(ref.named_modules())
    for name, m in mods.items():
        r = ref_mods[name]
        if isinstance(m, nn.Conv2d) and m.weight.numel() > 20000:
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]  # groups do not enter (torchvision)
            expected = math.sqrt(2.0 / fan_out)  # Kaiming normal, fan-out, ReLU gain
            assert m.weight.std().item() == pytest.approx(expected, rel=0.05), name
            assert r.weight.std().item() == pytest.approx(expected, rel=0.05), name  # torchvision's rule too
        elif isinstance(m, nn.BatchNorm2d):
            torch.testing.assert_close(m.weight, r.weight, msg=name)  # ones, or zeros for zero_init_residual
            torch.testing.assert_close(m.bias, r.bias)
            torch.testing.assert_close(m.running_var, torch.ones_like(m.running_var))
            torch.testing.assert_close(m.running_mean, torch.zeros_like(m.running_mean))
    torch.testing.assert_close(meta.head.prototypes[0].weight.norm(dim=1), torch.ones(500))
    if zero:
        assert any(isinstance(m, nn.BatchNorm2d) and m.weight.abs().sum() == 0 for m in meta.modules())
    x = torch.randn(2, 3, 32, 32)
    z, scores = meta(x)
    assert torch.isfinite(z).all() and scores[0].shape == (2, 500)
