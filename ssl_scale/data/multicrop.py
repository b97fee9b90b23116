"""SwAV multi-crop augmentation (its pixel ops: crop_ops.py), the evaluation transform, and their registry."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop, v2

from ssl_scale.data.crop_ops import (adjust_brightness, adjust_contrast, adjust_saturation, gaussian_blur, grayscale,
                                     normalize, resized_crop, rotate_hue, solarize)
from ssl_scale.registry import Registry

__all__ = ["TRANSFORMS", "CropSpec", "MultiCropTransform", "EvalTransform", "blur_kernel_size"]

TRANSFORMS: Registry = Registry("transform")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class CropSpec:
    """One group of crops: `count` crops of `size` x `size` pixels covering [scale_min, scale_max] of the image."""

    size: int
    count: int
    scale_min: float
    scale_max: float

    def __post_init__(self):
        if self.size <= 0 or self.count <= 0:
            raise ValueError(f"CropSpec size and count must be positive, got size={self.size} count={self.count}")
        if not 0 < self.scale_min <= self.scale_max <= 1:
            raise ValueError(f"CropSpec scale must satisfy 0 < scale_min <= scale_max <= 1, got "
                             f"({self.scale_min}, {self.scale_max})")


def blur_kernel_size(size: int) -> int:
    """Odd Gaussian-blur kernel of about 10% of the crop side (SwAV: 23 for 224), at least 3."""
    k = max(3, int(round(0.1 * size)))
    return k if k % 2 == 1 else k + 1


def _jitter_range(value: float, centre: float) -> Optional[Tuple[float, float]]:
    """ColorJitter's range for one factor: [max(0, 1 - v), 1 + v] (hue: [-v, v]); None when v is 0 (skipped)."""
    if value == 0:
        return None
    return (max(0.0, centre - value), centre + value) if centre == 1.0 else (-value, value)


def _as_pil(img) -> Image.Image:
    """A PIL image, or a (C, H, W) / (H, W) uint8 or [0, 1] float tensor (C = 1 or 3) -> an RGB PIL image."""
    if isinstance(img, Image.Image):
        return img if img.mode == "RGB" else img.convert("RGB")
    x = torch.as_tensor(img).as_subclass(torch.Tensor)
    if x.is_floating_point():
        x = (x.clamp(0, 1) * 255).round_()
    x = x.to(torch.uint8)
    x = x.unsqueeze(0) if x.ndim == 2 else x
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"MultiCropTransform takes a PIL image or a (C, H, W) tensor with C = 1 or 3, got shape "
                         f"{tuple(x.shape)}")
    return Image.fromarray(x.expand(3, -1, -1).permute(1, 2, 0).contiguous().numpy())


