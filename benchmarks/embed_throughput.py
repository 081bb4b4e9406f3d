"""Embed throughput: ``activeft.embed`` vs a plain PyTorch DataLoader loop, on CPU or one CUDA GPU.

Two settings, each run by both pipelines on the same synthetic photo-like 256x256 JPEGs (written
here, no downloads; random-init models, ``pretrained="none"``: speed does not depend on weights):

- ``decode``: a tiny model (timm ``test_resnet`` at 64 px): the rate is the decode rate.
- ``model``: a real backbone (CUDA: ``vit_large_patch16_224``, as an H200 runs ``vit_small``
  faster than 16 cores decode; CPU: ``resnet18`` at 128 px).

Baseline: ``DataLoader(num_workers=<CPUs>)`` decoding with the same code
(:func:`activeft.models.images.to_rgb`, :class:`activeft.models.backbone.Preprocess`), the model in the main
process (CPU: all cores as torch threads; CUDA: pinned memory, non-blocking copies and the same
autocast dtype as activeft).
activeft: ``embed`` end to end (plan, Ray Data, shards, manifest) on a manifest of the first N
images, with the default partition size. Each pipeline runs at two sizes N1 < N2; the marginal
rate (N2 - N1) / (t2 - t1), the median over the repeats, cancels start-up (workers, model
build). ``actor_only``: the same two sizes of ready uint8 images fed by Ray Data through one
activeft ``Embedder`` actor (no reading or decoding): where activeft trails the loop, it says
whether the model stage or the decoding holds it back. The JSON also records the memory Ray sized
its object store from, the store, and its usage and spilling after each setting. On CUDA, GPU
utilisation is sampled every 0.1 s (``nvidia-smi``) during the N2 runs. Ratios are measured in one
process.

    python benchmarks/embed_throughput.py --json embed.json

Defaults: CPU: 1,500 / 4,500 and 150 / 600 images, batch 64, 3 repeats (4-5 minutes on 2
cores; ``--repeats 1`` for a 2-minute smoke run); CUDA: 10,000 / 40,000 and 10,000 / 25,000
images, batch 256, 1 repeat (about 3 minutes on one H200 with 16 cores). On 16 cores activeft
decodes blocks of 256 rows from 8,192 images on (smaller blocks below, to keep every core
busy), so an N1 of at least that keeps pipeline fill and drain equal at both sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np


def _write_jpegs(args) -> None:
    from PIL import Image

    folder, lo, hi, size = args
    y, x = np.mgrid[:size, :size] / size
    for i in range(lo, hi):
        rng = np.random.default_rng(i)
        a, b, c = rng.uniform(0.5, 4, 3)
        base = np.stack([np.sin(a * x + i), np.cos(b * y - i), np.sin(c * (x + y))], -1) * 90 + 128
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(f"{folder}/img{i:06d}.jpg", quality=90)


def make_images(folder: str, n: int, workers: int, size: int = 256) -> list[str]:
    """Photo-like JPEGs (smooth colour fields plus texture noise), written once; their paths."""
    os.makedirs(folder, exist_ok=True)
    have = len(os.listdir(folder))
    if have < n:
        step = -(-(n - have) // workers)
        with ProcessPoolExecutor(workers) as ex:
            list(ex.map(_write_jpegs, [(folder, lo, min(lo + step, n), size) for lo in range(have, n, step)]))
    return [os.path.join(folder, f"img{i:06d}.jpg") for i in range(n)]


class _Files:
    def __init__(self, paths, config):
        from activeft.models.backbone import Preprocess

        self.paths, self.pre = paths, Preprocess(config)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        from activeft.models.images import to_rgb

        with Image.open(self.paths[i]) as img:
            img.load()
            return self.pre(to_rgb(img))


class GpuSampler:
    """GPU utilisation (%) every 0.1 s from ``nvidia-smi``, in a thread."""

    def __init__(self, enabled: bool):
        self.samples, self.proc = [], None
        if enabled and shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                          "-lms", "100", "-i", "0"], stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            if line.strip().isdigit():
                self.samples.append((time.perf_counter(), int(line)))

    def window(self, t0: float, t1: float) -> dict | None:
        """Mean utilisation over [t0, t1], and over its active part (first to last non-zero sample)."""
        s = [u for t, u in self.samples if t0 <= t <= t1]
        if not s:
            return None
        busy = [i for i, u in enumerate(s) if u]
        active = s[busy[0]:busy[-1] + 1] if busy else [0]
        return {"mean": round(float(np.mean(s)), 1), "active_mean": round(float(np.mean(active)), 1),
                "samples": len(s)}

    def close(self):
        if self.proc is not None:
            self.proc.terminate()


def plain_loop(paths, model, config, batch_size, workers, device) -> tuple[float, dict, np.ndarray]:
    """Seconds for the DataLoader loop over ``paths``, where the time went, and the embeddings."""
    import torch
    import torch.nn.functional as F

    from activeft.models.backbone import Preprocess, pooled_features

    pre = Preprocess(config)
    cuda = device.type == "cuda"
    amp = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else None
    wait = compute = 0.0
    out = []
    start = t = time.perf_counter()
    loader = torch.utils.data.DataLoader(_Files(paths, config), batch_size=batch_size, num_workers=workers,
                                         pin_memory=cuda)
    for x in loader:
        t1 = time.perf_counter()
        with torch.inference_mode(), torch.autocast(device.type, amp, enabled=cuda):
            feats = pooled_features(model, pre.normalize(x.to(device, non_blocking=True)))
            out.append(F.normalize(feats.float(), dim=1).cpu().numpy())
        t2 = time.perf_counter()
        wait, compute, t = wait + t1 - t, compute + t2 - t1, t2
    seconds = time.perf_counter() - start
    return seconds, {"decode_wait_s": round(wait, 2), "model_s": round(compute, 2)}, np.concatenate(out)


def ray_embed(paths, workdir, spec, batch_size):
    """Seconds for ``activeft.embed`` of ``paths`` (a CSV manifest) into a fresh store, and the store."""
    import activeft

    manifest = os.path.join(workdir, f"manifest{len(paths)}.csv")
    with open(manifest, "w") as f:
        f.write("uri\n" + "".join(p + "\n" for p in paths))
    out = os.path.join(workdir, "store")
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    store = activeft.embed(manifest, out, model=spec.model, pretrained="none", image_size=spec.image_size,
                           batch_size=batch_size)
    seconds = time.perf_counter() - start
    if len(store) != len(paths):
        raise RuntimeError(f"activeft embedded {len(store)} of {len(paths)} images")
    return seconds, store


def actor_only(spec, config, dim, n, batch_size, cuda) -> float:
    """Seconds for Ray Data to feed ``n`` ready uint8 images (blocks of ``batch_size``) through one
    activeft ``Embedder`` actor: the model stage alone, no reading or decoding."""
    import pyarrow as pa
    import ray
    from ray.data.extensions import ArrowTensorArray

    from activeft.embed.pipeline import Embedder

    _, h, w = config["input_size"]
    pattern = np.arange(3 * h * w, dtype=np.uint8).reshape(1, 3, h, w)

    def ready(batch: pa.Table) -> pa.Table:
        images = np.broadcast_to(pattern, (batch.num_rows, 3, h, w)).copy()
        return pa.table({"image": ArrowTensorArray.from_numpy(images), "error": pa.array([""] * batch.num_rows)})

    ds = ray.data.range(n, override_num_blocks=-(-n // batch_size)).map_batches(ready, batch_format="pyarrow",
                                                                                 batch_size=None)
    ds = ds.map_batches(Embedder, batch_format="pyarrow", batch_size=batch_size,
                        fn_constructor_kwargs={"spec": spec, "config": config, "dim": dim, "dtype": "float32",
                                               "threads": None if cuda else os.cpu_count()},
                        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0, num_gpus=1 if cuda else None)
    start = time.perf_counter()
    rows = ds.materialize().count()
    if rows != n:
        raise RuntimeError(f"the actor returned {rows} of {n} rows")
    return time.perf_counter() - start


def run_setting(model_name, size, sizes, paths, workdir, batch_size, workers, device, sampler, repeats,
                warm_up) -> dict:
    """Both pipelines at both sizes, ``repeats`` times, interleaved so that a busy spell of the
    machine hits both; the marginal rate is the median over the repeats."""
    import torch

    from activeft.models.backbone import BackboneSpec

    spec = BackboneSpec(model_name, "none", size)
    model, _ = spec.build()
    config = spec.data_config(model)
    model.to(device)
    if device.type == "cpu":
        torch.set_num_threads(os.cpu_count())
    if warm_up:  # Ray's workers started, the files in the page cache
        ray_embed(paths[: 2 * batch_size], workdir, spec, batch_size)
    runs = {"plain_loop": {n: [] for n in sizes}, "activeft": {n: [] for n in sizes}}
    cosine = None
    for _ in range(repeats):
        for n in sizes:
            t0 = time.perf_counter()
            seconds, split, ref = plain_loop(paths[:n], model, config, batch_size, workers, device)
            runs["plain_loop"][n].append(round(seconds, 2))
            t1 = time.perf_counter()
            ray_seconds, store = ray_embed(paths[:n], workdir, spec, batch_size)
            t2 = time.perf_counter()
            runs["activeft"][n].append(round(ray_seconds, 2))
            if cosine is None:  # the same images must get the same embeddings (up to autocast rounding)
                row = {p: i for i, p in enumerate(paths)}
                order = [row[u] for u in store.read(columns=["uri"]).column("uri").to_pylist()]
                cosine = float((store.embeddings() * ref[order]).sum(1).min())
    n1, n2 = sizes
    rate = {k: round(float(np.median([(n2 - n1) / (b - a) for a, b in zip(v[n1], v[n2], strict=True)])), 1)
            for k, v in runs.items()}
    alone = {n: actor_only(spec, config, int(model.num_features), n, batch_size, device.type == "cuda")
             for n in sizes}
    rate["actor_only"] = round((n2 - n1) / (alone[n2] - alone[n1]), 1)
    ratio = round(rate["activeft"] / rate["plain_loop"], 2)
    result = {"model": model_name, "image_size": size, "sizes": list(sizes), "seconds": runs,
              "marginal_images_per_s": rate, "ratio_activeft_over_loop": ratio,
              "min_cosine_activeft_vs_loop": round(cosine, 5), f"plain_loop_time_split_at_{n2}": split}
    if device.type == "cuda":  # of the last runs at N2
        result[f"gpu_utilisation_at_{n2}"] = {"plain_loop": sampler.window(t0, t1),
                                             "activeft": sampler.window(t1, t2)}
        result[f"plain_loop_model_share_at_{n2}"] = round(split["model_s"] / seconds, 2)
    return result


def memory() -> dict:
    """What sizes Ray's object store: the memory total and free at start, /dev/shm, the store Ray made."""
    import ray

    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":")
            if key in ("MemTotal", "MemAvailable"):
                info[f"{key}_gib"] = round(int(value.split()[0]) / 2**20, 1)
    shm = shutil.disk_usage("/dev/shm") if os.path.isdir("/dev/shm") else None
    store = ray.cluster_resources().get("object_store_memory", 0)
    info["dev_shm_free_gib"] = round(shm.free / 2**30, 1) if shm else None
    info["object_store_gib"] = round(store / 2**30, 2)
    info["object_store_in_dev_shm"] = bool(shm and shm.free >= store)  # Ray's rule; else a file under /tmp
    return info


