"""Collectives per pick of the batched coverage greedy (``engine.greedy_cover``) at B = 10,000, on 1 and
2 ranks (threads, ``tests/sharding.py``), MaxHerding's kernel weights and ProbCover's balls, and whether
both rank counts pick the same rows; the rows each rank holds a cover of (its halo: the rows its edges
reach).

    python benchmarks/greedy_exchanges.py 100000 benchmarks/results/greedy-exchanges.json

Each exchange is one all-gather. ``exchanges``: [tag, picks, exchanges, cover rows, rank] (tag: kernel1 =
kernel weights on 1 rank, balls2 = balls on 2 ranks).
"""
import json
import logging
import os
import re
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from sharding import sharded  # noqa: E402

from activeft.engine import coverage_graph, generator, greedy_cover  # noqa: E402

records = []


class Grab(logging.Handler):
    def emit(self, r):
        m = re.search(r"(\w+): (\d+) picks in (\d+) exchanges, a cover of (\d+) rows on rank (\d+)", r.getMessage())
        if m:
            records.append((m.group(1), *(int(g) for g in m.groups()[1:])))



logging.getLogger("activeft.engine.graph").addHandler(Grab())
logging.getLogger("activeft.engine.graph").setLevel(logging.DEBUG)
torch.set_num_threads(2)
rng = np.random.default_rng(0)
n, d, b = int(sys.argv[1]), 32, 10_000
x = rng.normal(size=(1000, d))[rng.integers(0, 1000, n)] + 0.3 * rng.normal(size=(n, d))
x = torch.from_numpy((x / np.linalg.norm(x, axis=1, keepdims=True)).astype("float32"))
out = {}
for world in (1, 2):
    bounds = np.linspace(0, n, world + 1).astype(int).tolist()

    def job(pool, comm, world=world):
        rows, d2, radius = coverage_graph(pool, comm, b, None, 1 << 16, 0, 8)
        w = torch.where(rows >= 0, torch.exp(-d2.double() / radius ** 2), 0.0)
        t = time.time()
        k = greedy_cover(pool, comm, rows, w, b, generator(0), tag=f"kernel{world}")[0]
        ball = (rows >= 0) & (d2 <= radius ** 2)
        k2 = greedy_cover(pool, comm, torch.where(ball, rows, -1), ball.double(), b, generator(0),
                          tag=f"balls{world}")[0]
        return k.tolist(), k2.tolist(), time.time() - t
    res = sharded(job, x, bounds)
    out[world] = res[0][:2]
same = out[1] == out[2]
result = {"n": n, "budget": b, "dim": d, "exchanges": sorted(set(records)), "same_picks_1_vs_2_ranks": same}
print(json.dumps(result))
if len(sys.argv) > 2:
    with open(sys.argv[2], "w") as f:
        json.dump(result, f, indent=1)
