"""SwAV multi-crop augmentation and the evaluation transform (torchvision.transforms.v2), and their registry."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

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


def _gaussian_kernel1d(kernel_size: int, sigma: float) -> torch.Tensor:
    # The same kernel as torchvision's gaussian_blur, so results match v2.GaussianBlur to float rounding.
    lim = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    x = torch.linspace(-lim, lim, steps=kernel_size, dtype=torch.float32)
    return torch.softmax(x.div(sigma).pow(2).neg(), dim=0)


class SeparableGaussianBlur(v2.GaussianBlur):
    """v2.GaussianBlur (same sigma draw from the torch RNG, same kernel, reflect padding) done as two 1-D passes.

    torchvision convolves with the full k x k kernel; two k-tap passes give the same result (the kernel
    is separable) at ~2k instead of k^2 multiplies a pixel: ~4x faster for SwAV's 23-tap blur on
    224-pixel crops, where blur was the costliest step of the whole pipeline. PIL inputs fall back to v2.
    """

    def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
        if isinstance(inpt, torch.Tensor) and not isinstance(inpt, (tv_tensors.BoundingBoxes, tv_tensors.Mask)):
            return tv_tensors.wrap(self._blur(inpt.as_subclass(torch.Tensor), params["sigma"]), like=inpt) \
                if isinstance(inpt, tv_tensors.TVTensor) else self._blur(inpt, params["sigma"])
        parent = super()
        return (parent.transform if hasattr(parent, "transform") else parent._transform)(inpt, params)

    _transform = transform  # torchvision < 0.21 calls the private name

    def _blur(self, img: torch.Tensor, sigma: List[float]) -> torch.Tensor:
        kx, ky = self.kernel_size
        shape, dtype = img.shape, img.dtype
        x = img.reshape(-1, 1, shape[-2], shape[-1])  # channels as batch: one 1-channel conv for all
        x = x if x.is_floating_point() else x.to(torch.float32)
        x = F.pad(x, [kx // 2, kx // 2, ky // 2, ky // 2], mode="reflect")
        x = F.conv2d(x, _gaussian_kernel1d(kx, sigma[0]).to(x.dtype).view(1, 1, 1, kx))
        x = F.conv2d(x, _gaussian_kernel1d(ky, sigma[1]).to(x.dtype).view(1, 1, ky, 1))
        x = x.reshape(shape)
        return x if dtype.is_floating_point else x.round_().to(dtype)


@TRANSFORMS.register("multicrop", "SwAV multi-crop: groups of random resized crops with colour/blur/solarize")
class MultiCropTransform:
    """Image -> list of normalised float32 crops, ordered group by group (all of group 0 first).

    The image becomes a uint8 tensor once (``v2.ToImage``); every crop is then cut from that tensor, so
    the per-crop work (flip, jitter, blur) runs on small crop-sized tensors. Measured with one thread per
    process (SwAV 2x224 + 6x96 crops of a 500x375 photo): 24 ms/image on this tensor path with the
    separable blur, 48 ms with v2.GaussianBlur, 49 ms for the same v2 pipeline on PIL images; for 32x32
    images PIL is ~1 ms/image faster (3.6 vs 4.7 ms: per-op overhead dominates), which matters less than
    the 2x on real photos, so the tensor path is kept.
    Solarize runs on uint8 before the float conversion, so its threshold is 128 in pixel units. Randomness comes from the global torch RNG only (v2 draws with torch), so
    ``torch.manual_seed(s)`` before a call fixes the crops exactly.

    Args:
        crops: the crop groups, e.g. ``[CropSpec(224, 2, 0.14, 1), CropSpec(96, 6, 0.05, 0.14)]``.
        flip_p: horizontal flip probability.
        color_jitter_p: probability of applying ColorJitter(*jitter).
        jitter: (brightness, contrast, saturation, hue), each multiplied by ``jitter_strength``
            (SimCLR's colour-distortion strength; SwAV: 1.0 with (0.8, 0.8, 0.8, 0.2)).
        grayscale_p: random grayscale probability.
        blur_p: Gaussian blur probability, one float for all groups or one per group.
        solarize_p: solarize probability (0 disables it).
        mean, std: normalisation.
    """

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
        if jitter[3] > 0.5:
            raise ValueError(f"jitter hue x jitter_strength must be <= 0.5, got {jitter[3]}")
        self.crops = crops
        self.to_image = v2.ToImage()
        self.pipelines: List[Tuple[int, v2.Compose]] = []
        for spec, bp in zip(crops, blur_ps):
            steps = [
                v2.RandomResizedCrop(spec.size, scale=(spec.scale_min, spec.scale_max), antialias=True),
                v2.RandomHorizontalFlip(flip_p),
            ]
            if color_jitter_p > 0:
                steps.append(v2.RandomApply([v2.ColorJitter(*jitter)], p=color_jitter_p))
            if grayscale_p > 0:
                steps.append(v2.RandomGrayscale(grayscale_p))
            if bp > 0:
                k = blur_kernel_size(spec.size)
                steps.append(v2.RandomApply([SeparableGaussianBlur(k, sigma=(0.1, 2.0))], p=bp))
            if solarize_p > 0:
                steps.append(v2.RandomSolarize(threshold=128, p=solarize_p))  # uint8 pixels here
            steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
            self.pipelines.append((spec.count, v2.Compose(steps)))

    @property
    def num_crops(self) -> int:
        return sum(c.count for c in self.crops)

    def __call__(self, img) -> List[torch.Tensor]:
        x = self.to_image(img)
        if x.dtype != torch.uint8:  # a float tensor input: bring to uint8 so solarize/jitter see pixel units
            x = v2.functional.to_dtype(x, torch.uint8, scale=True)
        out: List[torch.Tensor] = []
        for count, pipe in self.pipelines:
            for _ in range(count):
                out.append(pipe(x).as_subclass(torch.Tensor))
        return out

    def __repr__(self) -> str:
        groups = ", ".join(f"{c.count}x{c.size}px[{c.scale_min},{c.scale_max}]" for c in self.crops)
        return f"MultiCropTransform({groups})"


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
