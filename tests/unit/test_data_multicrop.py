"""Multi-crop and eval transforms: counts, sizes, order, dtype, seeding, blur equivalence, solarize threshold."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from ssl_scale.data import TRANSFORMS
from ssl_scale.data.multicrop import (CropSpec, EvalTransform, MultiCropTransform, SeparableGaussianBlur,
                                      blur_kernel_size)


def _photo(w=48, h=40, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


CROPS = [CropSpec(32, 2, 0.14, 1.0), CropSpec(16, 3, 0.05, 0.14)]


def test_counts_sizes_order_dtype():
    t = MultiCropTransform(CROPS, blur_p=[1.0, 0.5], solarize_p=0.2)
    out = t(_photo())
    assert len(out) == t.num_crops == 5
    assert [tuple(c.shape) for c in out] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    assert all(c.dtype == torch.float32 and type(c) is torch.Tensor for c in out)
    assert TRANSFORMS.get("multicrop") is MultiCropTransform and TRANSFORMS.get("eval") is EvalTransform


def test_deterministic_under_a_seed_and_different_otherwise():
    t = MultiCropTransform(CROPS)
    img = _photo()
    torch.manual_seed(7)
    a = t(img)
    torch.manual_seed(7)
    b = t(img)
    torch.manual_seed(8)
    c = t(img)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert not torch.equal(a[0], a[1])  # two crops of one group differ


def test_optional_steps_only_when_enabled():
    def names(t):
        return [type(s).__name__ for _, p in t.pipelines for s in p.transforms]

    t = MultiCropTransform(CROPS, blur_p=[0.5, 0.0], solarize_p=0.0)
    groups = [[type(s).__name__ for s in p.transforms] for _, p in t.pipelines]
    assert "RandomSolarize" not in names(t)
    assert [g.count("RandomApply") for g in groups] == [2, 1]  # jitter in both, blur only in group 0
    blurs = [s for s in t.pipelines[0][1].transforms if type(s).__name__ == "RandomApply"][1]
    assert isinstance(blurs.transforms[0], SeparableGaussianBlur)
    assert tuple(blurs.transforms[0].kernel_size) == (3, 3)
    assert "RandomSolarize" in names(MultiCropTransform(CROPS, solarize_p=0.1))
    with pytest.raises(ValueError, match="blur_p"):
        MultiCropTransform(CROPS, blur_p=[0.5])
    with pytest.raises(ValueError):
        CropSpec(32, 1, 0.5, 0.2)
    assert [blur_kernel_size(s) for s in (224, 96, 32, 16)] == [23, 11, 3, 3]


def test_solarize_threshold_is_in_pixel_units():
    t = MultiCropTransform([CropSpec(8, 1, 1.0, 1.0)], flip_p=0, color_jitter_p=0, grayscale_p=0, blur_p=0,
                           solarize_p=1.0, mean=(0, 0, 0), std=(1, 1, 1))
    bright = t(Image.new("RGB", (8, 8), (200, 200, 200)))[0]
    dark = t(Image.new("RGB", (8, 8), (100, 100, 100)))[0]
    assert torch.allclose(bright, torch.full_like(bright, 55 / 255))
    assert torch.allclose(dark, torch.full_like(dark, 100 / 255))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_separable_blur_matches_torchvision(dtype):
    x = torch.randint(0, 256, (3, 40, 36), dtype=torch.uint8)
    if dtype == torch.float32:
        x = x.float() / 255
    params = {"sigma": [1.3, 1.3]}
    ours = SeparableGaussianBlur(11, sigma=(0.1, 2.0)).transform(x, params)
    ref = v2.GaussianBlur(11, sigma=(0.1, 2.0)).transform(x, params)
    assert ours.dtype == dtype and ours.shape == x.shape
    if dtype == torch.uint8:
        assert (ours.int() - ref.int()).abs().max() <= 1
    else:
        assert torch.allclose(ours, ref, atol=1e-5)


def test_eval_transform():
    img = _photo(40, 30)
    out = EvalTransform(24)(img)
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    assert EvalTransform(24, resize=28)(img).shape == (3, 24, 24)
    assert torch.equal(EvalTransform(24)(img), EvalTransform(24)(img))
    with pytest.raises(ValueError):
        EvalTransform(24, resize=20)


def test_normalised_with_the_given_mean_and_std_and_jitter_strength_scales():
    img = Image.new("RGB", (40, 40), (200, 100, 50))  # constant: every crop is this colour
    t = MultiCropTransform(CROPS, flip_p=0, color_jitter_p=0, grayscale_p=0, blur_p=0)
    want = (torch.tensor([200, 100, 50]) / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    for c in t(img):
        assert torch.allclose(c, want.view(3, 1, 1).expand_as(c), atol=1e-5)
    jit = [s.transforms[0] for s in MultiCropTransform(CROPS, jitter_strength=0.5).pipelines[0][1].transforms
           if type(s).__name__ == "RandomApply"][0]
    assert jit.brightness == (0.6, 1.4) and jit.hue == (-0.1, 0.1)
    with pytest.raises(ValueError, match="hue"):
        MultiCropTransform(CROPS, jitter_strength=3.0)
