"""Robust image decoding: any file or byte string -> an RGB PIL image, or a BadSample saying why not."""
from __future__ import annotations

import io
import os
import struct
import threading
import warnings
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["BadSample", "DataError", "load_image", "BAD_REASONS", "DEFAULT_MAX_PIXELS"]

# Pillow's own hard limit (it warns above MAX_IMAGE_PIXELS and refuses above twice that): ~179 MP.
DEFAULT_MAX_PIXELS = 2 * 89_478_485

BAD_REASONS = ("zero_bytes", "truncated", "not_an_image", "decompression_bomb", "too_small", "io_error", "shard_error")

_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = (5, 6, 7, 8)
_PIL_LIMIT_LOCK = threading.Lock()


class DataError(ValueError):
    """A data problem the user must fix (missing folder, no images, too many bad samples); one-line message."""


@dataclass(frozen=True)
class BadSample:
    """A sample that could not be used; the loader drops it and reports (key, reason).

    reason is one of BAD_REASONS, or ``"error:<ExceptionType>"`` for a failure elsewhere in the pipeline.
    """

    key: str
    reason: str


class _RaisedLimit:
    """Lift Pillow's global bomb limit for one call only when the caller allows more than Pillow does.

    Pillow checks ``Image.MAX_IMAGE_PIXELS`` (a module global) inside open() and some loaders, so a
    per-call limit above Pillow's needs the global lifted for the duration of the call; it is always
    restored, and a lock keeps two threads of one process from interleaving the change.
    """

    def __init__(self, max_pixels: int):
        pil = Image.MAX_IMAGE_PIXELS
        self.needed = pil is not None and max_pixels > 2 * pil

    def __enter__(self):
        if self.needed:
            _PIL_LIMIT_LOCK.acquire()
            self.saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        return self

    def __exit__(self, *exc):
        if self.needed:
            Image.MAX_IMAGE_PIXELS = self.saved
            _PIL_LIMIT_LOCK.release()
        return False


def _read(src: Union[str, os.PathLike, bytes, bytearray, memoryview], key: str):
    """-> bytes, or a BadSample for unreadable / empty input."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
    else:
        try:
            with open(src, "rb") as f:
                data = f.read()
        except OSError:
            return BadSample(key, "io_error")
    if len(data) == 0:
        return BadSample(key, "zero_bytes")
    return data


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency is composited on white (not black, not dropped)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    elif mode.startswith("I") or mode == "F":
        # 16/32-bit grayscale: Pillow's convert("L") clips at 255 (a white image); rescale instead.
        arr = np.asarray(img)
        if mode == "F":
            arr = arr * 255.0 if float(arr.max(initial=0.0)) <= 1.0 else arr
            arr = np.clip(arr, 0, 255)
        else:
            arr = np.clip(arr.astype(np.int64), 0, 65535) / 257.0
        img = Image.fromarray(np.round(arr).astype(np.uint8))
        mode = "L"
    if mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img).convert("RGB")
    return img.convert("RGB")


def load_image(src: Union[str, os.PathLike, bytes], key: str, max_pixels: int = DEFAULT_MAX_PIXELS,
               min_size: int = 2, draft_size: Optional[Tuple[int, int]] = None) -> Union[Image.Image, BadSample]:
    """Decode one image fully, or say why it cannot be used. Never raises for bad data.

    Args:
        src: a file path or the encoded bytes.
        key: the name reported in a BadSample (usually the path).
        max_pixels: images with more pixels (from the header, before decoding) are ``decompression_bomb``.
        min_size: images whose shorter side is below this are ``too_small``.
        draft_size: (w, h) for JPEG draft mode: decode at a power-of-two reduction that is never smaller
            than this size (much faster for large photos that are cropped small anyway).

    Returns:
        an RGB ``PIL.Image`` (EXIF orientation applied, pixels loaded), or ``BadSample(key, reason)``
        with reason in BAD_REASONS.
    """
    data = _read(src, key)
    if isinstance(data, BadSample):
        return data
    try:
        with _RaisedLimit(max_pixels), warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                img = Image.open(io.BytesIO(data))
            except Image.DecompressionBombError:
                return BadSample(key, "decompression_bomb")
            except (UnidentifiedImageError, SyntaxError, ValueError, TypeError, struct.error):
                return BadSample(key, "not_an_image")
            except OSError:
                return BadSample(key, "truncated")
            w, h = img.size
            if w * h > max_pixels:
                return BadSample(key, "decompression_bomb")
            if min(w, h) < min_size:
                return BadSample(key, "too_small")
            orientation = _orientation(img)
            if draft_size is not None and img.format == "JPEG":
                dw, dh = draft_size
                if orientation in _SWAPS_AXES:  # the request is for the upright image
                    dw, dh = dh, dw
                img.draft("RGB", (max(1, int(dw)), max(1, int(dh))))
            try:
                img.load()
            except Image.DecompressionBombError:
                return BadSample(key, "decompression_bomb")
            except MemoryError:
                return BadSample(key, "decompression_bomb")
            except Exception:  # noqa: BLE001 - any decoder failure means unusable pixel data
                return BadSample(key, "truncated")
        if orientation is None:  # some formats (PNG eXIf after the pixels) only expose EXIF once loaded
            orientation = _orientation(img)
        if orientation not in (None, 1):
            try:
                img = ImageOps.exif_transpose(img)
            except Exception:  # noqa: BLE001 - a broken EXIF block should not cost the image
                pass
        return _to_rgb(img)
    except OSError:
        return BadSample(key, "truncated")


def _orientation(img: Image.Image) -> Optional[int]:
    try:
        return img.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # noqa: BLE001
        return None

