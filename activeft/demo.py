"""A small real image set for the demo and the README: scikit-learn's bundled handwritten
digits (1,797 8x8 scans, UCI), upscaled to PNG files, one folder per class, plus a manifest
with the true labels for benchmarks (selection never reads labels)."""

from __future__ import annotations

import os

import numpy as np


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
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)  # values are 0..16
    n = len(images) if limit is None else min(limit, len(images))
    rows = ["id,uri,label"]
    for i in range(n):
        label = int(digits.target[i])
        key = f"{label}/{i:04d}.png"
        path = os.path.join(folder, key)
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(images[i]).resize((size, size), Image.BICUBIC).convert("RGB").save(path)
        rows.append(f"{key},{key},{label}")
    with open(os.path.join(folder, "_manifest.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    return n
