"""The one runner: a job in this process, or on a Ray Train worker group, with checkpoints.

:func:`run` runs a pool job ``job(pool, comm, checkpoints) -> dict`` (picklable, JSON-able
result, the same on every rank) over an embedding store. One worker: the whole pool in this
process, trivial collectives, checkpoints in ``<work>/state.pt``. W workers: a ``TorchTrainer``
(gloo on CPU, nccl on GPU) whose workers each load a contiguous slice of the store's rows and run
the *same* job with ``torch.distributed`` collectives.

:func:`train_group` is the Ray Train side that :func:`run` and the finetune stage share: one
``RunConfig`` (name and storage path, so a rerun with the same output resumes: Ray Train V2),
one ``FailureConfig`` (a failed worker group restarts from the latest checkpoint), and the
worker-side :func:`report` and :func:`inject_failure` test hook (as faiss's ``crash_at``).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import pickle
import tempfile
import time
import uuid

import torch

from ..engine import Collectives, Pool, TorchCollectives, on_gauge
from ..errors import ActiveftError, StoreError
from ..io import storage
from ..io.store import EmbeddingStore
from . import console, metrics

log = logging.getLogger(__name__)
WORKER_WAIT = "ACTIVEFT_WORKER_WAIT_S"  # the seconds a run may wait, in all, for its Ray Train workers
DEFAULT_WORKER_WAIT_S = 600.0  # long enough for an autoscaler to add a GPU node
ATTEMPT_S = 60.0  # Ray Train's start-up timeout per attempt (its default); attempts repeat within the wait
on_gauge(metrics.set)  # the engine's gauges (k-means inertia) reach the Ray dashboard from every process that runs it


def inject_failure(fail_at: int | None, step: int, restored: bool, rank: int) -> None:
    """Test hook: rank 0 raises once ``step`` reaches ``fail_at``, unless the run was itself restored
    from a checkpoint.

    Rank 0, because its report carries the checkpoint: Ray Train queues it only after the upload,
    when the other ranks' reports of that step are queued too, so the controller registers the
    checkpoint before it sees the failure. A rank that failed right after a report without the
    checkpoint could lose it (Ray Train drops a step that not every rank reported), and the run
    would resume one checkpoint earlier.
    """
    if fail_at is not None and not restored and step >= fail_at and rank == 0:
        raise RuntimeError(f"injected failure of worker {rank} after step {step} (test hook)")


class Checkpoints:
    """Where a job saves and restores its state; this base keeps nothing.

    ``save`` is called by every rank at the same step (Ray Train's ``report`` is a barrier);
    the state must be identical on all ranks (replicated centroids, optimiser, RNG).
    """

    every: int = 0
    fail_at: int | None = None
    restored: bool = False
    rank: int = 0

    def load(self) -> dict | None:
        return None

    def save(self, state: dict, metrics: dict) -> None:
        pass

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def _after_save(self, metrics: dict) -> None:
        inject_failure(self.fail_at, next(iter(metrics.values())), self.restored, self.rank)


class LocalCheckpoints(Checkpoints):
    """One process: the state as ``state.pt`` under a URI (``torch.load(weights_only=True)`` to read)."""

    def __init__(self, uri: str, every: int, fail_at: int | None = None):
        self.uri, self.every, self.fail_at = storage.join(uri, "state.pt"), every, fail_at
        self.restored = storage.exists(self.uri)

    def load(self):
        if not storage.exists(self.uri):
            return None
        return torch.load(io.BytesIO(storage.read_bytes(self.uri)), weights_only=True)

    def save(self, state, metrics):
        storage.write_bytes(self.uri, _serialise(state))
        self._after_save(metrics)


class TrainCheckpoints(Checkpoints):
    """State saved through ``ray.train.report`` (rank 0 writes, every rank reports)."""

    def __init__(self, every: int, rank: int, fail_at: int | None):
        import ray.train

        self.every, self.rank, self.fail_at = every, rank, fail_at
        self.checkpoint = ray.train.get_checkpoint()
        self.restored = self.checkpoint is not None

    def load(self):
        data = read_checkpoint(self.checkpoint, "state.pt")
        return None if data is None else torch.load(io.BytesIO(data), weights_only=True)

    def save(self, state, metrics):
        report(metrics, {"state.pt": _serialise(state)} if self.rank == 0 else None)
        self._after_save(metrics)


def _serialise(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def report(metrics: dict, files: dict[str, bytes] | None = None) -> None:
    """``ray.train.report`` from a worker; ``files`` (rank 0's) become the checkpoint."""
    import ray.train

    if files is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        for name, data in files.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def read_checkpoint(checkpoint, name: str) -> bytes | None:
    """The bytes of file ``name`` of a Ray Train checkpoint (None when absent)."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        path = os.path.join(d, name)
        if not os.path.exists(path):
            return None
        with open(path, "rb") as f:
            return f.read()


def train_group(loop, config: dict, *, num_workers: int, use_gpu: bool, work: str, max_failures: int = 3,
                datasets: dict | None = None, resources_per_worker: dict | None = None, checkpoint_config=None):
    """Run ``loop(config)`` on a Ray Train worker group; its checkpoints and run state live in ``work``.

    Returns Ray Train's ``Result``. A rerun with the same ``work`` resumes from the latest
    checkpoint (same ``RunConfig`` name and storage path). Starting and restarting the worker group
    may wait for resources :data:`WORKER_WAIT` seconds in all (Ray Train alone retries forever);
    then the run fails in one line that says what it waited for.
    """
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
    from ray.train.v2.api.exceptions import ControllerError

    from . import cluster

    cluster.init()
    wait = worker_wait_s()
    attempt = min(wait, ATTEMPT_S)
    os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = f"{attempt:g}"  # Ray Train hands it to its controller
    storage_path, name = storage.absolute(work).rsplit("/", 1)
    trainer = TorchTrainer(
        loop, train_loop_config=config, datasets=datasets,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                     resources_per_worker=resources_per_worker),
        run_config=RunConfig(name=name, storage_path=storage_path,
                             failure_config=FailureConfig(max_failures=max_failures,
                                                          controller_failure_limit=math.ceil(wait / attempt) - 1),
                             logging_config=LoggingConfig(log_level=console.ray_train_log_level()),
                             checkpoint_config=checkpoint_config or CheckpointConfig(num_to_keep=2)))
    start = time.perf_counter()
    try:
        result = trainer.fit()
    except ControllerError as e:
        if not isinstance(e.controller_failure, WorkerGroupStartupTimeoutError):
            raise
        each = ", ".join(f"{v:g} {k}" for k, v in trainer.scaling_config._resources_per_worker_not_none.items())
        raise ActiveftError(f"waited {wait:g} s for {num_workers} Ray Train workers ({each} each) and the cluster "
                            f"did not provide them: free or add capacity, ask for fewer workers, or wait longer "
                            f"({WORKER_WAIT})") from None
    except Exception as e:  # Ray Train's own checkpoint writes to an unreachable store: one line
        outage = storage.unavailable(work, e)
        if outage is None:
            raise
        raise outage from e
    log.info("ray train: %d workers finished in %.1f s", num_workers, time.perf_counter() - start)
    return result


def worker_wait_s() -> float:
    """:data:`WORKER_WAIT` from the environment (default :data:`DEFAULT_WORKER_WAIT_S`)."""
    value = os.environ.get(WORKER_WAIT, "").strip()
    try:
        wait = float(value) if value else DEFAULT_WORKER_WAIT_S
    except ValueError:
        wait = -1
    if not (math.isfinite(wait) and wait > 0):
        raise ActiveftError(f"{WORKER_WAIT}={value!r}: expected a positive number of seconds")
    return wait


def load_pool(store, rank: int, world: int, device, transform=None, precision: str | None = None) -> Pool:
    """Worker ``rank``'s rows of ``store`` on ``device``: float32, except that a float16 store stays
    float16 on a GPU (twice the rows per device) unless ``transform`` (applied in float32) is given."""
    lo, hi = store.worker_range(rank, world)
    half = torch.device(device).type == "cuda" and transform is None and store.dtype == "float16"
    x = torch.from_numpy(store.embeddings(lo, hi, dtype="float16" if half else "float32"))
    if transform is not None:
        x = transform(x)
    return Pool(x.to(device), lo, len(store), precision)


def run(job, store, *, num_workers: int = 1, use_gpu: bool = False, work: str | None = None,
        resume: bool = False, checkpoint_every: int = 0, transform=None, fail_at: int | None = None,
        precision: str | None = None) -> dict:
    """Run ``job`` over ``store`` (an :class:`~activeft.io.store.EmbeddingStore`) on ``num_workers``
    workers; return its result (from rank 0, as JSON: the same for one worker and many, so a job
    returning arrays fails with one too). ``precision`` is the pools' (:class:`Pool`)."""
    if num_workers > len(store):
        raise StoreError(f"{num_workers} workers for a pool of {len(store)} rows: use at most {len(store)}")
    if work is not None and not resume:
        storage.delete(work)
    if num_workers == 1:
        device = torch.device("cuda" if use_gpu else "cpu")
        if use_gpu and not torch.cuda.is_available():
            raise ActiveftError("--use-gpu given but this process sees no CUDA device")
        pool = load_pool(store, 0, 1, device, transform, precision)
        checkpoints = LocalCheckpoints(work, checkpoint_every, fail_at) if work else Checkpoints()
        return json.loads(json.dumps(job(pool, Collectives(), checkpoints)))  # as it comes back from workers
    temp = None
    if work is None:  # beside the store: every worker reads it, so it is shared storage on a cluster
        work = temp = storage.join(store.uri, "_work", "runs", uuid.uuid4().hex)
    config = {"store": store.uri, "job": job, "checkpoint_every": checkpoint_every, "transform": transform,
              "fail_at": fail_at, "precision": precision}
    try:
        result = train_group(worker_loop, config, num_workers=num_workers, use_gpu=use_gpu, work=work)
        error = read_checkpoint(result.checkpoint, "error.pkl")
        if error is not None:
            raise pickle.loads(error)
        return json.loads(read_checkpoint(result.checkpoint, "result.json"))
    finally:
        if temp:
            storage.delete(temp)


def worker_loop(config: dict) -> None:
    """The Ray Train loop of :func:`run`: load this worker's rows, run the job, report the result
    (or the user error, which the driver raises: no retries) from rank 0."""
    import ray.train
    import ray.train.torch

    console.quiet_libraries()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    comm = TorchCollectives()
    checkpoints = TrainCheckpoints(config["checkpoint_every"], rank, config["fail_at"])
    done = read_checkpoint(checkpoints.checkpoint, "result.json")
    if done is not None:  # the run already finished: hand its result back
        report({"done": 1}, {"result.json": done} if rank == 0 else None)
        return
    try:
        pool, error = load_pool(EmbeddingStore(config["store"]), rank, world, ray.train.torch.get_device(),
                                config["transform"], config["precision"]), None
    except ActiveftError as e:
        pool, error = None, e
    errors = [e for e in comm.all_gather_object(error) if e is not None]
    if errors:
        report({"done": 1}, {"error.pkl": pickle.dumps(errors[0])} if rank == 0 else None)
        return
    result = config["job"](pool, comm, checkpoints)
    report({"done": 1}, {"result.json": json.dumps(result).encode()} if rank == 0 else None)
