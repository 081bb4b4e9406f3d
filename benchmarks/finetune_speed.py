"""Full-mode finetuning speed: seconds per epoch and images/s with 1 and 2 Ray Train workers.

The same small JPEG set as ``embed_throughput.py`` (photo-like 256x256), embedded once, then
``activeft.finetune(mode="full")`` for a few epochs per worker count. Epoch times come from the
trainer's own per-epoch record (training only; validation is off); the first epoch is reported
apart, since it includes worker and dataset start-up. On a GPU machine, ``--use-gpu`` measures one
GPU with bf16 autocast.

    python benchmarks/finetune_speed.py --images 512 --model resnet18 --image-size 128
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil

import numpy as np
import pyarrow as pa


def main():
    from embed_throughput import make_images

    import activeft

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", default="1,2")
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--workdir", default=os.path.join(os.path.dirname(__file__), "_work", "finetune"))
    args = p.parse_args()

    import ray

    folder = os.path.join(args.workdir, f"jpeg{args.images}")
    make_images(folder, args.images)
    ray.init(logging_level="ERROR")
    store = activeft.embed(folder, os.path.join(args.workdir, f"store-{args.model}-{args.image_size}"),
                           model=args.model, pretrained="none", image_size=args.image_size, resume=True)
    ids = store.ids()
    train = pa.table({"id": ids, "label": [f"c{i % 4}" for i in range(len(ids))]})
    rows = []
    for w in [int(x) for x in args.workers.split(",")]:
        out = os.path.join(args.workdir, f"run-{w}")
        shutil.rmtree(out, ignore_errors=True)
        info = activeft.finetune(store, train=train, output=out, mode="full", epochs=args.epochs,
                                 batch_size=args.batch_size, num_workers=w, use_gpu=args.use_gpu, lr=0.01)
        secs = [h["seconds"] for h in info["history"]]
        steady = float(np.mean(secs[1:])) if len(secs) > 1 else secs[0]
        rows.append({"workers": w, "first_epoch_s": secs[0], "epoch_s": round(steady, 2),
                     "images_per_s": round(len(ids) / steady, 1)})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores", "model": args.model,
                      "image_size": args.image_size, "images": len(ids), "batch_size": args.batch_size,
                      "epochs": args.epochs, "gpu": args.use_gpu}))


if __name__ == "__main__":
    main()
