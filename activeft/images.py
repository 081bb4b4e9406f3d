"""Reading and decoding images for the embed and finetune stages (Ray Data CPU tasks)."""

from __future__ import annotations

import functools
import io
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import storage
from .backbone import Preprocess

_BUFFER = re.compile(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>")


@functools.lru_cache(maxsize=8)
def preprocess(config_key: tuple, training: bool = False) -> Preprocess:
    return Preprocess(dict(config_key), training)


def config_key(config: dict) -> tuple:
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in config.items())


def _fetch(uri: str):
    try:
        return storage.read_bytes(uri)
    except Exception as e:  # returned, so the decode loop records it for this row only
        return e


def read_images(uris: list[str], config: dict, training: bool = False) -> tuple[np.ndarray, list[str]]:
    """``(images (n, 3, H, W) uint8, errors)``: timm's eval (or train) transform of each image;
    a row that cannot be read or decoded gets zeros and its error message ("" when fine)."""
    from PIL import Image

    pre = preprocess(config_key(config), training)
    _, h, w = config["input_size"]
    with ThreadPoolExecutor(8) as pool:  # object-store latency: fetch concurrently, decode serially
        blobs = list(pool.map(_fetch, uris))
    images = np.zeros((len(uris), 3, h, w), np.uint8)
    errors = []
    for i, blob in enumerate(blobs):
        try:
            if isinstance(blob, Exception):
                raise blob
            with Image.open(io.BytesIO(blob)) as img:
                img.load()
                images[i] = pre(img)
            errors.append("")
        except Exception as e:  # any unreadable input is recorded, never fatal
            errors.append(f"{type(e).__name__}: {_BUFFER.sub('', storage._first_line(e))}")
    return images, errors
