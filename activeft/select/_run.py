"""Running a pool algorithm on one process or on a Ray Train worker group.

One worker: the whole pool in this process, trivial collectives, checkpoints in
``<output>/_work/<tag>/state.pt``. W workers: a ``TorchTrainer`` (gloo on CPU, nccl on GPU)
whose workers each load a contiguous slice of the store's rows and run the *same* function
with ``torch.distributed`` collectives; the state is checkpointed through ``ray.train.report``
every ``checkpoint_every`` steps, a failed worker group restarts from the latest checkpoint
(``FailureConfig``), and re-running with the same output resumes (Ray Train V2: same
``RunConfig(name, storage_path)``).

The work itself is a picklable ``job(pool, comm, checkpoints) -> dict`` whose result is
JSON-able (lists, numbers, strings) and the same on every rank.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import time
import uuid

import torch

from .. import storage
from ..errors import ActiveftError, StoreError
from ..store import EmbeddingStore
from ._engine import Checkpoints, Collectives, LocalCheckpoints, Pool, TorchCollectives

log = logging.getLogger(__name__)


def load_pool(store: EmbeddingStore, rank: int, world: int, device, transform=None) -> Pool:
    lo, hi = store.worker_range(rank, world)
    x = torch.from_numpy(store.embeddings(lo, hi))
    if transform is not None:
        x = transform(x)
    return Pool(x.to(device), lo, len(store))


def run(job, store: EmbeddingStore, *, num_workers: int = 1, use_gpu: bool = False, work: str | None = None,
        resume: bool = False, checkpoint_every: int = 0, transform=None, fail_at: int | None = None) -> dict:
    """Run ``job`` over ``store`` on ``num_workers`` workers; return its result (from rank 0)."""
    if num_workers > len(store):
        raise StoreError(f"{num_workers} workers for a pool of {len(store)} rows: use at most {len(store)}")
    if work is not None and not resume:
        storage.delete(work)
    if num_workers == 1:
        device = torch.device("cuda" if use_gpu else "cpu")
        if use_gpu and not torch.cuda.is_available():
            raise ActiveftError("--use-gpu given but this process sees no CUDA device")
        pool = load_pool(store, 0, 1, device, transform)
        checkpoints = LocalCheckpoints(work, checkpoint_every, fail_at) if work else Checkpoints()
        return job(pool, Collectives(), checkpoints)
    return _run_trainer(job, store, num_workers, use_gpu, work, checkpoint_every, transform, fail_at)


class TrainCheckpoints(Checkpoints):
    """State saved through ``ray.train.report`` (rank 0 writes, every rank reports)."""

    def __init__(self, every: int, rank: int, world_size: int, fail_at: int | None):
        import ray.train

        self.every, self.rank, self.world_size, self.fail_at = every, rank, world_size, fail_at
        self.checkpoint = ray.train.get_checkpoint()
        self.restored = self.checkpoint is not None

    def load(self):
        if self.checkpoint is None:
            return None
        with self.checkpoint.as_directory() as d:
            path = os.path.join(d, "state.pt")
            return torch.load(path, weights_only=True) if os.path.exists(path) else None

    def save(self, state, metrics):
        buf = io.BytesIO()
        torch.save(state, buf)
        _report(metrics, {"state.pt": buf.getvalue()} if self.rank == 0 else None)
        self._after_save(next(iter(metrics.values())))


def _report(metrics: dict, files: dict | None) -> None:
    import ray.train

    if files is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        for name, data in files.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def worker_loop(config: dict) -> None:
    """The Ray Train loop: load this worker's rows, run the job, report the result from rank 0."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    comm = TorchCollectives()
    checkpoints = TrainCheckpoints(config["checkpoint_every"], rank, world, config["fail_at"])
    done = _restored_result(checkpoints.checkpoint)
    if done is not None:  # the run already finished: hand its result back
        _report({"done": 1}, {"result.json": done} if rank == 0 else None)
        return
    try:
        pool, error = load_pool(EmbeddingStore(config["store"]), rank, world, ray.train.torch.get_device(),
                                config["transform"]), None
    except ActiveftError as e:  # a user error: every rank stops, the driver raises it (no retries)
        pool, error = None, f"{type(e).__name__}: {e}"
    errors = [e for e in comm.all_gather_object(error) if e]
    if errors:
        result = {"error": errors[0]}
    else:
        result = config["job"](pool, comm, checkpoints)
    _report({"done": 1}, {"result.json": json.dumps(result).encode()} if rank == 0 else None)


def _restored_result(checkpoint):
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        path = os.path.join(d, "result.json")
        if not os.path.exists(path):
            return None
        with open(path, "rb") as f:
            return f.read()


def _run_trainer(job, store, num_workers, use_gpu, work, checkpoint_every, transform, fail_at) -> dict:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from .. import _ray

    _ray.init()
    temp = None
    if work is None:  # beside the store: every worker reads it, so it is shared storage on a cluster
        work = temp = storage.join(store.uri, "_work", "runs", uuid.uuid4().hex)
    storage_path, name = storage.absolute(work).rsplit("/", 1)
    config = {"store": store.uri, "job": job, "checkpoint_every": checkpoint_every, "transform": transform,
              "fail_at": fail_at}
    trainer = TorchTrainer(
        worker_loop, train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(name=name, storage_path=storage_path, failure_config=FailureConfig(max_failures=3),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)))
    start = time.perf_counter()
    try:
        result = trainer.fit()
        log.info("ray train: %d workers finished in %.1f s", num_workers, time.perf_counter() - start)
        with result.checkpoint.as_directory() as d, open(os.path.join(d, "result.json")) as f:
            out = json.load(f)
    finally:
        if temp:
            storage.delete(temp)
    if "error" in out:
        kind, _, message = out["error"].partition(": ")
        from .. import errors

        raise getattr(errors, kind, ActiveftError)(message)
    return out
