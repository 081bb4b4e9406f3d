"""A small real image set for the demo and the README: scikit-learn's bundled handwritten
digits (1,797 8x8 scans, UCI), upscaled to PNG files, one folder per class, plus a manifest
with the true labels for benchmarks (selection never reads labels), and a small backbone
trained on the images without their labels (:mod:`activeft.models.ssl`), so the demo selects from
features that carry the digits' structure rather than from a random network's."""

from __future__ import annotations

import os

import numpy as np

MODEL = "test_resnet"  # timm's smallest ResNet (0.37 M parameters, 96-dim features)
IMAGE_SIZE = 16  # the backbone's input side (the 8x8 scans need no more), configs/demo.yaml's embed.image_size
BACKBONE = "backbone.safetensors"


def digit_images(size: int, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images (n, size, size) uint8, labels)``: the digits upscaled (bicubic) as the PNG files are."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)[:limit]  # values are 0..16
    big = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in images])
    return big, digits.target[:limit].astype(int)


def write_digits(folder: str, size: int = 32, limit: int | None = None) -> int:
    """Write the digits as ``folder/<label>/<index>.png`` and ``folder/_manifest.csv``; return the count.

    Existing files are kept, so a rerun is cheap and idempotent.

    Examples
    --------
    >>> import tempfile
    >>> write_digits(tempfile.mkdtemp(), limit=5)
    5
    """
    from PIL import Image

    images, labels = digit_images(size, limit)
    rows = ["id,uri,label"]
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        key = f"{label}/{i:04d}.png"
        path = os.path.join(folder, key)
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(image).convert("RGB").save(path)
        rows.append(f"{key},{key},{label}")
    with open(os.path.join(folder, "_manifest.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    return len(images)


def write_backbone(folder: str, size: int = 32, epochs: int = 20, limit: int | None = None, seed: int = 0):
    """Train :data:`MODEL` with SimCLR on the digits as the ``size``-pixel PNG files show them (labels
    unused) and write ``folder/backbone.safetensors``; return the :class:`activeft.models.ssl.Encoder`.

    The backbone sees :data:`IMAGE_SIZE` pixels: embed with ``model=MODEL, image_size=IMAGE_SIZE``
    (as ``configs/demo.yaml`` does). Deterministic for a seed and torch thread count; about 20 CPU
    seconds.
    """
    from .models.ssl import train

    images, _ = digit_images(size, limit)
    encoder = train(images, model=MODEL, image_size=IMAGE_SIZE, epochs=epochs, batch_size=128, seed=seed)
    os.makedirs(folder, exist_ok=True)
    encoder.save(os.path.join(folder, BACKBONE))
    return encoder
