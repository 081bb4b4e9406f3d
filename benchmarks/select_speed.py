"""Selection speed on CPU or CUDA, each number a ratio against a baseline timed in the same process.

Parts (``--only``, comma-separated; default all but ``ray``):

- ``step``: the ActiveFT whole-pool step (``loss_and_grad`` + Adam) in each precision against the
  matmul floor: the one N x D @ D x B product in that precision (row chunks, output discarded).
  Also how many (row, centroid) pairs the step re-scored exactly and how many rows it searched
  again (:mod:`activeft.engine.search`): the price of the precision's error band on this data.
- ``minibatch``: the step on a ``--minibatch`` row sample against the official dense step on the
  same rows (``tests/reference.py``: N x B similarity, autograd, Adam), and the peak memory of both.
- ``lloyd``: one k-means Lloyd iteration (``engine.lloyd``, k = ``--k``) against a plain torch
  Lloyd step (chunked matmul, arg-max, ``index_add_``) in the same precision and, on CPU when
  faiss imports, against one ``faiss.Kmeans`` iteration; same data and initial centroids.
- ``seeding``: k-means|| seeding at k = ``--k``, and k-means++ at k = ``--pp-k`` (one pass per
  seed: its time per seed, times k, is what k-means++ would take at k).
- ``select``: ``activeft.select`` end to end for each of ``--methods`` (ActiveFT: ``--iterations``;
  parameters by method: ``--params``; with the coverage report; one worker, in process, no Ray) on
  a store of ``--select-n`` rows (float16 on CUDA).
- ``ray``: ``activeft.select`` with 2 Ray Train workers against 1 (opt-in; starts a local Ray).
- ``labelprop`` and ``scores``: ``activeft.calibrate(method="labelprop")`` (1% of the ``--select-n``
  rows labeled, 10 classes) and ``activeft.scores`` (uniqueness, density, near-duplicate groups,
  outliers) end to end against their floor, the 10-neighbour graph alone (``engine.knn_graph``), with
  the peak memory of both (opt-in).
- ``profile``: where one whole-pool step and one Lloyd iteration spend their time in each
  precision: the operators with the most self time on the device (``torch.profiler``; opt-in).

Data: unit vectors around 100 centres with isotropic noise (so a row's nearest centroids are
nearly equidistant: a hard case for reduced precision). Times are the best of a few runs.

    python benchmarks/select_speed.py --device cuda --json select.json     # N 1.28M, D 384, B 12,800
    python benchmarks/select_speed.py --device cpu --threads 1 --n 100000 --b 1000 --k 1000 \\
        --minibatch 50000 --select-n 20000 --pp-k 20 --json select-cpu.json
    python benchmarks/select_speed.py --device cpu --only select --n 1000000 --d 128 --b 10000 \\
        --methods probcover,typiclust,herding,bilaf --json select-coverage-cpu.json   # 1% of 1M x 128
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback

import numpy as np
import torch
import torch.nn.functional as F

from activeft.engine import Collectives, FlatIndex, Pool, chunk_rows, default_precision, lloyd, sample_rows
from activeft.engine.kmeans import kmeans_parallel, kmeans_plusplus
from activeft.engine.search import products, resolve_precision
from activeft.select.activeft import loss_and_grad

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from reference import official_loss  # noqa: E402  (the test oracle)

TARGETS = {  # (part, key) -> (device, test on the row, text)
    ("step", "tf32"): ("cuda", lambda r: r["ours_s"] <= 0.060, "<= 60 ms on an H200"),
    ("step", "bf16"): ("cuda", lambda r: r["ours_s"] <= 0.035, "<= 35 ms on an H200"),
    ("step", "fp32"): ("cpu", lambda r: r["ratio"] <= 1.2 if r["N"] >= 100_000 else None, "<= 1.2x floor at N >= 100k"),
    ("minibatch", None): (None, lambda r: r["speedup"] >= 3 if r["M"] >= 100_000 else None,
                          ">= 3x faster than official at M = 100k"),
    ("lloyd", "plain"): ("cuda", lambda r: r["ratio_to_plain"] <= 1.3, "<= 1.3x plain torch step"),
    ("lloyd", "faiss"): ("cpu", lambda r: r["ratio_to_faiss"] <= 1.2, "<= 1.2x faiss.Kmeans"),
    ("seeding", None): ("cuda", lambda r: r["kmeans_parallel_s"] < 5, "< 5 s at k = 12,800"),
    ("select", "activeft"): ("cuda", lambda r: r["wall_s"] < 30, "< 30 s end to end"),
    **{("select", m): ("cpu", lambda r: r["wall_s"] < 600 if r["N"] >= 1_000_000 else None, "< 10 min at N = 1M")
       for m in ("probcover", "typiclust", "herding", "bilaf")},
    ("scores", None): ("cpu", lambda r: r["scores_s"] < 600 if r["N"] >= 1_000_000 else None, "< 10 min at N = 1M"),
}


def data(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Unit vectors around 100 cluster centres (a feature space with structure, like real embeddings)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(100, d, generator=g) * 2
    x = centres[torch.randint(100, (n,), generator=g)] + torch.randn(n, d, generator=g)
    return F.normalize(x, dim=1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, device, repeats: int = 3, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def floor_seconds(x, c, precision, device) -> float:
    """The one N x D @ D x B product in ``precision`` (operands converted beforehand), chunked."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    xp, cp = x.to(dtype), c.to(dtype)
    step = chunk_rows(len(c), 2 if precision == "bf16" else 4, device)

    def run():
        for lo in range(0, len(xp), step):
            products(xp[lo:lo + step], cp, precision)
    return best_time(run, device)


