"""Quality benchmark: does a selection give a better model per label than the baselines?

Fashion-MNIST (Debian's ``dataset-fashion-mnist``): the 60,000 training images are the unlabeled
pool, the 10,000 test images the test set. Features are the unsupervised stand-in of
``fashion_mnist.py`` (whitened PCA-64 of the pixels, fitted on the pool only), or a timm backbone
through the embed stage with ``--model NAME --pretrained PATH|hub``: the second feature space is
``ssl_encoder.py``'s, trained on the pool images without labels (``--model test_resnet
--image-size 32 --pretrained benchmarks/weights/fashion-mnist-simclr-test_resnet.safetensors``).

Every cell goes through the product's stages: ``activeft.select`` (every registered method),
the pool's own labels as the annotation oracle for the selected ids, ``activeft.calibrate`` for
activedc (ActiveFT's selection + calibration), then ``activeft.finetune(mode="linear")`` (the same
logistic-regression recipe for every method) scored on the test store. Two protocols, paired on the
same selections: ``labels`` (the head on the selected labels only) and ``labelprop`` (the labels
spread over the pool's neighbour graph, ``activeft.calibrate(method="labelprop")``, and the head on
every propagated row, weighted by its confidence). Reported: top-1 on the test set per protocol, mean
+- std over seeds, the selection (and calibration) time, and per cell the seeds a method beats
k-means in.

    python benchmarks/quality.py                                  # the full table (about 20 min on 2 cores)
    python benchmarks/quality.py --pool-size 2000 --test-size 1000 --budgets 20 --seeds 1   # a smoke run
    python benchmarks/quality.py --merge a.json,b.json --out ab.json      # one table of several runs
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fashion_mnist  # noqa: E402

import activeft  # noqa: E402
from activeft.calibrate import CALIBRATION  # noqa: E402
from activeft.io import storage  # noqa: E402

METHODS = ("random", "fds", "kmeans", "activeft", "activedc", "probcover", "typiclust", "herding", "bilaf")
log = logging.getLogger("quality")


def embed_with_backbone(workdir: str, model: str, pretrained: str, image_size, pool_size, test_size):
    """Write the images as PNG files with a labeled manifest, then embed them with the embed stage."""
    from PIL import Image

    stores = []
    for split, size in (("train", pool_size), ("test", test_size)):
        images, labels = fashion_mnist.load(split)
        rows = fashion_mnist.subset(len(images), size, seed=0 if split == "train" else 1)
        folder = os.path.join(workdir, "png", split)
        os.makedirs(folder, exist_ok=True)
        lines = ["id,uri,label"]
        for r in rows:
            path = os.path.join(folder, f"{r:05d}.png")
            if not os.path.exists(path):
                Image.fromarray(images[r]).save(path)
            lines.append(f"{split}-{r:05d},{path},{labels[r]}")
        manifest = os.path.join(folder, "_manifest.csv")
        with open(manifest, "w") as f:
            f.write("\n".join(lines) + "\n")
        out = os.path.join(workdir, f"store-{model.replace('/', '_')}-{split}-{size or 'all'}")
        stores.append(activeft.embed(manifest, out, model=model, pretrained=pretrained, image_size=image_size,
                                     resume=True))
    return tuple(stores)


def run_cell(pool, test, truth, method, budget, seed, workdir, params, protocols=("labels",)) -> dict:
    features = os.path.relpath(pool.uri, workdir).replace(os.sep, "-")  # runs on other features never collide
    base = os.path.join(workdir, "cells", features, f"{method}-{budget}-{seed}")
    select_method = "activeft" if method == "activedc" else method
    start = time.perf_counter()
    sel = activeft.select(pool, budget, method=select_method, seed=seed, output=os.path.join(base, "sel"),
                          overwrite=True, **params.get(method if method != "activedc" else "activeft", {}))
    row = {"method": method, "budget": budget, "seed": seed, "select_s": round(time.perf_counter() - start, 2),
           "classes_hit": len({truth[i] for i in sel.ids})}
    labels = pa.table({"id": sel.ids, "label": [truth[i] for i in sel.ids]})
    train = labels
    if method == "activedc":
        start = time.perf_counter()
        train = activeft.calibrate(pool, selection=os.path.join(base, "sel"), labels=labels, seed=seed,
                                   output=os.path.join(base, "cal"), overwrite=True, **params.get("calibrate", {}))
        info = storage.read_json(os.path.join(base, "cal", CALIBRATION))
        row.update(calibrate_s=round(time.perf_counter() - start, 2), pseudo=info["pseudo"],
                   pseudo_accuracy=info["pseudo_label_accuracy"], skipped=info["skipped"])
    if "labels" in protocols:
        metrics = activeft.finetune(pool, train=train, val_store=test, output=os.path.join(base, "run"),
                                    mode="linear", overwrite=True)
        row["accuracy"] = metrics["final_val_accuracy"]
    if "labelprop" in protocols:
        start = time.perf_counter()
        spread = activeft.calibrate(pool, selection=os.path.join(base, "sel"), labels=labels, method="labelprop",
                                    seed=seed, output=os.path.join(base, "lp"), overwrite=True,
                                    **params.get("labelprop", {}))
        info = storage.read_json(os.path.join(base, "lp", CALIBRATION))
        metrics = activeft.finetune(pool, train=spread, val_store=test, output=os.path.join(base, "run-lp"),
                                    mode="linear", overwrite=True)
        row.update(accuracy_labelprop=metrics["final_val_accuracy"], labelprop_s=round(time.perf_counter() - start, 2),
                   labelprop_pseudo_accuracy=info["pseudo_label_accuracy"])
    return row


PROTOCOLS = {"labels": "accuracy", "labelprop": "accuracy_labelprop"}


def table(rows, budgets, methods) -> str:
    """One row a method; a cell per budget: ``labels`` top-1 (mean ± std over seeds) and, where run, `` / ``
    the ``labelprop`` one; the classes the selections hit at the smallest budget (mean over seeds)."""
    lines = ["| method | " + " | ".join(f"B = {b}" for b in budgets) + f" | classes hit (B = {budgets[0]}) "
             f"| selection s (B = {budgets[-1]}) | runs |", "|---|" + "---|" * (len(budgets) + 3)]
    for m in methods:
        cells = []
        for b in budgets:
            parts = []
            for key in PROTOCOLS.values():
                acc = [r[key] * 100 for r in rows if r["method"] == m and r["budget"] == b and key in r]
                parts += [f"{np.mean(acc):.1f} ± {np.std(acc):.1f}"] if acc else []
            cells.append(" / ".join(parts))
        first = [r["classes_hit"] for r in rows if r["method"] == m and r["budget"] == budgets[0]
                 and "classes_hit" in r]
        last = [r for r in rows if r["method"] == m and r["budget"] == budgets[-1]]
        secs = [r["select_s"] + r.get("calibrate_s", 0) for r in last]
        runs = len({r["seed"] for r in rows if r["method"] == m})
        hit = f"{np.mean(first):.1f}" if first else "-"
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {hit} | {np.mean(secs):.1f} | {runs} |")
    return "\n".join(lines)


def wins(rows, baseline: str = "kmeans") -> dict:
    """Per protocol, method and budget: the seeds in which the method's top-1 beats the baseline's on the same
    seed (ties count half), and the mean difference in points."""
    out: dict = {}
    base = {(r["budget"], r["seed"]): r for r in rows if r["method"] == baseline}
    for protocol, key in PROTOCOLS.items():
        for r in rows:
            other = base.get((r["budget"], r["seed"]))
            if r["method"] == baseline or other is None or key not in r or key not in other:
                continue
            cell = out.setdefault(protocol, {}).setdefault(r["method"], {}).setdefault(
                str(r["budget"]), {"wins": 0.0, "seeds": 0, "gain": 0.0})
            d = r[key] - other[key]
            cell["wins"] += 1.0 if d > 0 else 0.5 if d == 0 else 0.0
            cell["seeds"] += 1
            cell["gain"] += 100 * d
    for cells in out.values():
        for by_budget in cells.values():
            for cell in by_budget.values():
                cell["gain"] = round(cell["gain"] / cell["seeds"], 2)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budgets", default="60,120,300,600")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds run are first-seed .. first-seed + seeds - 1")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--pool-size", type=int, help="a random subset of the 60,000 pool images (default: all)")
    p.add_argument("--test-size", type=int, help="a random subset of the 10,000 test images (default: all)")
    p.add_argument("--holdout", type=int, help="score on N labeled images carved out of the pool instead of the "
                                               "test set: the validation split for choosing hyperparameters")
    p.add_argument("--model", help="embed with this timm backbone instead of the PCA features")
    p.add_argument("--pretrained", default="hub", help="weights for --model: hub or a path")
    p.add_argument("--image-size", type=int, help="input side for --model (default: the model's own)")
    p.add_argument("--pool-variant", help="classes:A,B,... (those classes only) or longtail:R (class sizes falling "
                                          "to 1/R, scored on the balanced split): fashion_mnist.pool_variant")
    p.add_argument("--protocols", default="labels,labelprop", help="labels (the selected labels only) and/or "
                                                                     "labelprop (the labels spread over the pool)")
    p.add_argument("--params", default="{}", help="JSON of parameters by method (and 'calibrate', 'labelprop'), e.g. "
                                                   "'{\"herding\": {\"bandwidth\": 0.5}}'")
    p.add_argument("--workdir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "_work", "quality"))
    p.add_argument("--out", help="write the raw rows and the table as JSON here")
    p.add_argument("--merge", help="print one table of these result JSONs (comma-separated) and write it to --out")
    args = p.parse_args(argv)
    if args.merge:
        parts = [json.load(open(f)) for f in args.merge.split(",")]
        rows = [r for part in parts for r in part["rows"]]
        budgets = sorted({r["budget"] for r in rows})
        methods = list(dict.fromkeys(r["method"] for r in rows))
        return fashion_mnist.write_result({**{k: parts[0].get(k) for k in ("features", "pool_variant", "scored_on",
                                                                            "pool", "test")},
                                           "params": [part["params"] for part in parts], "merged": args.merge,
                                           "rows": rows, "table": table(rows, budgets, methods)}, args.out)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("activeft").setLevel(logging.WARNING)
    budgets = [int(b) for b in args.budgets.split(",")]
    methods = args.methods.split(",")
    if args.model:
        pool, test = embed_with_backbone(args.workdir, args.model, args.pretrained, args.image_size, args.pool_size,
                                         args.test_size)
        if args.holdout:  # the same validation images as the PCA features' split
            pool, test = fashion_mnist.split_holdout(pool, args.holdout, f"{pool.uri}-holdout{args.holdout}")
    else:
        pool, test = fashion_mnist.build_stores(args.workdir, args.pool_size, args.test_size, holdout=args.holdout)
    if args.pool_variant:
        pool, test = fashion_mnist.pool_variant(pool, test, args.pool_variant)
    truth = dict(zip(pool.ids(), pool.read(columns=["label"]).column("label").to_pylist(), strict=True))
    params = json.loads(args.params)
    rows = []
    for budget in budgets:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for method in methods:
                rows.append(run_cell(pool, test, truth, method, budget, seed, args.workdir, params,
                                     args.protocols.split(",")))
                log.info("%s", json.dumps(rows[-1]))
    return fashion_mnist.write_result({
        "features": args.model or "pca64", "pool_variant": args.pool_variant or "all",
        "scored_on": f"validation split of {args.holdout} pool images" if args.holdout else "test set",
        "pool": len(pool), "test": len(test), "params": params, "protocols": args.protocols.split(","), "rows": rows,
        "table": table(rows, budgets, methods), "wins_over_kmeans": wins(rows)},
        args.out)


if __name__ == "__main__":
    main()
