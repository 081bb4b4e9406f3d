"""Selection speed and memory, as ratios against baselines measured in the same process.

1. ActiveFT seconds per iteration (``loss_and_grad`` + Adam step) against the floor: the time of
   the one N x D @ D x B matmul each step needs (computed in row chunks, output discarded),
   for N from 10k to 1M, D = 384, B = 1% of N. Times are the best of a few iterations (this VM's
   timings move by ~15% from run to run).
2. Against a faithful port of the official loop (``tests/reference.py``: dense N x B
   similarity, full autograd), same data and initial centroids: speed-up and peak-memory ratio
   (peak RSS above the data, from /proc/self/status VmHWM after resetting it).
3. k-means seconds per iteration against ``faiss.Kmeans`` on the same data and initial centroids.
4. Wall time of ``activeft.select`` with 2 Ray Train workers against 1 in-process worker.

    python benchmarks/select_speed.py            # all four
    python benchmarks/select_speed.py --only 2   # one part
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from activeft.engine import Collectives, Pool, chunk_rows
from activeft.select.activeft import loss_and_grad

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from reference import official_loss  # noqa: E402  (the test oracle)


def data(n: int, d: int = 384, seed: int = 0) -> torch.Tensor:
    """Unit vectors around 100 cluster centres (a feature space with structure, like real embeddings)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(100, d, generator=g) * 2
    x = centres[torch.randint(100, (n,), generator=g)] + torch.randn(n, d, generator=g)
    return F.normalize(x, dim=1)


def floor_seconds(x, c, repeats=2) -> float:
    step = chunk_rows(len(c))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for lo in range(0, len(x), step):
            x[lo:lo + step] @ c.T
        best = min(best, time.perf_counter() - t)
    return best


def ours_seconds(x, theta, iterations=3) -> float:
    """Best time of one iteration (loss_and_grad + Adam step) over ``iterations``, after a warm-up."""
    theta = torch.nn.Parameter(theta.clone())
    opt = torch.optim.Adam([theta], lr=1e-3)
    pool, empty = Pool(x, 0, len(x)), x[:0]
    loss_and_grad(pool, Collectives(), theta.detach(), empty, None, len(x), 0.07, 1.0)  # warm-up
    best = float("inf")
    for _ in range(iterations):
        t = time.perf_counter()
        _, theta.grad = loss_and_grad(pool, Collectives(), theta.detach(), empty, None, len(x), 0.07, 1.0)
        opt.step()
        best = min(best, time.perf_counter() - t)
    return best


def official_seconds(x, theta, iterations=3, anomaly=False) -> float:
    """Best time of one iteration of the official loop (loss, backward, Adam step)."""
    theta = torch.nn.Parameter(theta.clone())
    opt = torch.optim.Adam([theta], lr=1e-3)
    best = float("inf")
    with torch.autograd.set_detect_anomaly(anomaly):
        for _ in range(iterations):
            t = time.perf_counter()
            loss = official_loss(x, theta, 0.07, 1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            best = min(best, time.perf_counter() - t)
    return best


def _rss(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))


def peak_bytes(fn) -> int:
    """Peak resident memory that ``fn`` adds above the current resident set (after handing freed heap
    memory back to the OS, or ``fn`` would reuse pages an earlier run left resident and show ~0)."""
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = _rss("VmRSS:")
    fn()
    return _rss("VmHWM:") - base


