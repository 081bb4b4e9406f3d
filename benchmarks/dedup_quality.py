"""Dedup quality on planted near-copies of Fashion-MNIST images, and dedup speed at 1M x 128.

Quality: ``--originals`` training images, and one planted copy of each of ``--copies`` of them,
made from the image itself (PIL): a horizontal flip, a 1-2 px crop resized back, a 1-2 px shift,
a JPEG re-encode (quality 50-90), a brightness/contrast shift (x a + b, a in [0.85, 1.15], b in
[-20, 20]) or JPEG plus brightness. All rows are embedded with the same features, the benchmarks'
whitened PCA-64 of the pixels fitted on the 60,000 training images (``fashion_mnist.whitened_pca``),
plain (unwhitened) PCA-64, and the SimCLR ``test_resnet`` trained on the pool (``ssl_encoder.py``:
trained to be invariant to crops, flips and colour changes). For each threshold: the groups of
:func:`activeft.engine.dedup.duplicate_groups` (the dedup stage's) and the pairs >= threshold
(:func:`activeft.engine.graph.within`); recall: the planted copies grouped with their original,
overall and by transform; precision of the pairs in one group, of the pairs >= threshold, and of those
pairs that involve a copy. Pairs of two distinct training images count against the first two,
although some are near-copies in the data set itself.

Speed: ``--speed N``: N x 128 rows (1,000 Gaussian clusters, 1% planted copies, unit vectors) through
the dedup stage's engine call on one worker, in this process.

    python benchmarks/dedup_quality.py --out benchmarks/results/dedup_quality.json
    python benchmarks/dedup_quality.py --speed 1000000 --threshold 0.98
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fashion_mnist  # noqa: E402

from activeft.engine import Collectives, Pool  # noqa: E402
from activeft.engine.dedup import duplicate_groups  # noqa: E402
from activeft.engine.graph import within  # noqa: E402

TRANSFORMS = ("hflip", "crop", "shift", "jpeg", "colour", "jpeg+colour")
THRESHOLDS = (0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995)


def plant(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A near-copy of a 28 x 28 uint8 image."""
    im = Image.fromarray(image)
    if kind == "hflip":
        return np.asarray(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    if kind == "crop":
        a, b = rng.integers(1, 3, 2)
        return np.asarray(im.crop((a, b, 28 - rng.integers(0, 2), 28 - rng.integers(0, 2))).resize((28, 28),
                                                                                                    Image.BILINEAR))
    if kind == "shift":
        dx, dy = rng.choice([-2, -1, 1, 2], 2)
        return np.asarray(im.transform((28, 28), Image.AFFINE, (1, 0, dx, 0, 1, dy)))
    if kind.startswith("jpeg"):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=int(rng.integers(50, 91)))
        image = np.asarray(Image.open(buf))
        if kind == "jpeg":
            return image
    a, b = rng.uniform(0.85, 1.15), rng.uniform(-20, 20)
    return np.clip(image.astype(np.float64) * a + b, 0, 255).astype(np.uint8)


def plain_pca(pool: np.ndarray, dims: int = 64):
    """Pixels -> unwhitened PCA-64, L2-normalised (fitted on ``pool``)."""
    x = pool.reshape(len(pool), -1).astype(np.float64) / 255
    mean = x.mean(0)
    vals, vecs = np.linalg.eigh(np.cov((x - mean).T))
    proj = vecs[:, np.argsort(vals)[::-1][:dims]]

    def transform(images):
        f = (images.reshape(len(images), -1).astype(np.float64) / 255 - mean) @ proj
        return (f / np.linalg.norm(f, axis=1, keepdims=True)).astype(np.float32)

    return transform


