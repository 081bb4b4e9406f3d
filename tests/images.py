"""Real image files for tests: PNG and JPEG written with PIL, plus broken ones; their reference embeddings."""

import os

import numpy as np
import torch
from PIL import Image

from activeft.models.backbone import BackboneSpec, Preprocess, pooled_features


def pattern(i: int, size: int = 40) -> np.ndarray:
    """A distinct, structured RGB image per ``i`` (stripes and a colour ramp)."""
    y, x = np.mgrid[:size, :size]
    r = (x * (i % 7 + 1) * 9) % 256
    g = (y * (i % 5 + 1) * 13) % 256
    b = ((x + y) * (i % 3 + 1) * 5 + 17 * i) % 256
    return np.stack([r, g, b], -1).astype(np.uint8)


def write_images(folder, n: int, start: int = 0, size: int = 40) -> list[str]:
    """Write ``n`` images (alternating PNG / JPEG, some in a sub-folder); return their ids."""
    ids = []
    for i in range(start, start + n):
        ext = "png" if i % 2 == 0 else "jpg"
        key = f"{'sub/' if i % 4 == 3 else ''}img{i:04d}.{ext}"
        path = os.path.join(folder, key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(pattern(i, size)).save(path)
        ids.append(key)
    return ids


def write_broken(folder) -> list[str]:
    """A corrupt PNG, a truncated JPEG and a text file named .jpg; return their ids."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "corrupt.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    good = os.path.join(folder, "truncated.jpg")
    Image.fromarray(pattern(99, 64)).save(good, quality=95)
    data = open(good, "rb").read()
    with open(good, "wb") as f:
        f.write(data[: len(data) // 2])
    with open(os.path.join(folder, "notes.jpg"), "w") as f:
        f.write("this is not an image\n")
    return ["corrupt.png", "notes.jpg", "truncated.jpg"]


def stripes(i: int, vertical: bool, size: int = 32) -> np.ndarray:
    """A noisy stripe image: vertical or horizontal is the class, easy for a CNN to learn."""
    rng = np.random.default_rng(i)
    ramp = (np.arange(size) // (4 + i % 3) % 2) * 200 + 30
    img = np.tile(ramp, (size, 1)) if vertical else np.tile(ramp[:, None], (1, size))
    return np.clip(img[:, :, None] + rng.integers(-20, 20, (size, size, 3)), 0, 255).astype(np.uint8)


def direct_embeddings(folder, ids, spec=BackboneSpec("resnet18", "none", 32)):
    """The reference: timm's own eval transform and forward, in this process, one image at a time."""
    model, _ = spec.build()
    pre = Preprocess(spec.data_config(model))
    out = []
    for i in ids:
        with Image.open(os.path.join(folder, i)) as img:
            x = torch.from_numpy(pre(img))[None]
        with torch.inference_mode():
            out.append(torch.nn.functional.normalize(pooled_features(model, pre.normalize(x)), dim=1)[0].numpy())
    return np.stack(out)
