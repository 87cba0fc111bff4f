"""codec.images: safe loading (modes, EXIF, failures with reasons), resize/crop, tensor helpers, grids."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from cascadekit.codec.errors import InputError
from cascadekit.codec.images import (
    center_crop,
    imagenet_normalize,
    load_image,
    pil_to_tensor,
    resize_center_crop,
    resize_short_side,
    save_grid,
    tensor_to_pil,
    to_batch,
)


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def px(img, xy):
    return img.getpixel(xy)


def reason_of(src, **kw) -> str:
    with pytest.raises(InputError) as e:
        load_image(src, **kw)
    return e.value.reason


# ---------------------------------------------------------------- sources


def test_rgb_from_path_bytes_and_file(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (12, 17, 3), dtype=np.uint8)
    data = encode(Image.fromarray(a))
    p = tmp_path / "x.png"
    p.write_bytes(data)
    for src in (p, str(p), data, io.BytesIO(data), open(p, "rb")):
        img = load_image(src)
        assert img.mode == "RGB" and img.size == (17, 12)
        np.testing.assert_array_equal(np.asarray(img), a)


# ---------------------------------------------------------------- modes


def test_gray_and_bilevel():
    img = load_image(encode(Image.fromarray(np.array([[0, 77, 255]], np.uint8), "L")))
    assert [px(img, (i, 0)) for i in range(3)] == [(0, 0, 0), (77, 77, 77), (255, 255, 255)]
    bw = Image.new("1", (2, 1), 0)
    bw.putpixel((1, 0), 1)
    img = load_image(encode(bw))
    assert px(img, (0, 0)) == (0, 0, 0) and px(img, (1, 0)) == (255, 255, 255)


def test_rgba_and_la_composite_on_white():
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(255, 0, 0, 255), (255, 0, 0, 0), (255, 0, 0, 128)])
    img = load_image(encode(rgba))
    assert px(img, (0, 0)) == (255, 0, 0)
    assert px(img, (1, 0)) == (255, 255, 255)  # fully transparent -> white, not red or black
    r, g, b = px(img, (2, 0))
    assert r == 255 and abs(g - 127) <= 1 and g == b
    la = Image.new("LA", (1, 1), (0, 0))
    assert px(load_image(encode(la)), (0, 0)) == (255, 255, 255)


def test_palette_with_and_without_transparency():
    p = Image.new("P", (2, 1))
    p.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    p.putdata([0, 1])
    img = load_image(encode(p))
    assert px(img, (0, 0)) == (10, 20, 30) and px(img, (1, 0)) == (200, 100, 50)
    img_t = load_image(encode(p, transparency=0))  # index 0 transparent
    assert px(img_t, (0, 0)) == (255, 255, 255) and px(img_t, (1, 0)) == (200, 100, 50)
    gif = load_image(encode(p, "GIF", transparency=1))
    assert px(gif, (1, 0)) == (255, 255, 255) and px(gif, (0, 0)) == (10, 20, 30)


def test_16bit_gray_is_scaled_not_clipped():
    a = np.array([[0, 1000, 32768, 65535]], np.uint16)
    src = Image.fromarray(a)
    assert src.mode.startswith("I;16")
    for fmt in ("PNG", "TIFF"):
        img = load_image(encode(src, fmt))
        got = [px(img, (i, 0))[0] for i in range(4)]
        assert got == [0, 4, 128, 255], (fmt, got)  # clipping would give 255 for 1000


def test_32bit_int_and_float():
    i32 = Image.fromarray(np.array([[0, 65535, 257 * 100]], np.int32))
    assert i32.mode == "I"
    img = load_image(encode(i32, "TIFF"))
    assert [px(img, (i, 0))[0] for i in range(3)] == [0, 255, 100]
    wide = Image.fromarray(np.array([[-1000, 0, 1000]], np.int32))  # outside 16-bit: stretched
    assert [px(load_image(encode(wide, "TIFF")), (i, 0))[0] for i in range(3)] == [0, 128, 255]
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    assert f.mode == "F"
    assert [px(load_image(encode(f, "TIFF")), (i, 0))[0] for i in range(3)] == [0, 128, 255]
    f2 = Image.fromarray(np.array([[0.0, 2.0, 4.0]], np.float32))
    assert [px(load_image(encode(f2, "TIFF")), (i, 0))[0] for i in range(3)] == [0, 128, 255]


def test_cmyk():
    c = Image.new("CMYK", (3, 1))
    c.putdata([(0, 0, 0, 0), (0, 255, 255, 0), (0, 0, 0, 255)])
    img = load_image(encode(c, "TIFF"))
    assert px(img, (0, 0)) == (255, 255, 255)
    assert px(img, (1, 0)) == (255, 0, 0)
    assert px(img, (2, 0)) == (0, 0, 0)
    jpg = load_image(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95))
    r, g, b = px(jpg, (8, 8))
    assert r > 240 and g < 15 and b < 15


def test_exif_orientation_applied():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    out = load_image(encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (20, 40)
    top, bottom = px(out, (10, 5)), px(out, (10, 35))
    assert top[0] > 200 and top[2] < 60  # stored left (red) is on top after rotating clockwise
    assert bottom[2] > 200 and bottom[0] < 60


def test_animated_gif_first_frame():
    frames = [Image.new("P", (4, 4), i) for i in range(3)]
    for f in frames:
        f.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    buf = io.BytesIO()
    frames[1].save(buf, "GIF", save_all=True, append_images=[frames[2], frames[0]])
    assert px(load_image(buf.getvalue()), (0, 0)) == (255, 0, 0)


# ---------------------------------------------------------------- failures


def test_empty_and_missing(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    assert reason_of(tmp_path / "zero.jpg") == "empty"
    assert reason_of(b"") == "empty"
    assert reason_of(tmp_path / "nope.png") == "unreadable"
    assert reason_of(tmp_path) == "unreadable"  # a directory
    with pytest.raises(InputError) as e:
        load_image(tmp_path / "zero.jpg")
    assert "zero.jpg" in str(e.value) and "empty" in str(e.value)


def test_not_an_image():
    assert reason_of(b"hello, this is text, not pixels\n" * 10) == "not_an_image"
    assert reason_of(io.StringIO("text")) == "unreadable"  # text-mode file object


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(fmt):
    a = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(a), fmt)
    assert load_image(data).size == (64, 64)
    assert reason_of(data[: len(data) // 2]) == "truncated"


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny valid PNG whose IHDR is patched to claim width x height (CRC fixed up)."""
    data = bytearray(encode(Image.new("RGB", (8, 8))))
    ihdr = 8  # chunk starts after the signature: length(4) type(4) data(13) crc(4)
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 8 + 13])) & 0xFFFFFFFF
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", crc)
    return bytes(data)