def scores(x: np.ndarray, n_orig: int, source: np.ndarray, kinds: np.ndarray, threshold: float) -> dict:
    """Precision and recall against the planted pairs (original, copy): of the pairs in one group
    (``group``), of the pairs >= threshold themselves (``edge``) and of those pairs that involve a copy
    (``copy edge``: pairs of two distinct training images left out)."""
    pool = Pool(torch.from_numpy(x), 0, len(x))
    found = duplicate_groups(pool, Collectives(), threshold)
    group = np.arange(len(x))
    group[found.rows.numpy()] = found.kept.numpy()
    sizes = np.bincount(group, minlength=len(x))
    in_groups = int((sizes * (sizes - 1) // 2).sum())
    copies = np.arange(n_orig, len(x))
    hit = group[copies] == group[source]
    src, dst, _ = within(pool, Collectives(), min(threshold, 1 - 2.0 ** -21))
    src, dst = src.numpy(), dst.numpy()  # src < dst: a planted pair is (original, its copy)
    planted = (dst >= n_orig) & (src == source[np.clip(dst - n_orig, 0, None)])
    copy_edges = dst >= n_orig
    out = {"threshold": threshold, "recall": float(hit.mean()),
           "group_precision": float(hit.sum() / max(in_groups, 1)), "pairs_in_groups": in_groups,
           "edge_precision": float(planted.sum() / max(len(src), 1)), "edge_recall": float(planted.sum() / len(copies)),
           "copy_edge_precision": float(planted.sum() / max(copy_edges.sum(), 1)), "pairs": len(src)}
    for kind in TRANSFORMS:
        out[f"recall_{kind}"] = float(hit[kinds == kind].mean())
    return out


def simclr(images: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """The embed stage's features of the SimCLR ``test_resnet`` trained on the pool (``ssl_encoder.py``)."""
    import ssl_encoder

    from activeft.models.backbone import BackboneSpec

    path = os.path.join(ssl_encoder.WEIGHTS, "fashion-mnist-simclr-test_resnet.safetensors")
    return ssl_encoder.features(BackboneSpec("test_resnet", path, 32), pixels)


FEATURES = {"whitened PCA-64": lambda images, pixels: fashion_mnist.whitened_pca(images)(pixels),
            "PCA-64": lambda images, pixels: plain_pca(images)(pixels), "SimCLR test_resnet": simclr}


def quality(originals: int, copies: int, seed: int, features=tuple(FEATURES)) -> dict:
    images, _ = fashion_mnist.load("train")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(images), originals, replace=False))
    source = rng.choice(originals, copies, replace=False)
    kinds = np.array([TRANSFORMS[i % len(TRANSFORMS)] for i in range(copies)])
    planted = np.stack([plant(images[rows[s]], k, rng) for s, k in zip(source, kinds, strict=True)])
    pixels = np.concatenate([images[rows], planted])
    result = {"originals": originals, "copies": copies, "transforms": list(TRANSFORMS), "features": {}}
    for name in features:
        x = FEATURES[name](images, pixels)
        per = []
        for t in THRESHOLDS:
            start = time.perf_counter()
            s = scores(x, originals, source, kinds, t)
            s["seconds"] = round(time.perf_counter() - start, 2)
            per.append(s)
        result["features"][name] = per
    lines = ["| features | T | group precision | edge precision | copy-edge precision | recall | "
             + " | ".join(f"recall {k}" for k in TRANSFORMS) + " |", "|" + "---|" * (6 + len(TRANSFORMS))]
    for name, per in result["features"].items():
        for s in per:
            lines.append(f"| {name} | {s['threshold']} | {s['group_precision']:.4f} | {s['edge_precision']:.4f} | "
                         f"{s['copy_edge_precision']:.4f} | {s['recall']:.4f} | "
                         + " | ".join(f"{s['recall_' + k]:.3f}" for k in TRANSFORMS) + " |")
    result["table"] = "\n".join(lines)
    return result


def speed(n: int, threshold: float, seed: int) -> dict:
    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(seed)
    d, k = 128, 1000
    x = rng.normal(size=(k, d)).astype(np.float32)[rng.integers(0, k, n)]
    x += 0.35 * rng.normal(size=(n, d)).astype(np.float32)
    m = n // 100
    x[-m:] = x[:m] + 0.01 * rng.normal(size=(m, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    start, cpu = time.perf_counter(), time.process_time()
    found = duplicate_groups(Pool(torch.from_numpy(x), 0, n), Collectives(), threshold, seed=seed)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    recall = float(np.isin(np.arange(n - m, n), found.rows.numpy()).mean())
    info = {"rows": n, "dim": d, "threshold": threshold, "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
            "planted_found": recall, **found.info}
    info["table"] = (f"dedup {n} x {d} at {threshold}: {seconds:.1f} s ({cpu:.0f} CPU s) on {os.cpu_count()} cores, "
                     f"{found.info['pairs']} pairs, {found.info['duplicates']} duplicates, "
                     f"{found.info['cells_searched_per_row']} of {found.info['cells']} cells searched per row")
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--originals", type=int, default=20000)
    parser.add_argument("--copies", type=int, default=3000)
    parser.add_argument("--speed", type=int, help="time N x 128 rows instead of the quality run")
    parser.add_argument("--threshold", type=float, default=0.98)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--features", default=",".join(FEATURES), help="comma-separated, of: " + ", ".join(FEATURES))
    parser.add_argument("--out")
    args = parser.parse_args()
    result = speed(args.speed, args.threshold, args.seed) if args.speed else \
        quality(args.originals, args.copies, args.seed, args.features.split(","))
    fashion_mnist.write_result(result, args.out)


if __name__ == "__main__":
    main()
