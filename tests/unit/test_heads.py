"""SwAV head (shapes, normalisation, scores) and the multi-crop SwAVModel forward."""
import pytest
import torch
import torch.nn as nn

from ssl_scale.models import SwAVModel, build_model, group_by_resolution
from ssl_scale.models.heads import HEADS, SwAVHead

torch.set_num_threads(1)


def unit_rows(t):
    return torch.allclose(t.norm(dim=1), torch.ones(t.shape[0]), atol=1e-5)


def test_registered():
    assert HEADS.get("swav") is SwAVHead


@pytest.mark.parametrize("hidden,out,bn", [([64, 48], 16, True), ([32], 16, False), ([], 16, False), ([], 0, False)])
def test_shapes_and_norms(hidden, out, bn):
    torch.manual_seed(0)
    head = SwAVHead(in_dim=24, hidden_dims=hidden, output_dim=out, batch_norm=bn, num_prototypes=[10, 7])
    assert sum(isinstance(m, nn.BatchNorm1d) for m in head.modules()) == (len(hidden) if bn else 0)
    dim = out or 24
    assert all(unit_rows(p.weight) for p in head.prototypes)  # initialised on the unit sphere
    x = torch.randn(5, 24)
    z, scores = head(x)
    assert z.shape == (5, dim) and unit_rows(z)
    assert [s.shape for s in scores] == [(5, 10), (5, 7)]
    if not hidden and out == 0:
        torch.testing.assert_close(z, x / x.norm(dim=1, keepdim=True))


def test_single_linear_projection():
    head = SwAVHead(in_dim=8, hidden_dims=[], output_dim=4, batch_norm=True, num_prototypes=[3])
    assert isinstance(head.projection, nn.Sequential) and len(head.projection) == 1
    assert isinstance(head.projection[0], nn.Linear)


def test_scores_are_cosines_with_normalised_prototypes():
    torch.manual_seed(0)
    head = SwAVHead(in_dim=12, hidden_dims=[16], output_dim=8, batch_norm=True, num_prototypes=[6, 4])
    with torch.no_grad():  # an optimizer step moved the prototypes off the sphere
        for p in head.prototypes:
            p.weight.mul_(torch.rand(p.weight.shape[0], 1) * 3 + 0.5)
    head.normalize_prototypes()
    assert all(unit_rows(p.weight) for p in head.prototypes)
    head.eval()
    x = torch.randn(9, 12)
    z, scores = head(x)
    mlp = head.projection
    expect_z = mlp(x)
    expect_z = expect_z / expect_z.norm(dim=1, keepdim=True)
    torch.testing.assert_close(z, expect_z)
    for proto, s in zip(head.prototypes, scores):
        c = proto.weight / proto.weight.norm(dim=1, keepdim=True)
        torch.testing.assert_close(s, expect_z @ c.t())
        assert s.abs().max() <= 1 + 1e-5


def test_normalize_prototypes_is_not_tracked_by_autograd():
    head = SwAVHead(in_dim=4, hidden_dims=[], output_dim=4, batch_norm=False, num_prototypes=[3])
    head.normalize_prototypes()
    assert head.prototypes[0].weight.grad_fn is None and head.prototypes[0].weight.requires_grad


def test_output_dim_zero_with_hidden_is_an_error():
    with pytest.raises(ValueError, match="output_dim"):
        SwAVHead(in_dim=4, hidden_dims=[8], output_dim=0, batch_norm=False, num_prototypes=[3])


def test_group_by_resolution():
    crops = [torch.zeros(2, 3, 32, 32)] * 2 + [torch.zeros(2, 3, 16, 16)] * 3 + [torch.zeros(2, 3, 32, 32)]
    assert [len(g) for g in group_by_resolution(crops)] == [2, 3, 1]


def test_grouped_forward_equals_per_crop_forward():
    torch.manual_seed(0)
    model = build_model("regnet_y_debug", "cifar", dict(hidden_dims=[32], output_dim=16, batch_norm=True,
                                                       num_prototypes=[20, 10]))
    model.train()
    crops = [torch.randn(3, 3, 32, 32) for _ in range(2)] + [torch.randn(3, 3, 16, 16) for _ in range(3)]
    model(crops)  # one training step's worth of BN statistics, so eval is not the identity
    calls = []
    model.trunk.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    model.eval()
    with torch.no_grad():
        z, scores = model(crops)
        assert calls == [6, 9]  # one trunk forward per resolution
        per_crop = [model(c) for c in crops]
    torch.testing.assert_close(z, torch.cat([p[0] for p in per_crop]))
    for i, s in enumerate(scores):
        torch.testing.assert_close(s, torch.cat([p[1][i] for p in per_crop]))
    assert z.shape == (15, 16) and [s.shape for s in scores] == [(15, 20), (15, 10)]


def test_build_model_meta_and_head_name():
    model = build_model("regnet_y_10b", "imagenet", dict(name="swav", hidden_dims=[8192, 8192], output_dim=256,
                                                        batch_norm=False, num_prototypes=[16000]), device="meta")
    assert isinstance(model, SwAVModel)
    assert model.head.projection[0].in_features == 28280
    assert all(p.is_meta for p in model.parameters())
    head_params = sum(p.numel() for p in model.head.parameters())
    assert head_params == 28280 * 8192 + 8192 + 8192 * 8192 + 8192 + 8192 * 256 + 256 + 256 * 16000


def test_models_import_nothing_distributed():
    import pathlib

    import ssl_scale.models as models

    root = pathlib.Path(models.__file__).parent
    for path in root.rglob("*.py"):
        assert "torch.distributed" not in path.read_text(), path
