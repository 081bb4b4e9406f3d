"""Reading and decoding images: the one path of the embed and finetune stages (Ray Data CPU tasks)
and of the report's thumbnails."""

from __future__ import annotations

import functools
import io
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..io import storage

_BUFFER = re.compile(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>")


@functools.lru_cache(maxsize=8)
def preprocess(config_key: tuple, training: bool = False):
    from .backbone import Preprocess

    return Preprocess(dict(config_key), training)


def config_key(config: dict) -> tuple:
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in config.items())


def to_rgb(image):
    """The upright 8-bit RGB version of a decoded PIL image, as timm's transforms expect.

    - The EXIF orientation is applied: a sideways phone photo embeds as the upright image.
    - 16-bit, 32-bit integer and float images (modes ``I;16*``, ``I``, ``F``) are scaled
      linearly from their own minimum and maximum to 0..255 (Pillow's ``convert`` clips them,
      so a 16-bit PNG turns white); NaN and inf become 0, a constant image black.
    - Alpha (RGBA, LA, PA, palette transparency) is dropped, not composited: the pixels' own
      colours are kept, as timm's and torchvision's loaders do (``convert("RGB")``), so
      embeddings match what models trained through them see.
    - Palette, CMYK, YCbCr, grayscale and bilevel images are converted by Pillow.
    """
    from PIL import ExifTags, Image, ImageOps

    if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I") or image.mode == "F":
        x = np.asarray(image, dtype=np.float64)
        finite = np.isfinite(x)
        lo, hi = (x[finite].min(), x[finite].max()) if finite.any() else (0.0, 0.0)
        x = np.where(finite, (x - lo) * (255 / (hi - lo) if hi > lo else 0.0), 0.0)
        image = Image.fromarray(np.round(x).astype(np.uint8))
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Pillow's own route for palette transparency; alpha dropped below
    return image if image.mode == "RGB" else image.convert("RGB")


def _fetch(uri: str):
    try:
        return storage.read_bytes(uri)
    except Exception as e:  # returned, so the decode loop records it for this row only
        return e


def open_images(uris: list[str]):
    """Each image at ``uris`` (local or any object store) decoded to upright 8-bit RGB
    (:func:`to_rgb`), or the exception that stopped it (an unreadable input is never fatal), one
    at a time: the bytes are fetched concurrently (object-store latency), but a block of large
    photos is never held decoded all at once."""
    from PIL import Image

    with ThreadPoolExecutor(8) as pool:
        blobs = list(pool.map(_fetch, uris))
    for blob in blobs:
        try:
            if isinstance(blob, Exception):
                raise blob
            with Image.open(io.BytesIO(blob)) as img:
                img.load()
                yield to_rgb(img)
        except Exception as e:  # recorded by the caller
            yield e


def read_images(uris: list[str], config: dict, training: bool = False) -> tuple[np.ndarray, list[str]]:
    """``(images (n, 3, H, W) uint8, errors)``: timm's eval (or train) transform of each image of
    :func:`open_images`; a row that cannot be read or decoded gets zeros and its error message
    ("" when fine)."""
    pre = preprocess(config_key(config), training)
    _, h, w = config["input_size"]
    images = np.zeros((len(uris), 3, h, w), np.uint8)
    errors = []
    for i, image in enumerate(open_images(uris)):
        try:
            if isinstance(image, Exception):
                raise image
            images[i] = pre(image)
            errors.append("")
        except Exception as e:  # any unreadable input is recorded, never fatal
            errors.append(f"{type(e).__name__}: {_BUFFER.sub('', storage._first_line(e))}")
    return images, errors
