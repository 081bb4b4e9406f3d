"""Embed throughput: the Ray Data pipeline vs a plain single-process PyTorch loop.

Both read the same JPEG files, decode and preprocess them with the same timm transform
(:class:`activeft.backbone.Preprocess`), run the same model at the same batch size, and
L2-normalise. The baseline is a ``torch.utils.data.DataLoader`` with ``--loader-workers``
decode workers feeding the model in the main process (all cores as torch threads); the Ray
side is ``activeft.embed`` end to end (planning, Parquet shards, manifest), timed after
``ray.init``. Reported as a ratio measured in the same process, plus images/s per CPU core.

    python benchmarks/embed_throughput.py --images 2000 --model resnet18 --image-size 160
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import time

import numpy as np


def make_images(folder: str, n: int, size: int = 256) -> None:
    """Photo-like JPEGs (smooth colour fields plus texture noise), written once."""
    from PIL import Image

    if os.path.isdir(folder) and len(os.listdir(folder)) >= n:
        return
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:size, :size] / size
    for i in range(n):
        a, b, c = rng.uniform(0.5, 4, 3)
        base = np.stack([np.sin(a * x + i), np.cos(b * y - i), np.sin(c * (x + y))], -1) * 90 + 128
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(f"{folder}/img{i:05d}.jpg", quality=90)


class _Files:
    def __init__(self, paths, config):
        from activeft.backbone import Preprocess

        self.paths, self.pre = paths, Preprocess(config)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with open(self.paths[i], "rb") as f, Image.open(io.BytesIO(f.read())) as img:
            img.load()
            return self.pre(img)


def plain_loop(folder, spec, batch_size, workers) -> tuple[float, dict]:
    """Images/s of the single-process loop, and the split of its time (decode wait vs model)."""
    import torch
    import torch.nn.functional as F

    from activeft.backbone import Preprocess, pooled_features

    model, _ = spec.build()
    config = spec.data_config(model)
    pre = Preprocess(config)
    paths = sorted(os.path.join(folder, p) for p in os.listdir(folder))
    loader = torch.utils.data.DataLoader(_Files(paths, config), batch_size=batch_size, num_workers=workers)
    torch.set_num_threads(os.cpu_count())
    wait = compute = 0.0
    start = t = time.perf_counter()
    for x in loader:
        t1 = time.perf_counter()
        with torch.inference_mode():
            F.normalize(pooled_features(model, pre.normalize(x)), dim=1).numpy()
        t2 = time.perf_counter()
        wait, compute, t = wait + t1 - t, compute + t2 - t1, t2
    seconds = time.perf_counter() - start
    return len(paths) / seconds, {"decode_wait_s": round(wait, 1), "model_s": round(compute, 1)}


def ray_pipeline(folder, out, spec, batch_size, num_actors, partition_size) -> float:
    import activeft

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    store = activeft.embed(folder, out, model=spec.model, pretrained=spec.pretrained, image_size=spec.image_size,
                           batch_size=batch_size, num_actors=num_actors, partition_size=partition_size)
    return len(store) / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--loader-workers", type=int, default=os.cpu_count())
    p.add_argument("--num-actors", default=None, help="Ray side: N or MIN,MAX (default: the product default)")
    p.add_argument("--partition-size", type=int, default=500)
    p.add_argument("--workdir", default=os.path.join(os.path.dirname(__file__), "_work", "embed"))
    args = p.parse_args()

    import ray

    from activeft.backbone import BackboneSpec

    spec = BackboneSpec(args.model, "none", args.image_size)
    folder = os.path.join(args.workdir, f"jpeg{args.images}")
    make_images(folder, args.images)
    ray.init(logging_level="ERROR")
    ray_pipeline(folder, os.path.join(args.workdir, "warmup"), spec, args.batch_size, args.num_actors,
                 args.partition_size)  # worker start-up and imports, not counted below
    loop_ips, split = plain_loop(folder, spec, args.batch_size, args.loader_workers)
    ray_ips = ray_pipeline(folder, os.path.join(args.workdir, "store"), spec, args.batch_size, args.num_actors,
                           args.partition_size)
    cores = os.cpu_count()
    result = {
        "machine": f"{platform.machine()}, {cores} cores, {platform.processor() or platform.system()}",
        "model": args.model, "image_size": args.image_size, "images": args.images, "batch_size": args.batch_size,
        "loader_workers": args.loader_workers, "num_actors": args.num_actors,
        "plain_loop_images_per_s": round(loop_ips, 1), "plain_loop_time_split": split,
        "ray_images_per_s": round(ray_ips, 1), "ray_images_per_s_per_core": round(ray_ips / cores, 1),
        "ratio_ray_over_loop": round(ray_ips / loop_ips, 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
