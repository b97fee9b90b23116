"""load_image: every kind of bad input gives the right BadSample; every odd mode becomes RGB."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ssl_scale.data.decode import BAD_REASONS, BadSample, load_image


def _encode(img, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noise(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _bad(result, reason):
    assert isinstance(result, BadSample), result
    assert result.reason == reason and reason in BAD_REASONS
    return result


def test_zero_bytes_missing_and_text(tmp_path):
    _bad(load_image(b"", "k"), "zero_bytes")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert _bad(load_image(empty, str(empty)), "zero_bytes").key == str(empty)
    _bad(load_image(tmp_path / "nope.jpg", "nope"), "io_error")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a jpeg at all\n" * 10)
    _bad(load_image(text, "t"), "not_an_image")


def test_truncated_jpeg_and_png():
    jpg = _encode(_noise(64, 64), "JPEG", quality=90)
    _bad(load_image(jpg[: len(jpg) // 2], "j"), "truncated")
    png = _encode(_noise(64, 64), "PNG")
    _bad(load_image(png[: len(png) // 2], "p"), "truncated")


def test_cmyk_jpeg_becomes_rgb():
    out = load_image(_encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95), "c")
    assert out.mode == "RGB" and out.size == (16, 16)
    r, g, b = out.getpixel((8, 8))
    assert r > 200 and g < 60 and b < 60  # cyan 0, magenta+yellow full -> red


def test_16bit_png_is_rescaled_not_clipped():
    arr = np.full((12, 10), 32896, dtype=np.uint16)  # mid gray in 16 bits
    arr[0, 0] = 65535
    src = Image.fromarray(arr)
    assert src.mode.startswith("I")
    out = load_image(_encode(src, "PNG"), "g16")
    assert out.mode == "RGB" and out.size == (10, 12)
    assert out.getpixel((5, 5)) == (128, 128, 128) and out.getpixel((0, 0)) == (255, 255, 255)


def test_palette_with_transparency_and_rgba_composite_on_white():
    p = Image.new("P", (10, 10), 0)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.putpixel((0, 0), 1)
    out = load_image(_encode(p, "PNG", transparency=0), "pal")
    assert out.mode == "RGB" and out.getpixel((5, 5)) == (255, 255, 255) and out.getpixel((0, 0)) == (255, 0, 0)
    rgba = Image.new("RGBA", (6, 6), (255, 0, 0, 128))
    r, g, b = load_image(_encode(rgba, "PNG"), "rgba").getpixel((3, 3))
    assert r == 255 and 125 <= g <= 129 and 125 <= b <= 129
    la = Image.new("LA", (6, 6), (0, 0))
    assert load_image(_encode(la, "PNG"), "la").getpixel((1, 1)) == (255, 255, 255)


def test_grayscale_and_gif_become_rgb():
    out = load_image(_encode(Image.new("L", (5, 4), 77), "PNG"), "l")
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (77, 77, 77)
    out = load_image(_encode(Image.new("RGB", (5, 4), (0, 0, 255)), "GIF"), "gif")
    assert out.mode == "RGB" and out.getpixel((2, 2)) == (0, 0, 255)


def test_exif_orientation_6_is_transposed():
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = load_image(_encode(img, "JPEG", exif=exif.tobytes()), "rot")
    assert out.size == (20, 40)


def test_too_small_and_bombs():
    _bad(load_image(_encode(Image.new("RGB", (1, 1)), "PNG"), "tiny"), "too_small")
    _bad(load_image(_encode(Image.new("RGB", (30, 1)), "PNG"), "strip", min_size=2), "too_small")
    before = Image.MAX_IMAGE_PIXELS
    _bad(load_image(_encode(Image.new("RGB", (64, 64)), "PNG"), "b", max_pixels=1000), "decompression_bomb")
    assert Image.MAX_IMAGE_PIXELS == before
    assert load_image(_encode(Image.new("RGB", (64, 64)), "PNG"), "b", max_pixels=4096).size == (64, 64)


def test_per_call_limit_overrides_pillow_global_both_ways(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow would refuse anything above 200 pixels
    data = _encode(Image.new("RGB", (64, 64)), "PNG")
    assert load_image(data, "big-ok").size == (64, 64)  # our default limit is higher: allowed
    assert Image.MAX_IMAGE_PIXELS == 100  # and the global is restored
    _bad(load_image(data, "big", max_pixels=150), "decompression_bomb")
    assert Image.MAX_IMAGE_PIXELS == 100


def test_jpeg_draft_never_below_requested_size():
    data = _encode(_noise(256, 192), "JPEG")
    assert load_image(data, "d", draft_size=(64, 48)).size == (64, 48)  # 1/4 scale exactly fits
    out = load_image(data, "d", draft_size=(70, 70))
    assert out.size == (128, 96) and out.mode == "RGB"  # 1/2: 1/4 would be below 70
    assert load_image(data, "d", draft_size=(300, 300)).size == (256, 192)  # never upscales
    assert load_image(_encode(_noise(256, 192), "PNG"), "p", draft_size=(64, 48)).size == (256, 192)