@TRANSFORMS.register("multicrop", "SwAV multi-crop: groups of random resized crops with colour/blur/solarize")
class MultiCropTransform:
    """Image -> list of normalised float32 crops, ordered group by group (all of group 0 first).

    SwAV's recipe per crop: RandomResizedCrop(size, scale, ratio 3/4..4/3), horizontal flip, with
    probability ``color_jitter_p`` ColorJitter(brightness, contrast, saturation, hue) in a random order,
    grayscale, Gaussian blur (sigma in [0.1, 2], kernel ~10% of the side), optional solarize, normalise.
    Each step is done the fastest way measured with one thread (tools/perf/bench_data.py --vs-torchvision):
    the crop and resize by Pillow straight from the decoded image (``box=``, bilinear, antialiased), one
    conversion to float, brightness/contrast/saturation as torchvision's float formulas, the hue jitter as
    one 3x3 YIQ rotation (NVIDIA DALI's formula; not torchvision's HSV round trip, see
    crop_ops.rotate_hue), blur as two separable passes, normalise. Pixels stay float32 from the resize on
    (no uint8 rounding between steps), so solarize's threshold is 128/255.

    Randomness comes from the global torch RNG only (the crop box through torchvision's own
    RandomResizedCrop.get_params, then one fixed-size draw a crop), so ``torch.manual_seed(s)`` before a
    call fixes the crops exactly (loader.seeded_crops relies on this).

    Args:
        crops: the crop groups, e.g. ``[CropSpec(224, 2, 0.14, 1), CropSpec(96, 6, 0.05, 0.14)]``.
        flip_p: horizontal flip probability.
        color_jitter_p: probability of applying the colour jitter.
        jitter: (brightness, contrast, saturation, hue), each multiplied by ``jitter_strength``
            (SimCLR's colour-distortion strength; SwAV: 1.0 with (0.8, 0.8, 0.8, 0.2)).
        grayscale_p: random grayscale probability.
        blur_p: Gaussian blur probability, one float for all groups or one per group.
        solarize_p: solarize probability (0 disables it).
        mean, std: normalisation.
    """

    RATIO = (3.0 / 4.0, 4.0 / 3.0)
    SIGMA = (0.1, 2.0)

    def __init__(self, crops: Sequence[CropSpec], flip_p: float = 0.5, color_jitter_p: float = 0.8,
                 jitter: Tuple[float, float, float, float] = (0.8, 0.8, 0.8, 0.2), grayscale_p: float = 0.2,
                 blur_p: Union[float, Sequence[float]] = 0.5, solarize_p: float = 0.0,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 jitter_strength: float = 1.0):
        crops = [c if isinstance(c, CropSpec) else CropSpec(*c) for c in crops]
        if not crops:
            raise ValueError("MultiCropTransform needs at least one CropSpec")
        if isinstance(blur_p, (int, float)):
            blur_ps = [float(blur_p)] * len(crops)
        else:
            blur_ps = [float(p) for p in blur_p]
            if len(blur_ps) != len(crops):
                raise ValueError(f"blur_p has {len(blur_ps)} values but there are {len(crops)} crop groups")
        if len(jitter) != 4:
            raise ValueError(f"jitter must be (brightness, contrast, saturation, hue), got {tuple(jitter)}")
        jitter = tuple(float(j) * float(jitter_strength) for j in jitter)
        if min(jitter) < 0:
            raise ValueError(f"jitter values must be >= 0, got {jitter}")
        if jitter[3] > 0.5:
            raise ValueError(f"jitter hue x jitter_strength must be <= 0.5, got {jitter[3]}")
        self.crops = crops
        self.blur_ps = blur_ps
        self.flip_p, self.color_jitter_p = float(flip_p), float(color_jitter_p)
        self.grayscale_p, self.solarize_p = float(grayscale_p), float(solarize_p)
        # (brightness, contrast, saturation, hue) ranges as torchvision's ColorJitter holds them
        self.jitter_ranges = tuple(_jitter_range(v, 1.0 if i < 3 else 0.0) for i, v in enumerate(jitter))
        self.mean = torch.tensor([float(m) for m in mean]).view(3, 1, 1)
        self.std = torch.tensor([float(s) for s in std]).view(3, 1, 1)

    @property
    def num_crops(self) -> int:
        return sum(c.count for c in self.crops)

    def __call__(self, img) -> List[torch.Tensor]:
        pil = _as_pil(img)
        return [self.crop(pil, spec, bp) for spec, bp in zip(self.crops, self.blur_ps) for _ in range(spec.count)]

    def crop_box(self, pil: Image.Image, spec: CropSpec) -> Tuple[int, int, int, int]:
        """(top, left, height, width) of a random crop: torchvision's RandomResizedCrop draw (area uniform in
        the group's scale range, log-uniform aspect ratio in 3/4..4/3, 10 tries, then a centre crop)."""
        return tuple(RandomResizedCrop.get_params(pil, [spec.scale_min, spec.scale_max], list(self.RATIO)))

    def crop(self, pil: Image.Image, spec: CropSpec, blur_p: float) -> torch.Tensor:
        """One augmented, normalised crop of ``spec.size``; draws its random numbers from the torch RNG."""
        top, left, h, w = self.crop_box(pil, spec)
        # one draw a crop: flip, jitter?, 4 jitter factors, grayscale?, blur?, sigma, solarize?
        u = torch.rand(10, dtype=torch.float64).tolist()
        order = torch.randperm(4).tolist()
        x = resized_crop(pil, top, left, h, w, spec.size, flip=u[0] < self.flip_p)
        if u[1] < self.color_jitter_p:
            for i in order:
                rng = self.jitter_ranges[i]
                if rng is not None:
                    x = _JITTER_OPS[i](x, rng[0] + (rng[1] - rng[0]) * u[2 + i])
        if u[6] < self.grayscale_p:
            x = grayscale(x)
        if u[7] < blur_p:
            k = blur_kernel_size(spec.size)
            sigma = self.SIGMA[0] + (self.SIGMA[1] - self.SIGMA[0]) * u[8]
            x = gaussian_blur(x, (k, k), (sigma, sigma))
        if u[9] < self.solarize_p:
            x = solarize(x, 128 / 255)
        return normalize(x, self.mean, self.std)

    def __repr__(self) -> str:
        groups = ", ".join(f"{c.count}x{c.size}px[{c.scale_min},{c.scale_max}]" for c in self.crops)
        return f"MultiCropTransform({groups})"


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, rotate_hue)


@TRANSFORMS.register("eval", "resize + centre crop + normalise, for feature extraction and benchmarks")
class EvalTransform:
    """Image -> one normalised float32 (3, size, size) tensor: Resize(resize or size), CenterCrop(size).

    Args:
        size: output side.
        resize: shorter side before the centre crop (e.g. 256 for size 224); defaults to size.
        mean, std: normalisation.
    """

    def __init__(self, size: int, resize: Union[int, None] = None, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD):
        if size <= 0 or (resize is not None and resize < size):
            raise ValueError(f"EvalTransform needs size > 0 and resize >= size, got size={size} resize={resize}")
        self.size, self.resize = size, resize
        self.pipeline = v2.Compose([
            v2.ToImage(),
            v2.Resize(resize if resize is not None else size, antialias=True),
            v2.CenterCrop(size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ])

    def __call__(self, img) -> torch.Tensor:
        return self.pipeline(img).as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"EvalTransform(size={self.size}, resize={self.resize})"