def part1(sizes):
    rows = []
    for n in sizes:
        x = data(n)
        b = max(1, n // 100)
        theta = x[torch.randperm(n, generator=torch.Generator().manual_seed(1))[:b]].clone()
        floor = floor_seconds(x, F.normalize(theta, dim=1))
        ours = ours_seconds(x, theta, iterations=3 if n <= 200_000 else 2)
        rows.append({"N": n, "B": b, "floor_s": round(floor, 3), "ours_s_per_iter": round(ours, 3),
                     "ratio_to_floor": round(ours / floor, 2)})
        print(json.dumps(rows[-1]), flush=True)
        del x
    return rows


def part2(n=200_000, b=2_000):
    x = data(n)
    theta = x[torch.randperm(n, generator=torch.Generator().manual_seed(1))[:b]].clone()
    ours_s = ours_seconds(x, theta)
    off_s = official_seconds(x, theta)
    off_anomaly_s = official_seconds(x, theta, iterations=2, anomaly=True)
    ours_mem = peak_bytes(lambda: ours_seconds(x, theta, iterations=2))
    off_mem = peak_bytes(lambda: official_seconds(x, theta, iterations=2))
    row = {"N": n, "B": b, "ours_s_per_iter": round(ours_s, 3), "official_s_per_iter": round(off_s, 3),
           "official_with_anomaly_detection_s_per_iter": round(off_anomaly_s, 3),
           "speedup": round(off_s / ours_s, 2), "speedup_vs_script_with_anomaly": round(off_anomaly_s / ours_s, 2),
           "ours_peak_mb": round(ours_mem / 2**20), "official_peak_mb": round(off_mem / 2**20),
           "memory_ratio": round(off_mem / max(ours_mem, 1), 1)}
    print(json.dumps(row), flush=True)
    return row


def part3(n=200_000, k=1_000, iterations=10):
    import faiss

    from activeft.engine import lloyd

    x = data(n)
    init = x[torch.randperm(n, generator=torch.Generator().manual_seed(2))[:k]].clone()
    km = faiss.Kmeans(x.shape[1], k, niter=iterations, max_points_per_centroid=10**7, seed=1)
    t = time.perf_counter()
    km.train(x.numpy(), init_centroids=init.numpy().copy())
    faiss_s = (time.perf_counter() - t) / iterations
    t = time.perf_counter()
    _, history = lloyd(Pool(x, 0, n), Collectives(), init, iterations, 0.0, torch.Generator())
    ours_s = (time.perf_counter() - t) / len(history)
    row = {"N": n, "k": k, "faiss_s_per_iter": round(faiss_s, 3), "ours_s_per_iter": round(ours_s, 3),
           "ratio": round(ours_s / faiss_s, 2), "faiss_final_obj": float(km.obj[-1]), "ours_final_inertia": history[-1]}
    print(json.dumps(row), flush=True)
    return row


def part4(n=100_000, b=1_000, workdir="benchmarks/_work/select"):
    import shutil

    import ray

    import activeft

    x = data(n, d=128).numpy()
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    np.save(f"{workdir}/x.npy", x)
    with open(f"{workdir}/ids.txt", "w") as f:
        f.write("\n".join(f"r{i}" for i in range(n)))
    store = activeft.import_embeddings(f"{workdir}/x.npy", f"{workdir}/store", ids=f"{workdir}/ids.txt",
                                       partition_size=10_000)
    ray.init(logging_level="ERROR")
    row = {"N": n, "D": 128, "B": b, "iterations": 50}
    for w in (1, 2):
        t = time.perf_counter()
        sel = activeft.select(store, b, num_workers=w, iterations=50, seed=0)
        row[f"wall_s_{w}_workers"] = round(time.perf_counter() - t, 1)
        row[f"select_s_{w}_workers"] = sel.info["seconds_select"]
        row.setdefault("ids", sel.ids)
        row["same_selection"] = row["ids"] == sel.ids
    del row["ids"]
    print(json.dumps(row), flush=True)
    return row


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", type=int, choices=[1, 2, 3, 4])
    p.add_argument("--sizes", default="10000,100000,1000000")
    args = p.parse_args()
    print(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
                      "threads": torch.get_num_threads()}))
    parts = {1: lambda: part1([int(s) for s in args.sizes.split(",")]), 2: part2, 3: part3, 4: part4}
    for i, fn in parts.items():
        if args.only in (None, i):
            fn()


if __name__ == "__main__":
    main()
