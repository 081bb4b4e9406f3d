"""Sharded runs in one process: one thread per rank, collectives met at a barrier."""

import threading

import torch

from activeft.engine import Collectives, Pool


class ThreadCollectives(Collectives):
    """Rank ``rank`` of ``world`` threads: each collective meets the others at a barrier; sums in rank order."""

    def __init__(self, rank, world, shared):
        self.rank, self.world_size, self.shared = rank, world, shared

    def _exchange(self, obj):
        slots, barrier = self.shared["slots"], self.shared["barrier"]
        slots[self.rank] = obj
        barrier.wait()
        out = list(slots)
        barrier.wait()
        return out

    def all_reduce(self, t):
        parts = self._exchange(t.clone())
        t.copy_(sum(parts[1:], parts[0]))
        return t

    def all_gather(self, t):
        return torch.stack(self._exchange(t.clone()))

    def all_gather_object(self, obj):
        return self._exchange(obj)


def sharded(fn, x, bounds, precision=None):
    """Run ``fn(pool, comm)`` on one thread per shard ``[bounds[i], bounds[i + 1])``; every rank's result."""
    world = len(bounds) - 1
    shared = {"slots": [None] * world, "barrier": threading.Barrier(world, timeout=60)}
    out, errors = [None] * world, []

    def rank(r):
        try:
            pool = Pool(x[bounds[r]:bounds[r + 1]], bounds[r], len(x), precision)
            out[r] = fn(pool, ThreadCollectives(r, world, shared))
        except BaseException as e:  # noqa: BLE001  (re-raised in the test)
            errors.append(e)
            shared["barrier"].abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out