def step_seconds(pool, theta, rows=None, n=None, repeats=3) -> float:
    """Best time of one ActiveFT iteration (loss_and_grad + Adam step)."""
    theta = torch.nn.Parameter(theta.clone())
    opt = torch.optim.Adam([theta], lr=1e-3)
    empty = theta.new_zeros((0, theta.shape[1]))

    def run():
        _, theta.grad = loss_and_grad(pool, Collectives(), theta.detach(), empty, rows, n or pool.size, 0.07, 1.0)
        opt.step()
    return best_time(run, pool.device, repeats)


def official_seconds(x, theta, repeats=3) -> float:
    """Best time of one iteration of the official loop (loss, backward, Adam step) on ``x``."""
    theta = torch.nn.Parameter(theta.clone())
    opt = torch.optim.Adam([theta], lr=1e-3)

    def run():
        loss = official_loss(x, theta, 0.07, 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return best_time(run, x.device, repeats)


def peak_bytes(fn, device) -> int:
    """Peak memory ``fn`` adds: CUDA allocator peak, or VmHWM above the resident set on CPU (after
    handing freed heap back to the OS, or ``fn`` would reuse resident pages and show ~0)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    import ctypes

    def rss(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = rss("VmRSS:")
    fn()
    return rss("VmHWM:") - base


def part_step(a, x, theta):
    rows = []
    for precision in a.precisions:
        pool = Pool(x, 0, len(x), precision)
        floor = floor_seconds(x, F.normalize(theta, dim=1), precision, x.device)
        ours = step_seconds(pool, theta, repeats=a.repeats)
        index = FlatIndex(F.normalize(theta, dim=1), "ip", precision=precision)
        index.search(x, scores=False)
        rows.append({"precision": precision, "N": len(x), "D": x.shape[1], "B": len(theta), "floor_s": floor,
                     "ours_s": ours, "ratio": ours / floor, "rescored_pairs_per_row": index.rescored / len(x),
                     "rows_searched_again": index.deeper / len(x)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def part_minibatch(a, x, theta):
    m = min(a.minibatch, len(x))
    rows = sample_rows(len(x), m, torch.Generator().manual_seed(3)).to(x.device)
    pool = Pool(x, 0, len(x))
    ours = step_seconds(pool, theta, rows, m, a.repeats)
    official = official_seconds(x[rows], theta, a.repeats)
    ours_mem = peak_bytes(lambda: step_seconds(pool, theta, rows, m, 1), x.device)
    official_mem = peak_bytes(lambda: official_seconds(x[rows], theta, 1), x.device)
    row = {"M": m, "B": len(theta), "precision": resolve_precision(None, x.device), "ours_s": ours,
           "official_s": official, "speedup": official / ours, "ours_peak_mb": ours_mem / 2**20,
           "official_peak_mb": official_mem / 2**20, "memory_ratio": official_mem / max(ours_mem, 1)}
    print(json.dumps(row), flush=True)
    return row


def plain_lloyd_step(x, c, precision):
    """The 8-line torch Lloyd step: nearest centroid by one matmul and arg-max, sums by index_add_."""
    half_norm = (c * c).sum(1) / -2
    sums, counts = torch.zeros_like(c), torch.zeros(len(c), device=c.device)
    step = chunk_rows(len(c), 4, x.device)
    for lo in range(0, len(x), step):
        a = products(x[lo:lo + step], c, precision, half_norm).argmax(1)
        sums.index_add_(0, a, x[lo:lo + step])
        counts += torch.bincount(a, minlength=len(c))
    return sums / counts.clamp(min=1)[:, None]


def part_lloyd(a, x):
    k, iterations = a.k, a.lloyd_iterations
    init = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(2))[:k]].clone()
    rows = []
    for precision in dict.fromkeys([resolve_precision(None, x.device), "fp32"]):
        pool = Pool(x, 0, len(x), precision)
        ours = best_time(lambda p=pool: lloyd(p, Collectives(), init, iterations, 0.0, torch.Generator()), x.device,
                         repeats=2) / iterations
        plain = best_time(lambda p=precision: plain_lloyd_step(x, init, p), x.device, repeats=2 * iterations)
        row = {"precision": precision, "N": len(x), "k": k, "ours_s_per_iter": ours, "plain_s_per_iter": plain,
               "ratio_to_plain": ours / plain}
        if x.device.type == "cpu" and precision == "fp32":
            try:
                import faiss
            except ImportError:
                row["faiss"] = "not installed"
            else:
                def train():
                    km = faiss.Kmeans(x.shape[1], k, niter=iterations, max_points_per_centroid=10**7, seed=1)
                    km.train(x.numpy(), init_centroids=init.numpy().copy())
                row["faiss_s_per_iter"] = best_time(train, x.device, repeats=2, warmup=0) / iterations
                row["ratio_to_faiss"] = ours / row["faiss_s_per_iter"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def part_profile(a, x, theta):
    """The 12 operators with the most self time (device time on CUDA) in one ActiveFT whole-pool
    step (loss and gradient) and one Lloyd iteration (k = ``--k``), per precision."""
    from torch.profiler import ProfilerActivity, profile

    cuda = x.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    init, empty = x[:a.k].clone(), theta.new_zeros((0, theta.shape[1]))

    def own(e):  # self time of one operator, in microseconds
        return e.self_device_time_total if cuda else e.self_cpu_time_total

    out = {}
    for precision in a.precisions:
        pool = Pool(x, 0, len(x), precision)
        runs = {"step": lambda p=pool: loss_and_grad(p, Collectives(), theta, empty, None, len(x), 0.07, 1.0),
                "lloyd": lambda p=pool: lloyd(p, Collectives(), init, 1, 0.0, torch.Generator())}
        for name, run in runs.items():
            run()  # warm-up
            with profile(activities=activities) as prof:
                run()
                sync(x.device)
            top = sorted(prof.key_averages(), key=own, reverse=True)[:12]
            out[f"{name} {precision}"] = [{"op": e.key, "calls": e.count, "ms": own(e) / 1000} for e in top]
            print(json.dumps({f"{name} {precision}": out[f"{name} {precision}"][:5]}), flush=True)
    return out


def part_seeding(a, x):
    pool = Pool(x, 0, len(x))
    parallel = best_time(lambda: kmeans_parallel(pool, Collectives(), a.k, torch.Generator().manual_seed(0)),
                         x.device, repeats=1, warmup=0)
    pp = best_time(lambda: kmeans_plusplus(pool, Collectives(), a.pp_k, torch.Generator().manual_seed(0)),
                   x.device, repeats=1, warmup=0)
    row = {"N": len(x), "k": a.k, "precision": resolve_precision(None, x.device), "kmeans_parallel_s": parallel,
           "kmeans_plusplus_k": a.pp_k, "kmeans_plusplus_s": pp,
           "kmeans_plusplus_estimate_at_k_s": pp / a.pp_k * a.k, "speedup_vs_estimate": pp / a.pp_k * a.k / parallel}
    print(json.dumps(row), flush=True)
    return row


def part_select(a, device):
    """``activeft.select`` end to end for each of ``--methods``, on one store."""
    import activeft

    n, b = a.select_n, max(1, a.b * a.select_n // a.n)
    dtype = "float16" if device.type == "cuda" else "float32"
    rows = []
    with tempfile.TemporaryDirectory(dir=a.workdir) as d:
        np.save(f"{d}/x.npy", data(n, a.d, seed=5).numpy())
        with open(f"{d}/ids.txt", "w") as f:
            f.write("\n".join(f"r{i}" for i in range(n)))
        store = activeft.import_embeddings(f"{d}/x.npy", f"{d}/store", ids=f"{d}/ids.txt", dtype=dtype)
        for method in a.methods.split(","):
            params = {"iterations": a.iterations} if method == "activeft" else {}
            params.update(json.loads(a.params).get(method, {}))
            t = time.perf_counter()
            sel = activeft.select(store, b, method=method, use_gpu=device.type == "cuda", **params)
            wall = time.perf_counter() - t
            rows.append({"method": method, "N": n, "D": a.d, "B": b, "store_dtype": dtype, **params, "wall_s": wall,
                         "select_s": sel.info["seconds_select"], "coverage": sel.info["coverage"],
                         "coverage_random": sel.info["coverage_random"],
                         **{k: v for k, v in sel.info.items() if k.startswith("seconds_") and k != "seconds_select"}})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def part_scale(a, device):
    """How the default selector's cost grows with the pool: 1% (or ``--scale-b``) of each of ``--scale-n``
    rows, flat (``partitions="off"``, up to ``--flat-up-to`` rows) and hierarchical (cells of
    ``--cell-rows``; with ``--scale-b`` also ``auto``: a cell a pick at under 30 picks a cell), seconds,
    peak memory and coverage."""
    import activeft
    from activeft.select import cells

    rows = []
    for n in (int(v) for v in a.scale_n.split(",")):
        with tempfile.TemporaryDirectory(dir=a.workdir) as d:
            np.save(f"{d}/x.npy", data(n, a.d, seed=5).numpy())
            with open(f"{d}/ids.txt", "w") as f:
                f.write("\n".join(f"r{i}" for i in range(n)))
            store = activeft.import_embeddings(f"{d}/x.npy", f"{d}/store", ids=f"{d}/ids.txt")
            parts = max(2, math.ceil(n / (a.cell_rows or cells.CELL_ROWS)))
            budget = a.scale_b or n // 100
            for partitions in (["off"] if n <= a.flat_up_to else []) + [parts] + (["auto"] if a.scale_b else []):
                out = {}

                def go(store=store, budget=budget, partitions=partitions, out=out):
                    t = time.perf_counter()
                    out["sel"] = activeft.select(store, budget, method=a.methods.split(",")[0],
                                                 partitions=partitions, use_gpu=device.type == "cuda")
                    out["wall_s"] = time.perf_counter() - t

                peak = peak_bytes(go, device)
                info = out["sel"].info
                rows.append({"method": info["config"]["method"], "N": n, "D": a.d, "B": budget,
                             "partitions": partitions, "cells": info["config"].get("partitions", 0),
                             "wall_s": round(out["wall_s"], 1),
                             "peak_gb": round(peak / 1e9, 2), "coverage": info["coverage"],
                             "coverage_random": info["coverage_random"],
                             "seconds_partition": info.get("partitions", {}).get("seconds_partition")})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def part_floor(a, device, stage: str):
    """``stage`` (labelprop or scores) end to end against the neighbour graph it stands on, seconds and peak
    memory of both."""
    import pyarrow as pa

    import activeft
    from activeft.engine.graph import knn_graph

    n = a.select_n
    x = data(n, a.d, seed=5)
    labeled = torch.randperm(n, generator=torch.Generator().manual_seed(2))[:max(10, n // 100)]
    classes = (x[labeled] @ torch.randn(a.d, 10, generator=torch.Generator().manual_seed(3))).argmax(1)
    row = {"N": n, "D": a.d, **({"labeled": len(labeled)} if stage == "labelprop" else {})}
    with tempfile.TemporaryDirectory(dir=a.workdir) as d:
        np.save(f"{d}/x.npy", x.numpy())
        with open(f"{d}/ids.txt", "w") as f:
            f.write("\n".join(f"r{i}" for i in range(n)))
        store = activeft.import_embeddings(f"{d}/x.npy", f"{d}/store", ids=f"{d}/ids.txt")
        labels = pa.table({"id": [f"r{i}" for i in labeled.tolist()], "label": classes.tolist()})
        gpu = device.type == "cuda"
        run = {"labelprop": lambda: row.update(pseudo=activeft.calibrate(store, labels=labels, method="labelprop",
                                                                          use_gpu=gpu).num_rows),
               "scores": lambda: row.update(outliers=sum(activeft.scores(store, use_gpu=gpu).column("outlier")
                                                         .to_pylist()))}[stage]

        def timed(key, fn):
            t = time.perf_counter()
            row[f"{key}_peak_bytes"] = peak_bytes(fn, device)
            row[f"{key}_s"] = time.perf_counter() - t

        timed("graph", lambda: knn_graph(Pool(x.to(device), 0, n), Collectives(), 10))
        timed(stage, run)
    row["ratio"] = row[f"{stage}_s"] / row["graph_s"]
    print(json.dumps(row), flush=True)
    return row


def part_ray(a, device):
    import ray

    import activeft

    n, b = a.select_n, max(1, a.b * a.select_n // a.n)
    with tempfile.TemporaryDirectory(dir=a.workdir) as d:
        np.save(f"{d}/x.npy", data(n, a.d, seed=5).numpy())
        with open(f"{d}/ids.txt", "w") as f:
            f.write("\n".join(f"r{i}" for i in range(n)))
        store = activeft.import_embeddings(f"{d}/x.npy", f"{d}/store", ids=f"{d}/ids.txt")
        ray.init(logging_level="ERROR")
        row, ids = {"N": n, "B": b, "iterations": a.iterations}, None
        for w in (1, 2):
            t = time.perf_counter()
            sel = activeft.select(store, b, method="activeft", num_workers=w, iterations=a.iterations,
                                  use_gpu=device.type == "cuda")
            row[f"wall_s_{w}_workers"] = time.perf_counter() - t
            ids = ids or sel.ids
            row["same_selection"] = ids == sel.ids
    print(json.dumps(row), flush=True)
    return row


def table(result: dict) -> str:
    """One line per measurement: what, seconds, baseline, ratio, target (met / missed)."""
    device = result["device"]
    lines = [f"{'part':<10} {'what':<44} {'seconds':>9} {'baseline':>9} {'ratio':>7}  target"]

    def line(part, key, what, s, base, ratio, row):
        dev, test, text = TARGETS.get((part, key), (None, None, ""))
        verdict = ""
        if test is not None and dev in (None, device):
            ok = test(row)
            verdict = "" if ok is None else f"{text}: {'met' if ok else 'MISSED'}"
        lines.append(f"{part:<10} {what:<44} {s:>9.4f} {base:>9.4f} {ratio:>7.2f}  {verdict}")

    for r in result.get("step", []):
        line("step", r["precision"], f"{r['precision']} step / matmul floor (N {r['N']:,})", r["ours_s"], r["floor_s"],
             r["ratio"], r)
    if "minibatch" in result:
        r = result["minibatch"]
        line("minibatch", None, f"official step / ours (M {r['M']:,}); speed-up", r["official_s"], r["ours_s"],
             r["speedup"], r)
    for r in result.get("lloyd", []):
        line("lloyd", "plain", f"{r['precision']} Lloyd / plain torch step (k {r['k']:,})", r["ours_s_per_iter"],
             r["plain_s_per_iter"], r["ratio_to_plain"], r)
        if "ratio_to_faiss" in r:
            line("lloyd", "faiss", "fp32 Lloyd / faiss.Kmeans iteration", r["ours_s_per_iter"], r["faiss_s_per_iter"],
                 r["ratio_to_faiss"], r)
    if "seeding" in result:
        r = result["seeding"]
        line("seeding", None, f"k-means|| (k {r['k']:,}) / k-means++ estimate", r["kmeans_parallel_s"],
             r["kmeans_plusplus_estimate_at_k_s"], 1 / r["speedup_vs_estimate"], r)
    for r in result.get("select", []):
        what = f"{r['iterations']} it." if r["method"] == "activeft" else f"B {r['B']:,}"
        line("select", r["method"], f"{r['method']} end to end ({what}, N {r['N']:,}) / fit", r["wall_s"],
             r["select_s"], r["wall_s"] / r["select_s"], r)
    for stage in ("labelprop", "scores"):
        if stage in result:
            r = result[stage]
            line(stage, None, f"{stage} end to end (N {r['N']:,}) / 10-nn graph", r[f"{stage}_s"], r["graph_s"],
                 r["ratio"], r)
    for part, error in result.get("errors", {}).items():
        lines.append(f"{part:<10} FAILED: {error.splitlines()[-1]}")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--only", default="step,minibatch,lloyd,seeding,select")
    p.add_argument("--n", type=int, default=1_280_000, help="pool rows")
    p.add_argument("--d", type=int, default=384)
    p.add_argument("--b", type=int, default=12_800, help="budget = ActiveFT centroids")
    p.add_argument("--k", type=int, help="k-means clusters (default: --b)")
    p.add_argument("--minibatch", type=int, default=100_000)
    p.add_argument("--lloyd-iterations", type=int, default=3)
    p.add_argument("--pp-k", type=int, default=500, help="k-means++ seeds timed for the per-seed rate")
    p.add_argument("--select-n", type=int, help="rows of the end-to-end store (default: --n)")
    p.add_argument("--iterations", type=int, default=300, help="ActiveFT iterations end to end")
    p.add_argument("--methods", default="activeft", help="selectors timed end to end (comma-separated)")
    p.add_argument("--params", default="{}", help="JSON of parameters by method, e.g. "
                                                   '\'{"bilaf": {"core": "kmeans"}}\'')
    p.add_argument("--precisions", help="comma-separated (default: fp32,tf32,bf16 on CUDA, fp32,bf16 on CPU)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", default=None, help="where the end-to-end store is written (default: tmp)")
    p.add_argument("--threads", type=int, help="torch and faiss threads (default: torch's)")
    p.add_argument("--scale-n", default="250000,500000,1000000,2000000,4000000", help="pool rows of --only scale")
    p.add_argument("--flat-up-to", type=int, default=1_000_000, help="--only scale: flat selection up to these rows")
    p.add_argument("--cell-rows", type=int, help="--only scale: rows per cell (default: the product's CELL_ROWS)")
    p.add_argument("--scale-b", type=int, help="--only scale: this budget, not 1%%, and partitions auto too")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args()
    device = torch.device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
        try:
            import faiss

            faiss.omp_set_num_threads(a.threads)
        except ImportError:
            pass
    a.k, a.select_n = a.k or a.b, a.select_n or a.n
    a.precisions = (a.precisions.split(",") if a.precisions else
                    ["fp32", "tf32", "bf16"] if device.type == "cuda" else ["fp32", "bf16"])
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores"
                         + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
              "device": device.type, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "default_precision": default_precision(device), "command": " ".join(sys.argv), "errors": {}}
    print(json.dumps({k: result[k] for k in ("machine", "device", "torch", "threads", "default_precision")}),
          flush=True)
    parts = a.only.split(",")
    x = theta = None
    if {"step", "minibatch", "lloyd", "seeding", "profile"} & set(parts):
        x = data(a.n, a.d).to(device)
        theta = x[torch.randperm(a.n, generator=torch.Generator().manual_seed(1))[:a.b].to(device)].clone()
    runs = {"step": lambda: part_step(a, x, theta), "minibatch": lambda: part_minibatch(a, x, theta),
            "lloyd": lambda: part_lloyd(a, x), "seeding": lambda: part_seeding(a, x),
            "select": lambda: part_select(a, device), "ray": lambda: part_ray(a, device),
            "labelprop": lambda: part_floor(a, device, "labelprop"), "scores": lambda: part_floor(a, device, "scores"),
            "scale": lambda: part_scale(a, device),
            "profile": lambda: part_profile(a, x, theta)}
    for part in parts:
        t = time.perf_counter()
        try:
            result[part] = runs[part]()
        except Exception:  # noqa: BLE001  (one failed part must not lose the others' numbers)
            result["errors"][part] = traceback.format_exc()
            print(result["errors"][part], file=sys.stderr, flush=True)
        result.setdefault("part_seconds", {})[part] = time.perf_counter() - t
        if a.json:
            with open(a.json, "w") as f:
                json.dump(result, f, indent=1)
    print(table(result), flush=True)


if __name__ == "__main__":
    main()
