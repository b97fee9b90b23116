"""Pixel operations of the multi-crop augmentation, on one crop: PIL crop+resize, colour, blur, normalise.

Each function is deterministic (the random parameters are drawn by the caller, multicrop.py) and
works on a float32 (3, H, W) tensor in [0, 1] unless it says otherwise. They are the fast
equivalents of the torchvision ops SwAV's recipe uses; tests/unit/test_data_multicrop.py checks each
one against torchvision or a formula written out in the test.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["resized_crop", "adjust_brightness", "adjust_contrast", "adjust_saturation", "rotate_hue",
           "grayscale", "gaussian_kernel1d", "gaussian_blur", "solarize", "normalize", "GRAY_WEIGHTS"]

# torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma), also the Y row of YIQ below.
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)
_GRAY = torch.tensor(GRAY_WEIGHTS)

# RGB -> YIQ (NTSC 1953; the matrix NVIDIA DALI's hue uses); Y is luma, (I, Q) the chroma plane.
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114],
                         [0.596, -0.274, -0.322],
                         [0.211, -0.523, 0.312]], dtype=torch.float64)
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def resized_crop(img: Image.Image, top: int, left: int, height: int, width: int, size: int,
                 flip: bool = False) -> torch.Tensor:
    """The box (top, left, height, width) of a PIL image resized to size x size -> float32 (3, size, size) in [0, 1].

    Pillow's bilinear resample with ``box=`` (antialiased when shrinking: its filter support grows
    with the scale factor, which is what torchvision's RandomResizedCrop does on PIL images and what
    ``antialias=True`` imitates on tensors), with no crop copy; about 3x faster than the antialiased
    resize of a uint8 tensor. Along the border the filter also reads the source pixels just outside the
    box (torchvision crops first), so only border pixels differ from torchvision's resized_crop.
    ``flip`` mirrors left-right.
    """
    out = img.resize((size, size), Image.BILINEAR, box=(left, top, left + width, top + height))
    if flip:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    arr = torch.from_numpy(np.array(out, dtype=np.uint8, copy=True))  # (size, size, 3), writable
    return arr.permute(2, 0, 1).to(torch.float32, memory_format=torch.contiguous_format).mul_(1 / 255)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """(3, H, W) -> (1, H, W): torchvision's grayscale value."""
    r, g, b = x.unbind(0)
    return (r * GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1]).add_(b, alpha=GRAY_WEIGHTS[2]).unsqueeze_(0)


def _blend(x: torch.Tensor, other, factor: float) -> torch.Tensor:
    """factor * x + (1 - factor) * other, clamped to [0, 1], in place (torchvision's _blend for float images)."""
    x.mul_(factor)
    if isinstance(other, torch.Tensor):
        x.add_(other, alpha=1.0 - factor)
    else:
        x.add_((1.0 - factor) * other)
    return x.clamp_(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, factor: float) -> torch.Tensor:
    """torchvision.transforms.functional.adjust_brightness (in place)."""
    return x.mul_(factor).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    """torchvision.transforms.functional.adjust_contrast (in place): blend with the mean grey level."""
    mean = float(torch.dot(x.reshape(3, -1).mean(dim=1), _GRAY))
    return _blend(x, mean, factor)


def adjust_saturation(x: torch.Tensor, factor: float) -> torch.Tensor:
    """torchvision.transforms.functional.adjust_saturation (in place): blend with the grey image."""
    return _blend(x, _luma(x), factor)


def hue_matrix(shift: float) -> torch.Tensor:
    """3x3 RGB matrix rotating the YIQ chroma plane by ``shift`` turns (luma kept), float32.

    The sign is chosen so that a positive shift moves red towards yellow/green, as an HSV hue shift
    does (in the (I, Q) plane the primaries run red -> green -> blue clockwise).
    """
    a = -2.0 * math.pi * float(shift)
    c, s = math.cos(a), math.sin(a)
    rot = torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]], dtype=torch.float64)
    return (_YIQ2RGB @ rot @ _RGB2YIQ).to(torch.float32)


def rotate_hue(x: torch.Tensor, shift: float) -> torch.Tensor:
    """Hue jitter as one 3x3 matrix (YIQ rotation, as NVIDIA DALI does), clamped to [0, 1].

    Replaces torchvision's RGB -> HSV -> RGB adjust_hue (the costliest colour op: ~8 ms on a 224-pixel
    tensor crop, ~4 ms on PIL, against one (3, 3) x (3, H*W) product here). The
    two agree on what hue jitter means (shift 0 is the identity, 0.5 the opposite hue, small shifts
    move in the same direction) but not pixel for pixel: YIQ keeps luma, HSV keeps the max channel.
    """
    if shift == 0:
        return x
    h, w = x.shape[-2:]
    return torch.mm(hue_matrix(shift), x.reshape(3, -1)).clamp_(0.0, 1.0).reshape(3, h, w)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """torchvision's rgb_to_grayscale with 3 output channels."""
    return _luma(x).expand(3, -1, -1).contiguous()


def gaussian_kernel1d(kernel_size: int, sigma: float) -> List[float]:
    """torchvision's gaussian_blur kernel (k taps over +-(k-1)/(2 sqrt 2), exp(-(t/sigma)^2), sum 1), as floats.

    Computed in Python floats: for 3-23 taps a few tensor ops would cost more than the arithmetic.
    """
    lim = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    step = 2 * lim / (kernel_size - 1) if kernel_size > 1 else 0.0
    w = [math.exp(-((-lim + i * step) / sigma) ** 2) for i in range(kernel_size)]
    total = math.fsum(w)
    return [v / total for v in w]


def _blur_pass(x: torch.Tensor, weights: Sequence[float], dim: int) -> torch.Tensor:
    """1-D convolution of a (B, H, W) tensor along dim 1 (H) or 2 (W), reflect padding, as shifted sums.

    k shifted multiply-adds beat a separable conv2d on these shapes (3 channels, one small kernel) by
    2-3x with one thread; the padding is torchvision's ("reflect").
    """
    r = len(weights) // 2
    n = x.shape[dim]
    p = F.pad(x.unsqueeze(0), [r, r, 0, 0] if dim == 2 else [0, 0, r, r], mode="reflect")[0]
    acc = p.narrow(dim, 0, n) * weights[0]
    for j in range(1, len(weights)):
        acc.add_(p.narrow(dim, j, n), alpha=weights[j])
    return acc


def gaussian_blur(x: torch.Tensor, kernel_size: Tuple[int, int], sigma: Tuple[float, float]) -> torch.Tensor:
    """torchvision's gaussian_blur (same kernel, reflect padding) as two separable passes on a float (..., H, W)."""
    kx, ky = kernel_size
    shape = x.shape
    x = x.reshape(-1, shape[-2], shape[-1])
    x = _blur_pass(x, gaussian_kernel1d(kx, sigma[0]), dim=2)
    return _blur_pass(x, gaussian_kernel1d(ky, sigma[1]), dim=1).reshape(shape)


def solarize(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Invert the pixels at or above ``threshold`` (in [0, 1]), as torchvision's solarize."""
    return torch.where(x >= threshold, 1.0 - x, x)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std per channel (mean, std: (3, 1, 1) tensors), in place."""
    return x.sub_(mean).div_(std)
