"""The loop's cost account: ASVP's total cost, labeling plus compute (Wen, Pizarro, Williams, TMLR 2024).

Each record (a round, the final model) keeps its own CPU and GPU seconds per stage; :func:`settle`
sums them and prices them in dollars.
"""

from __future__ import annotations

import time


class Account:
    """CPU or GPU seconds per stage, into ``cost`` (a record's): wall time x the workers the stage
    reserves, an estimate (the proxy training inside the selection runs on the driver but is
    counted at the round's rate)."""

    def __init__(self, cost: dict | None = None):
        self.cost = {} if cost is None else cost

    def add(self, stage: str, seconds: float, workers: int, gpu: bool) -> None:
        per = self.cost.setdefault("gpu_seconds" if gpu else "cpu_seconds", {})
        per[stage] = round(per.get(stage, 0.0) + seconds * workers, 2)

    def time(self, stage: str, workers: int, gpu: bool, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``, its wall time added to ``stage``."""
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.add(stage, time.perf_counter() - start, workers, gpu)
        return out


def settle(costs: list[dict], labels: int, prices: dict) -> dict:
    """The account of ``labels`` labels and the records' ``costs`` at ``prices`` (``label``,
    ``gpu_hour``, ``cpu_hour``): seconds per stage summed, and dollars."""
    total = Account()
    for cost in costs:
        for key, per in cost.items():
            for stage, seconds in per.items():
                total.add(stage, seconds, 1, key == "gpu_seconds")
    hours = {kind: sum(total.cost.get(f"{kind}_seconds", {}).values()) / 3600 for kind in ("gpu", "cpu")}
    dollars = {"labeling": round(labels * prices["label"], 2), "gpu": round(hours["gpu"] * prices["gpu_hour"], 4),
               "cpu": round(hours["cpu"] * prices["cpu_hour"], 4)}
    return {"labels": labels, **total.cost, "dollars": {**dollars, "total": round(sum(dollars.values()), 4)},
            "prices": prices}
