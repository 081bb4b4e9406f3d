"""Multi-round active learning through a proxy (the ASVP loop) on Fashion-MNIST features.

The quality benchmark's setup (pool: the 60,000 training images; PCA-64 features; the pool's
labels as the oracle; a linear probe scored on the 10,000 test images after every round).
Strategies margin, badge, coreset and random run ``rounds`` rounds of ``budget`` labels with
``activeft.loop`` (first round: ActiveFT, the loop's default cold start; ``random`` starts
randomly); they are compared with one-shot ActiveFT of the same total. Compute seconds come
from the loop's own cost account.

    python benchmarks/loop_quality.py                      # 5 rounds of 60, 3 seeds
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fashion_mnist  # noqa: E402

import activeft  # noqa: E402

STRATEGIES = ("margin", "badge", "coreset", "random")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--budget", type=int, default=60)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--pool-size", type=int)
    p.add_argument("--test-size", type=int)
    p.add_argument("--workdir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "_work", "loop"))
    p.add_argument("--out")
    args = p.parse_args(argv)
    strategies = args.strategies.split(",")
    pool, test = fashion_mnist.build_stores(args.workdir, args.pool_size, args.test_size)
    truth = dict(zip(pool.ids(), pool.read(columns=["label"]).column("label").to_pylist(), strict=True))
    rows = []
    for seed in range(args.seeds):
        for strategy in strategies:
            state = os.path.join(args.workdir, "states", f"{strategy}-{seed}")
            shutil.rmtree(state, ignore_errors=True)
            st = activeft.loop(pool, state=state, round_budget=args.budget, rounds=args.rounds, strategy=strategy,
                               first="random" if strategy == "random" else "activeft", oracle="store-labels",
                               eval_store=test.uri, final="none", seed=seed)
            cpu = st["cost"]["cpu_seconds"]
            rows.append({"strategy": strategy, "seed": seed, "accuracy": [r["eval_accuracy"] for r in st["rounds"]],
                         "labels": [r["labels"] for r in st["rounds"]], "select_s": cpu.get("select", 0),
                         "evaluate_s": cpu.get("evaluate", 0)})
            print(json.dumps(rows[-1]), flush=True)
        start = time.perf_counter()
        total = args.budget * args.rounds
        sel = activeft.select(pool, total, method="activeft", seed=seed)
        labels = pa.table({"id": sel.ids, "label": [truth[i] for i in sel.ids]})
        run = os.path.join(args.workdir, "oneshot", f"{seed}")
        metrics = activeft.finetune(pool, train=labels, val_store=test, output=run, mode="linear", overwrite=True)
        rows.append({"strategy": "one-shot activeft", "seed": seed, "accuracy": [metrics["final_val_accuracy"]],
                     "labels": [total], "select_s": round(time.perf_counter() - start, 2)})
        print(json.dumps(rows[-1]), flush=True)
    lines = ["| strategy | " + " | ".join(f"round {r + 1} ({(r + 1) * args.budget})" for r in range(args.rounds))
             + " | selection s (all rounds) |", "|---|" + "---|" * (args.rounds + 1)]
    for name in strategies + ["one-shot activeft"]:
        acc = np.array([r["accuracy"] for r in rows if r["strategy"] == name]) * 100
        cells = [f"{m:.1f} ± {s:.1f}" for m, s in zip(acc.mean(0), acc.std(0), strict=True)]
        if name == "one-shot activeft":
            cells = [""] * (args.rounds - 1) + cells
        secs = np.mean([r["select_s"] for r in rows if r["strategy"] == name])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {secs:.1f} |")
    return fashion_mnist.write_result({"pool": len(pool), "test": len(test), "rows": rows, "table": "\n".join(lines)},
                                      args.out)


if __name__ == "__main__":
    main()