def object_store_stats() -> list[str]:
    """Ray's object store summary (usage, spilled and restored bytes) after a setting's runs."""
    from ray._private.internal_api import memory_summary

    return [line.strip() for line in memory_summary(stats_only=True).splitlines()
            if any(w in line for w in ("Plasma", "Spilled", "Restored", "fallback"))]


def _pair(text: str) -> tuple[int, int]:
    n1, n2 = (int(v) for v in text.split(","))
    if not 0 < n1 < n2:
        raise argparse.ArgumentTypeError(f"expected N1,N2 with 0 < N1 < N2, got {text!r}")
    return n1, n2


def main():
    import torch

    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--settings", default="decode,model", help="comma list of: decode, model (default: both)")
    p.add_argument("--decode-model", default="test_resnet")
    p.add_argument("--decode-size", type=int, default=64)
    p.add_argument("--decode-images", type=_pair, default=(10000, 40000) if cuda else (1500, 4500),
                   help="N1,N2 (default 10000,40000 on CUDA, else 1500,4500)")
    p.add_argument("--model", default="vit_large_patch16_224" if cuda else "resnet18",
                   help="model-bound setting's backbone (default: vit_large_patch16_224 on CUDA, else resnet18)")
    p.add_argument("--model-size", type=int, default=224 if cuda else 128)
    p.add_argument("--model-images", type=_pair, default=(10000, 25000) if cuda else (150, 600),
                   help="N1,N2 (default 10000,25000 on CUDA, else 150,600)")
    p.add_argument("--batch-size", type=int, default=256 if cuda else 64)
    p.add_argument("--repeats", type=int, default=1 if cuda else 3,
                   help="runs per pipeline and size (default 1 on CUDA, else 3); the median rate counts")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="DataLoader workers (default: CPUs)")
    p.add_argument("--workdir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "_work", "embed"))
    p.add_argument("--object-store-gb", type=float,
                   help="Ray's object store size (default: Ray's own, 30%% of the memory free at start)")
    p.add_argument("--json", help="write the result here too")
    args = p.parse_args()

    import ray
    import timm

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    settings = {"decode": (args.decode_model, args.decode_size, args.decode_images),
                "model": (args.model, args.model_size, args.model_images)}
    chosen = args.settings.split(",")
    paths = make_images(os.path.join(args.workdir, "jpeg256"),
                        max(settings[s][2][1] for s in chosen), os.cpu_count())
    device = torch.device("cuda" if cuda else "cpu")
    store = None if args.object_store_gb is None else int(args.object_store_gb * 2**30)
    ray.init(include_dashboard=False, logging_level="ERROR", object_store_memory=store)
    sampler = GpuSampler(cuda)
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "gpu": torch.cuda.get_device_name(0) if cuda else None, "python": platform.python_version(),
                          "torch": torch.__version__, "timm": timm.__version__, "ray": ray.__version__},
              "batch_size": args.batch_size, "loader_workers": args.workers, "repeats": args.repeats,
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "memory": memory(), "settings": {}}
    try:
        for s in chosen:
            model_name, size, sizes = settings[s]
            result["settings"][s] = run_setting(model_name, size, sizes, paths, args.workdir, args.batch_size,
                                                args.workers, device, sampler, args.repeats, s == chosen[0])
            result["settings"][s]["object_store_after"] = object_store_stats()
            print(json.dumps({s: result["settings"][s]}), flush=True)
    finally:
        sampler.close()
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
