"""Decoding real files of every awkward kind, written by Pillow, to the upright 8-bit RGB image."""

import warnings

import numpy as np
from PIL import ExifTags, Image
from timm.data import resolve_data_config

from activeft.models.images import read_images, to_rgb

CONFIG = resolve_data_config({"input_size": (3, 48, 48), "crop_pct": 1.0})


def smooth(h: int = 48, w: int = 64) -> np.ndarray:
    """A photo-like RGB image with no symmetry (so a wrong rotation shows), gentle on JPEG."""
    y, x = np.mgrid[:h, :w]
    rgb = np.stack([x * 255 // w, y * 255 // h, (x + 2 * y) * 255 // (w + 2 * h)], -1)
    rgb[: h // 3, : w // 4] = (250, 30, 30)  # a red corner patch
    return rgb.astype(np.uint8)


def decode(*paths) -> list[np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Pillow's palette-transparency warning
        images, errors = read_images([str(p) for p in paths], CONFIG)
    assert errors == [""] * len(paths)
    return list(images.astype(np.int32))


def test_exif_orientation_applied(tmp_path):
    upright = Image.fromarray(smooth())
    sideways = upright.transpose(Image.Transpose.ROTATE_90)  # as stored by a camera held sideways
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # "rotate 90 degrees clockwise to display"
    sideways.save(tmp_path / "tagged.jpg", quality=95, exif=exif)
    sideways.save(tmp_path / "untagged.jpg", quality=95)
    upright.save(tmp_path / "upright.jpg", quality=95)
    tagged, untagged, want = decode(tmp_path / "tagged.jpg", tmp_path / "untagged.jpg", tmp_path / "upright.jpg")
    assert np.abs(tagged - want).mean() < 2  # JPEG noise only
    assert np.abs(untagged - want).mean() > 30  # what ignoring the tag would give


def test_high_bit_depth_scaled_by_range(tmp_path):
    h, w = 48, 64
    ramp = np.linspace(0, 1, h * w).reshape(h, w)
    sixteen = (1000 + 29000 * ramp).astype(np.uint16)  # never above 30000: clipping would make it all white
    Image.fromarray(sixteen).save(tmp_path / "deep.png")
    floats = (-2 + 5 * ramp).astype(np.float32)
    Image.fromarray(floats).save(tmp_path / "float.tiff")
    assert Image.open(tmp_path / "deep.png").mode == "I;16" and Image.open(tmp_path / "float.tiff").mode == "F"
    for data, name in ((sixteen, "deep"), (floats, "float")):
        scaled = (data - data.min()) / (data.max() - data.min()) * 255
        Image.fromarray(np.round(scaled).astype(np.uint8)).save(tmp_path / f"{name}-8bit.png")
        got, want = decode(tmp_path / f"{name}.png" if name == "deep" else tmp_path / "float.tiff",
                           tmp_path / f"{name}-8bit.png")
        assert np.abs(got - want).max() <= 1
        assert got.min() <= 2 and got.max() >= 253  # the full range, neither white nor black
        assert (got[0] == got[1]).all() and (got[1] == got[2]).all()  # grayscale on all three channels


def test_non_finite_and_constant_images():
    x = np.array([[np.nan, 0.0], [np.inf, 2.0]], np.float32)
    assert np.asarray(to_rgb(Image.fromarray(x)))[..., 0].tolist() == [[0, 0], [0, 255]]
    flat = Image.fromarray(np.full((4, 4), 7000, np.uint16))
    assert not np.asarray(to_rgb(flat)).any()


def test_alpha_palette_cmyk_and_grayscale(tmp_path):
    rgb = smooth()
    alpha = np.where(np.arange(64) < 32, 0, 255).astype(np.uint8)[None, :].repeat(48, 0)
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    gray = rgb[..., 1]
    Image.fromarray(np.dstack([gray, alpha]), "LA").save(tmp_path / "la.png")
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([gray] * 3)).save(tmp_path / "gray-rgb.png")
    got_rgba, got_rgb, got_la, got_gray, want_gray = decode(
        *(tmp_path / f for f in ("rgba.png", "rgb.png", "la.png", "gray.png", "gray-rgb.png")))
    assert (got_rgba == got_rgb).all()  # alpha dropped, colours kept (timm's convert("RGB"))
    assert (got_la == want_gray).all() and (got_gray == want_gray).all()

    palette = Image.fromarray(rgb).quantize(8)
    palette.save(tmp_path / "palette.png", transparency=bytes([0, 128] + [255] * 6))  # per-entry alpha
    reread = Image.open(tmp_path / "palette.png")
    assert reread.mode == "P" and isinstance(reread.info["transparency"], bytes)
    colours = np.array(palette.getpalette()[:24]).reshape(8, 3)[np.asarray(palette)]
    Image.fromarray(colours.astype(np.uint8)).save(tmp_path / "palette-rgb.png")
    got, want = decode(tmp_path / "palette.png", tmp_path / "palette-rgb.png")
    assert (got == want).all()

    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    Image.fromarray(rgb).save(tmp_path / "rgb.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    got, want = decode(tmp_path / "cmyk.jpg", tmp_path / "rgb.jpg")
    assert np.abs(got - want).mean() < 3  # JPEG noise only; a wrong conversion is off by ~100

