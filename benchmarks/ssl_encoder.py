"""A Fashion-MNIST backbone trained without labels (SimCLR, ``activeft.models.ssl``): the quality
benchmark's second feature space.

Trains on the 60,000 training images only (their labels are never read) with 2 torch threads and
writes ``weights/fashion-mnist-simclr-<model>.safetensors`` plus ``<same name>.json``: settings,
seed, wall time, per-epoch loss and a label-free sanity check on the 10,000 test images (their
labels unread): view retrieval (the share of augmented views whose nearest clean embedding is
their own image) and the effective rank of the embeddings (exp of the entropy of the normalised
singular values: a collapsed encoder has rank near 1), each next to the same model with random
weights. Features are computed as the embed stage does (``BackboneSpec``, ``Preprocess``, the
pooled features L2-normalised), in process.

``--probe`` adds a diagnostic that reads labels: logistic regression (scikit-learn defaults) on
the features of 10,000 training images, scored on the 10,000 test images, next to the whitened
PCA-64 features of ``fashion_mnist.py``. It is reported, never used to tune anything but the
number of epochs.

    python benchmarks/ssl_encoder.py --probe      # 1,400 CPU seconds: about 12 minutes on 2 idle cores
    python benchmarks/quality.py --model test_resnet --image-size 32 \\
        --pretrained benchmarks/weights/fashion-mnist-simclr-test_resnet.safetensors
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import sys
import time

# set before torch loads: OpenMP threads that spin at barriers stall when other jobs share the cores
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fashion_mnist  # noqa: E402

from activeft.models import ssl  # noqa: E402
from activeft.models.backbone import BackboneSpec, Preprocess, pooled_features  # noqa: E402

WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
log = logging.getLogger("ssl_encoder")


def features(spec: BackboneSpec, images: np.ndarray) -> np.ndarray:
    """The embed stage's features of uint8 ``(n, h, w)`` images, computed in process."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    net, _ = spec.build()
    pre = Preprocess(spec.data_config(net))
    out = []
    with torch.inference_mode():
        for lo in range(0, len(images), 1000):
            x = torch.from_numpy(np.stack([pre(Image.fromarray(im)) for im in images[lo:lo + 1000]]))
            out.append(F.normalize(pooled_features(net, pre.normalize(x)), dim=1).numpy())
    return np.concatenate(out)


def sanity(spec: BackboneSpec, images: np.ndarray, seed: int = 0) -> dict:
    """Label-free checks of an encoder on ``images``: view retrieval top-1 and effective rank."""
    import torch
    import torch.nn.functional as F

    clean = features(spec, images)
    net, _ = spec.build()
    pre = Preprocess(spec.data_config(net))
    mean, std = (torch.tensor(pre.config[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    g = torch.Generator().manual_seed(seed)
    hits = 0
    with torch.inference_mode():
        for lo in range(0, len(images), 1000):
            views = ssl.augment(torch.from_numpy(images[lo:lo + 1000]).unsqueeze(1), spec.image_size, 0.3, g)
            z = F.normalize(pooled_features(net, (views - mean) / std), dim=1).numpy()
            hits += int(((z @ clean.T).argmax(1) == np.arange(lo, lo + len(z))).sum())
    s = np.linalg.svd(clean - clean.mean(0), compute_uv=False)
    p = s / s.sum()
    return {"view_retrieval_top1": round(hits / len(images), 4),
            "effective_rank": round(float(np.exp(-(p * np.log(p + 1e-12)).sum())), 2), "dim": clean.shape[1]}


def probe(train: np.ndarray, ytr: np.ndarray, test: np.ndarray, yte: np.ndarray) -> float:
    """Test accuracy of scikit-learn's default logistic regression on the given features."""
    from sklearn.linear_model import LogisticRegression

    return round(float(LogisticRegression(max_iter=5000).fit(train, ytr).score(test, yte)), 4)


def main(argv=None) -> dict:
    import timm
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="test_resnet")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=18)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--probe", action="store_true", help="add the linear-probe diagnostic (reads labels)")
    p.add_argument("--out-dir", default=WEIGHTS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(2)
    xtr, _ = fashion_mnist.load("train")  # labels unused
    settings = {"model": args.model, "image_size": args.image_size, "epochs": args.epochs,
                "batch_size": args.batch_size, "seed": args.seed}
    load, cpu = os.getloadavg()[0], time.process_time()
    enc = ssl.train(xtr, **settings)
    cpu = time.process_time() - cpu
    os.makedirs(args.out_dir, exist_ok=True)
    path = enc.save(os.path.join(args.out_dir, f"fashion-mnist-simclr-{args.model}.safetensors"))
    xte, yte = fashion_mnist.load("test")
    trained = BackboneSpec(args.model, path, args.image_size)
    random = BackboneSpec(args.model, "none", args.image_size)
    result = {
        "method": "SimCLR (activeft.models.ssl.train), NT-Xent; Fashion-MNIST training images only, labels unused",
        "settings": {**settings, **{k: ssl.PARAMS[k].default for k in ("lr", "temperature", "min_scale")},
                     "torch_threads": torch.get_num_threads(), "OMP_WAIT_POLICY": os.environ["OMP_WAIT_POLICY"]},
        "train_seconds": enc.seconds, "train_cpu_seconds": round(cpu, 1),
        "load_average_1min": [round(load, 2), round(os.getloadavg()[0], 2)],
        "loss_per_epoch": [round(v, 4) for v in enc.losses],
        "weights": os.path.basename(path), "bytes": os.path.getsize(path),
        "sha256": hashlib.sha256(open(path, "rb").read()).hexdigest(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
        "timm": timm.__version__,
        "label_free_sanity": {"note": "no labels read: the 10,000 Fashion-MNIST test images, one augmented view "
                                      "each; view_retrieval_top1 = share of views whose nearest clean embedding "
                                      "is their own image; effective_rank of the clean embeddings",
                              "trained": sanity(trained, xte), "random_init": sanity(random, xte)}}
    if args.probe:
        xtr, ytr = fashion_mnist.load("train")
        rows = fashion_mnist.subset(len(xtr), 10_000)
        pca = fashion_mnist.whitened_pca(xtr, 64)
        result["linear_probe_diagnostic"] = {
            "note": "reads labels; a diagnostic, used only to choose the number of epochs: logistic regression "
                    "(scikit-learn defaults) on L2-normalised features of 10,000 training images, top-1 on the "
                    "10,000 test images",
            "ssl": probe(features(trained, xtr[rows]), ytr[rows], features(trained, xte), yte),
            "random_init": probe(features(random, xtr[rows]), ytr[rows], features(random, xte), yte),
            "pca64": probe(pca(xtr[rows]), ytr[rows], pca(xte), yte)}
    with open(path.removesuffix(".safetensors") + ".json", "w") as f:
        json.dump(result, f, indent=1)
    log.info("%s", json.dumps({k: result[k] for k in ("train_seconds", "label_free_sanity")}))
    if args.probe:
        log.info("linear probe (diagnostic): %s", json.dumps(result["linear_probe_diagnostic"]))
    return result


if __name__ == "__main__":
    main()
