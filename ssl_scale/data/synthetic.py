"""A synthetic image source for benchmarks and tests: image i is a pure function of (seed, i), no disk reads."""
from __future__ import annotations

from typing import Tuple

import numpy as np
from PIL import Image

from ssl_scale.data.decode import DataError
from ssl_scale.data.sources import DATASETS

__all__ = ["SyntheticDataset"]


@DATASETS.register("synthetic", "deterministic generated images (data.train.num_samples, image_size): no disk reads")
class SyntheticDataset:
    """``num_samples`` RGB images of ``image_size`` x ``image_size`` pixels, generated on demand.

    Image i is smooth random colour (an 8x8 grid of random colours, bilinearly upscaled, plus
    per-pixel noise), drawn from ``numpy.random.default_rng((seed, i))``: the same index gives the
    same image in any process, worker or rank, in any order, with nothing read from disk. Labels are
    -1 (no classes), like images at the root of a folder.

    Args:
        num_samples: images in the set.
        image_size: side of the square images, in pixels.
        seed: fixes every image (with its index).
    """

    GRID = 8

    def __init__(self, num_samples: int = 10_000, image_size: int = 224, seed: int = 0):
        if int(num_samples) < 1:
            raise DataError(f"synthetic source: num_samples must be at least 1, got {num_samples}; "
                            "set data.train.num_samples")
        if int(image_size) < 2:
            raise DataError(f"synthetic source: image_size must be at least 2 pixels, got {image_size}; "
                            "set data.train.image_size")
        self.num_samples, self.image_size, self.seed = int(num_samples), int(image_size), int(seed)

    def __len__(self) -> int:
        return self.num_samples

    def key(self, i: int) -> str:
        return f"synthetic:{int(i)}"

    def label(self, i: int) -> int:
        return -1

    def image(self, i: int) -> Image.Image:
        if not 0 <= int(i) < self.num_samples:
            raise IndexError(f"synthetic index {i} out of range [0, {self.num_samples})")
        rng = np.random.default_rng((self.seed, int(i)))
        s = self.image_size
        grid = rng.integers(0, 256, (self.GRID, self.GRID, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(grid).resize((s, s), Image.BILINEAR), dtype=np.int16)
        noise = rng.integers(-16, 17, (s, s, 3), dtype=np.int16)
        return Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8))

    def __getitem__(self, i: int) -> Tuple[Image.Image, int]:
        return self.image(i), self.label(i)

    def __repr__(self) -> str:
        return f"SyntheticDataset({self.num_samples} images of {self.image_size}x{self.image_size}, seed={self.seed})"
