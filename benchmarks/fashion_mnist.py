"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` as embedding stores.

Pool: the 60,000 training images; test set: the 10,000 test images. On CPU machines there is
no pretrained image backbone to download, so the stand-in "pretrained" representation is
unsupervised and fitted on the unlabeled pool only: whitened PCA of the pixels to 64 dims,
L2-normalised. The true labels are stored in the ``label`` column: the benchmarks use them as
the annotation oracle and to score the test set; selection and calibration never read them.
"""

from __future__ import annotations

import gzip
import os
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DIR = "/usr/share/datasets/fashion-mnist"
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def write_result(result: dict, out: str | None) -> dict:
    """Stamp the machine on a benchmark ``result``, print its table and write it to ``out`` as JSON."""
    import json
    import platform

    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", **result}
    print(result["table"])
    if out:
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
    return result


def ensure() -> None:
    """Install the Debian package with the project's script when the files are missing."""
    if not all(os.path.exists(os.path.join(DIR, f)) for pair in FILES.values() for f in pair):
        subprocess.run([os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                     "install_debian_packages.sh")],
                       check=True)


def _idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = np.frombuffer(data, ">u4", count=ndim, offset=4)
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 28, 28) uint8, labels (N,) int)`` of ``"train"`` or ``"test"``."""
    ensure()
    images, labels = FILES[split]
    return _idx(os.path.join(DIR, images)), _idx(os.path.join(DIR, labels)).astype(np.int64)


def whitened_pca(pool: np.ndarray, dims: int = 64):
    """A function pixels -> whitened PCA features, fitted on ``pool`` (N, 784) only."""
    x = pool.reshape(len(pool), -1).astype(np.float64) / 255
    mean = x.mean(0)
    vals, vecs = np.linalg.eigh(np.cov((x - mean).T))
    top = np.argsort(vals)[::-1][:dims]
    proj = vecs[:, top] / np.sqrt(vals[top])

    def transform(images: np.ndarray) -> np.ndarray:
        f = (images.reshape(len(images), -1).astype(np.float64) / 255 - mean) @ proj
        return (f / np.linalg.norm(f, axis=1, keepdims=True)).astype(np.float32)

    return transform


def subset(n: int, size: int | None, seed: int = 0) -> np.ndarray:
    """Rows of a class-agnostic random subset (all rows when ``size`` is None)."""
    return np.arange(n) if size is None or size >= n else np.sort(np.random.default_rng(seed).choice(n, size, False))


def holdout_rows(rows: np.ndarray, holdout: int) -> np.ndarray:
    """The training-image rows of a validation split of ``holdout`` images, the same for every feature space."""
    return np.sort(np.random.default_rng(2).choice(rows, holdout, replace=False))


def split_holdout(store, holdout: int, root: str):
    """``(pool, validation)`` stores: ``store`` (training images ``train-NNNNN``, labeled) without and with
    the rows of :func:`holdout_rows`, written once under ``root`` and reused."""
    if stores := _written(root):
        return stores
    table = store.read(columns=["id", "embedding", "label"])
    rows = np.array([int(i.split("-")[1]) for i in table.column("id").to_pylist()])
    held = np.isin(rows, holdout_rows(np.sort(rows), holdout))
    return _write_splits(root, {"pool": table.filter(pa.array(~held)), "test": table.filter(pa.array(held))})


def _written(root: str):
    """The stores ``root/pool`` and ``root/test`` when both were written, else None."""
    import activeft

    paths = [os.path.join(root, split) for split in ("pool", "test")]
    if all(os.path.exists(os.path.join(p, "_manifest.json")) for p in paths):
        return tuple(activeft.EmbeddingStore(p) for p in paths)
    return None


def _write_splits(root: str, tables: dict):
    """Import each ``{split: table}`` as the store ``root/split``; returns the stores in that order."""
    import activeft

    os.makedirs(root, exist_ok=True)
    out = []
    for split, table in tables.items():
        path = os.path.join(root, f"{split}.parquet")
        pq.write_table(table, path)
        out.append(activeft.import_embeddings(path, os.path.join(root, split), overwrite=True, partition_size=10_000))
    return tuple(out)


def pool_variant(pool, test, spec: str):
    """``(pool, test)`` of a pool variant, written once beside ``pool`` and reused.

    ``classes:3,5,8``: both keep only those classes. ``longtail:R``: a long-tailed pool, the classes in
    a fixed shuffled order keeping ``R ** (-rank / (C - 1))`` of their rows (the largest all, the smallest
    ``1 / R``; rows drawn with a fixed seed), scored on the whole balanced ``test`` (as CIFAR-LT is).
    """
    kind, _, arg = spec.partition(":")
    if kind not in ("classes", "longtail") or not arg:
        raise ValueError(f"pool variant {spec!r}: expected classes:A,B,... or longtail:R")
    root = f"{pool.uri}-{kind}{arg.replace(',', '_')}"
    if stores := _written(root):
        return stores
    tables = {s: store.read(columns=["id", "embedding", "label"]) for s, store in (("pool", pool), ("test", test))}
    labels = {s: t.column("label").to_numpy() for s, t in tables.items()}
    if kind == "classes":
        keep = [int(c) for c in arg.split(",")]
        masks = {s: np.isin(y, keep) for s, y in labels.items()}
    else:
        classes = np.random.default_rng(3).permutation(np.unique(labels["pool"]))
        rng, y = np.random.default_rng(4), labels["pool"]
        mask = np.zeros(len(y), bool)
        for rank, c in enumerate(classes):
            rows = np.flatnonzero(y == c)
            share = float(arg) ** (-rank / (len(classes) - 1))
            mask[rng.choice(rows, max(1, round(share * len(rows))), replace=False)] = True
        masks = {"pool": mask, "test": np.ones(len(labels["test"]), bool)}
    return _write_splits(root, {s: tables[s].filter(pa.array(masks[s])) for s in tables})


def build_stores(workdir: str, pool_size: int | None = None, test_size: int | None = None, dims: int = 64,
                 holdout: int | None = None):
    """``(pool_store, test_store)`` with PCA features, written once under ``workdir`` and reused.

    With ``holdout=N`` the second store is not the test set but N labeled images carved out of the
    training pool (a validation split for choosing hyperparameters); the pool is the rest.
    """

    name = f"fmnist-pca{dims}-{pool_size or 'all'}-{test_size or 'all'}" + (f"-holdout{holdout}" if holdout else "")
    root = os.path.join(workdir, name)
    if stores := _written(root):
        return stores
    xtr, ytr = load("train")
    xte, yte = load("test")
    rows_tr, rows_te = subset(len(xtr), pool_size), subset(len(xte), test_size, seed=1)
    if holdout:  # validation rows come from the training images; the test set is not touched
        val = holdout_rows(rows_tr, holdout)
        rows_tr, rows_te, xte, yte = np.setdiff1d(rows_tr, val), val, xtr, ytr
    xtr, ytr, xte, yte = xtr[rows_tr], ytr[rows_tr], xte[rows_te], yte[rows_te]
    transform = whitened_pca(xtr, dims)  # fitted on the pool only, labels unused
    return _write_splits(root, {split: pa.table({"id": [f"{prefix}-{r:05d}" for r in rows],
                                                 "embedding": list(transform(x)), "label": y})
                                for split, x, y, rows, prefix in (("pool", xtr, ytr, rows_tr, "train"),
                                                                  ("test", xte, yte, rows_te,
                                                                   "train" if holdout else "test"))})
