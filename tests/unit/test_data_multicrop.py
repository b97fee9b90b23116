"""Multi-crop and eval transforms: counts, sizes, order, dtype, seeding, each pixel op against torchvision or a
formula, the random draws' distributions, solarize threshold."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from sklearn.datasets import load_sample_image
from torchvision.transforms import v2

from ssl_scale.data import TRANSFORMS
from ssl_scale.data import crop_ops
from ssl_scale.data.multicrop import CropSpec, EvalTransform, MultiCropTransform, blur_kernel_size

PHOTO = Image.fromarray(load_sample_image("china.jpg"))  # a real 640x427 photograph shipped with scikit-learn


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
    """Blur per group: the random draws have a fixed size, so the same seed gives the same boxes and factors
    whatever the probabilities; blur_p=[1, 0] blurs group 0 (smoother than unblurred) and leaves group 1 as is."""
    def run(**kw):
        torch.manual_seed(3)
        return MultiCropTransform(CROPS, grayscale_p=0, **kw)(PHOTO)

    plain, blurred = run(blur_p=0.0), run(blur_p=[1.0, 0.0])
    tv = lambda x: (x[..., 1:] - x[..., :-1]).abs().mean()  # noqa: E731 - total variation along rows
    assert all(tv(b) < tv(p) for b, p in zip(blurred[:2], plain[:2]))
    assert all(torch.equal(b, p) for b, p in zip(blurred[2:], plain[2:]))
    assert not any(torch.equal(a, b) for a, b in zip(run(solarize_p=1.0), plain))
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
    # ColorJitter's ranges: [max(0, 1 - v), 1 + v] for brightness/contrast/saturation, [-v, v] for hue
    assert np.allclose(MultiCropTransform(CROPS).jitter_ranges, [(0.2, 1.8)] * 3 + [(-0.2, 0.2)])
    b, c, sat, h = MultiCropTransform(CROPS, jitter_strength=0.5).jitter_ranges
    assert b == pytest.approx((0.6, 1.4)) and h == pytest.approx((-0.1, 0.1))
    assert MultiCropTransform(CROPS, jitter=(0.8, 0, 0.8, 0)).jitter_ranges[1::2] == (None, None)
    with pytest.raises(ValueError, match="hue"):
        MultiCropTransform(CROPS, jitter_strength=3.0)


# ---- each pixel op against an independent reference ------------------------------------------------------

@pytest.mark.parametrize("box", [(50, 100, 250, 300, 224), (10, 20, 400, 600, 224), (100, 200, 150, 120, 96),
                                 (0, 0, 427, 640, 96), (30, 40, 60, 50, 96)])
def test_resized_crop_matches_torchvision(box):
    """Pillow's box resize against torchvision's resized_crop on the same box: on a PIL image (crop, then
    Pillow bilinear) the pixels agree to 1 level except along the border, where the box resize also reads
    the pixels just outside the box; against the antialiased tensor resize they agree to < 0.5 level on average."""
    top, left, h, w, size = box
    ours = (crop_ops.resized_crop(PHOTO, top, left, h, w, size) * 255).round()
    assert ours.shape == (3, size, size) and ours.dtype == torch.float32 and ours.is_contiguous()
    ref_pil = TF.pil_to_tensor(TF.resized_crop(PHOTO, top, left, h, w, [size, size])).float()
    ref_tensor = TF.resized_crop(TF.pil_to_tensor(PHOTO), top, left, h, w, [size, size], antialias=True).float()
    assert (ours - ref_pil)[:, 2:-2, 2:-2].abs().max() <= 1
    assert (ours - ref_pil).abs().mean() < 0.5
    assert (ours - ref_tensor).abs().mean() < 0.5
    flipped = (crop_ops.resized_crop(PHOTO, top, left, h, w, size, flip=True) * 255).round()
    assert torch.equal(flipped, ours.flip(-1))


def _float_photo(size=64, seed=0):
    torch.manual_seed(seed)
    return crop_ops.resized_crop(PHOTO, 60, 200, 300, 300, size)


@pytest.mark.parametrize("factor", [0.2, 0.7, 1.0, 1.5, 1.8])
def test_brightness_contrast_saturation_grayscale_match_torchvision(factor):
    x = _float_photo()
    pairs = [(crop_ops.adjust_brightness, TF.adjust_brightness), (crop_ops.adjust_contrast, TF.adjust_contrast),
             (crop_ops.adjust_saturation, TF.adjust_saturation)]
    for ours, ref in pairs:
        assert torch.allclose(ours(x.clone(), factor), ref(x, factor), atol=1e-5), ours.__name__
    assert torch.allclose(crop_ops.grayscale(x), TF.rgb_to_grayscale(x, num_output_channels=3), atol=1e-6)


def test_yiq_hue_rotation_formula_identity_inversion_and_direction():
    # The formula, written out: RGB -> YIQ (NTSC), rotate (I, Q) by -2 pi h, back to RGB, clamp to [0, 1].
    yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64)
    x = _float_photo()
    for h in (-0.2, -0.05, 0.1, 0.2, 0.5):
        a = -2 * math.pi * h
        rot = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]],
                           dtype=torch.float64)
        want = (torch.linalg.solve(yiq, rot @ yiq @ x.double().reshape(3, -1))).clamp(0, 1).reshape(x.shape)
        assert torch.allclose(crop_ops.rotate_hue(x.clone(), h).double(), want, atol=1e-5), h
    assert torch.equal(crop_ops.rotate_hue(x.clone(), 0.0), x)
    # 0.5 turns the chroma to its opposite and keeps luma (a muted colour, so nothing is clamped)
    c = torch.tensor([0.6, 0.4, 0.5]).view(3, 1, 1)
    y0, y1 = yiq.float() @ c.view(3), yiq.float() @ crop_ops.rotate_hue(c.clone(), 0.5).view(3)
    assert torch.allclose(y1, y0 * torch.tensor([1.0, -1.0, -1.0]), atol=1e-5)
    # a small positive shift moves red towards yellow (green up, blue not), as torchvision's HSV adjust_hue does
    red = torch.tensor([0.8, 0.2, 0.2]).view(3, 1, 1)
    ours, ref = crop_ops.rotate_hue(red.clone(), 0.05).view(3), TF.adjust_hue(red, 0.05).view(3)
    assert ours[1] > red[1].item() + 0.05 and ref[1] > red[1].item() + 0.05
    # and on a photograph it is close to the HSV shift for small hues (same meaning, different formula)
    assert (crop_ops.rotate_hue(x.clone(), 0.03) - TF.adjust_hue(x, 0.03)).abs().mean() < 0.02


def test_blur_function_matches_torchvision_float():
    x = _float_photo(48)
    for k, sigma in ((11, 0.1), (11, 1.3), (23, 2.0), (3, 0.7)):
        ref = v2.functional.gaussian_blur(x, [k, k], [sigma, sigma])
        assert torch.allclose(crop_ops.gaussian_blur(x, (k, k), (sigma, sigma)), ref, atol=1e-5), (k, sigma)
    assert torch.allclose(crop_ops.gaussian_blur(x, (11, 5), (1.3, 0.4)),
                          v2.functional.gaussian_blur(x, [11, 5], [1.3, 0.4]), atol=1e-5)


def test_crop_boxes_follow_the_configured_scale_and_ratio():
    """The boxes a transform cuts: area fraction within [scale_min, scale_max] and aspect within [3/4, 4/3]
    (up to the rounding of the box to whole pixels), spread over the ranges, all inside the image."""
    t = MultiCropTransform([CropSpec(16, 1, 0.05, 0.4)])
    torch.manual_seed(0)
    W, H = PHOTO.size
    boxes = [t.crop_box(PHOTO, t.crops[0]) for _ in range(600)]
    area = np.array([h * w / (W * H) for _, _, h, w in boxes])
    ratio = np.array([w / h for _, _, h, w in boxes])
    assert all(0 <= top and 0 <= left and top + h <= H and left + w <= W for top, left, h, w in boxes)
    assert area.min() > 0.05 * 0.97 and area.max() < 0.4 * 1.03
    assert ratio.min() > 0.75 * 0.97 and ratio.max() < 4 / 3 * 1.03
    assert (area < 0.15).mean() > 0.2 and (area > 0.3).mean() > 0.2  # uniform in area: both ends hit
    assert (np.log(ratio) < -0.1).mean() > 0.2 and (np.log(ratio) > 0.1).mean() > 0.2  # log-uniform ratio


def test_flip_and_grayscale_rates():
    """Coin flips happen at their configured rates (600 crops; binomial 4-sigma bounds)."""
    img = PHOTO.resize((64, 64))  # square, so scale 1 gives the whole image
    t = MultiCropTransform([CropSpec(8, 1, 1.0, 1.0)], flip_p=0.5, color_jitter_p=0, grayscale_p=0.2, blur_p=0,
                           mean=(0, 0, 0), std=(1, 1, 1))
    whole = crop_ops.resized_crop(img, 0, 0, 64, 64, 8)
    torch.manual_seed(1)
    outs = [t(img)[0] for _ in range(600)]
    luma = lambda c: (torch.tensor(crop_ops.GRAY_WEIGHTS).view(3, 1, 1) * c).sum(0)  # noqa: E731 - kept by grayscale
    gray = np.mean([bool((c[0] == c[1]).all() and (c[1] == c[2]).all()) for c in outs])
    flipped = [torch.allclose(luma(c), luma(whole.flip(-1)), atol=1e-3) for c in outs]
    assert all(f or torch.allclose(luma(c), luma(whole), atol=1e-3) for f, c in zip(flipped, outs))
    flipped = np.mean(flipped)
    assert abs(gray - 0.2) < 4 * math.sqrt(0.2 * 0.8 / 600)
    assert abs(flipped - 0.5) < 4 * math.sqrt(0.25 / 600)


def test_tensor_input_gives_the_same_crops_as_the_pil_image():
    t = MultiCropTransform(CROPS)
    small = PHOTO.resize((48, 40))
    for x in (TF.pil_to_tensor(small), TF.pil_to_tensor(small).float() / 255):
        torch.manual_seed(5)
        a = t(x)
        torch.manual_seed(5)
        b = t(small)
        assert all(torch.allclose(p, q, atol=1e-5) for p, q in zip(a, b))