def test_decompression_bomb_checked_before_decoding():
    # 200k x 200k = 4e10 pixels claimed by a ~100-byte file: must fail instantly, without allocating
    assert reason_of(_png_claiming(200_000, 200_000)) == "decompression_bomb"
    assert reason_of(_png_claiming(20_000, 20_000), max_pixels=None) == "decompression_bomb"  # PIL's hard limit
    small = encode(Image.new("RGB", (100, 100)))
    assert reason_of(small, max_pixels=9_999) == "decompression_bomb"
    assert load_image(small, max_pixels=10_000).size == (100, 100)


def test_too_small():
    data = encode(Image.new("RGB", (30, 100)))
    assert reason_of(data, min_side=32) == "too_small"
    assert load_image(data, min_side=30).size == (30, 100)


# ---------------------------------------------------------------- resize / crop


def test_resize_and_crop_shapes():
    img = Image.new("RGB", (300, 200))
    assert resize_short_side(img, 100).size == (150, 100)
    assert resize_short_side(Image.new("RGB", (200, 301)), 100).size == (100, 150)
    assert center_crop(img, 100).size == (100, 100)
    assert center_crop(img, (50, 80)).size == (80, 50)
    assert resize_center_crop(img, (64, 96)).size == (96, 64)
    assert resize_center_crop(Image.new("RGB", (10, 500)), 32).size == (32, 32)
    with pytest.raises(InputError):
        center_crop(img, 400)


def test_center_crop_takes_the_centre():
    a = np.zeros((10, 10, 3), np.uint8)
    a[4:6, 4:6] = 255
    out = np.asarray(center_crop(Image.fromarray(a), 2))
    assert (out == 255).all()


def test_resize_is_antialiased():
    # a 1-pixel checkerboard downscaled 8x must average to grey, not alias to black/white
    a = (np.indices((256, 256)).sum(0) % 2 * 255).astype(np.uint8)
    small = np.asarray(resize_short_side(Image.fromarray(a).convert("RGB"), 32)).astype(float)
    assert abs(small.mean() - 127.5) < 3 and small.std() < 10


# ---------------------------------------------------------------- tensors


def test_tensor_roundtrip_and_range():
    a = np.random.default_rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    t = pil_to_tensor(Image.fromarray(a))
    assert t.shape == (3, 5, 7) and t.dtype == torch.float32
    assert float(t.min()) >= 0 and float(t.max()) <= 1
    np.testing.assert_array_equal(np.asarray(tensor_to_pil(t)), a)
    np.testing.assert_array_equal(np.asarray(tensor_to_pil(t[None])), a)


def test_to_batch_validates():
    imgs = [Image.new("RGB", (8, 6), (255, 0, 0)), Image.new("RGB", (8, 6))]
    b = to_batch(imgs)
    assert b.shape == (2, 3, 6, 8) and b[0, 0].eq(1).all() and b[1].eq(0).all()
    assert to_batch(torch.rand(3, 4, 4)).shape == (1, 3, 4, 4)
    assert to_batch([torch.rand(3, 4, 4), torch.rand(3, 4, 4)]).shape == (2, 3, 4, 4)
    bad = {
        "uint8": torch.zeros(1, 3, 4, 4, dtype=torch.uint8),
        "255": torch.full((1, 3, 4, 4), 200.0),
        "[-1,1]": torch.full((1, 3, 4, 4), -1.0),
        "channels": torch.rand(1, 4, 4, 4),
        "nan": torch.full((1, 3, 4, 4), float("nan")),
        "mixed": [Image.new("RGB", (8, 6)), Image.new("RGB", (6, 8))],
        "empty": [],
    }
    for name, x in bad.items():
        with pytest.raises(InputError):
            to_batch(x)
    with pytest.raises(InputError, match="divide by 255"):
        to_batch(bad["255"])


def test_imagenet_normalize():
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    assert imagenet_normalize(mean).abs().max() < 1e-6
    one = imagenet_normalize(torch.ones(1, 3, 1, 1)).flatten()
    torch.testing.assert_close(one, torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]))


def test_save_grid(tmp_path):
    a, b = torch.zeros(3, 16, 16), torch.ones(1, 3, 8, 12)
    path = save_grid([[a, b], [a, a]], tmp_path / "sub" / "grid.png", pad=2, background=(0, 255, 0))
    g = Image.open(path)
    assert g.format == "PNG"
    assert g.size == (16 + 16 + 3 * 2, 16 + 16 + 3 * 2)
    assert g.getpixel((2, 2)) == (0, 0, 0)  # first cell (black) at its top-left
    x1 = 2 + 16 + 2  # second column: a white 12x8 cell centred in a 16x16 slot
    assert g.getpixel((x1 + 2, 2 + 4)) == (255, 255, 255) and g.getpixel((x1 + 13, 2 + 11)) == (255, 255, 255)
    assert g.getpixel((x1 + 1, 2 + 4)) == (0, 255, 0) and g.getpixel((x1 + 2, 2 + 3)) == (0, 255, 0)
    # labels add a header row and widen columns to fit the text
    g2 = Image.open(save_grid([[a, b]], tmp_path / "l.png", labels=["original", "a long reconstruction label"], pad=2))
    assert g2.size[1] == 16 + 2 * 2 + 14 and g2.size[0] > 16 + 16 + 3 * 2 + 100
    assert np.asarray(g2)[:14].min() < 128  # some dark text pixels in the header
    with pytest.raises(InputError):
        save_grid([[a, b]], tmp_path / "x.png", labels=["only one"])
