"""The embed stage's Ray Data pipeline: plan files (:class:`PlanSource`) -> read bytes + decode +
timm eval preprocessing on CPU tasks (:func:`decode_batch`) -> a ``map_batches`` actor pool running
the timm backbone (:class:`Embedder`: ``num_gpus`` per actor on GPU clusters, fp16/bf16 autocast;
CPU actors otherwise) -> L2-normalised pooled features -> :class:`ShardSink`, one ``part-N.parquet``
per input partition. Imported only by runs that embed: ``import activeft`` does not load Ray Data.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data import Datasink, Datasource, ReadTask
from ray.data.block import BlockMetadata
from ray.data.extensions import ArrowTensorArray

from ..errors import ParameterError, StoreError
from ..io import storage
from ..io.store import embedding_array, shard_name
from ..models.backbone import BackboneSpec, Preprocess, pooled_features
from ..models.images import read_images
from ..runtime import cluster
from . import shards


def run(output: str, todo: dict[int, int], columns: list[str], spec: BackboneSpec, config: dict, dim: int, dtype: str,
        batch_size: int, pool: tuple[int, int] | None, gpus_per_actor: float | None) -> None:
    """Embed the planned partitions ``todo`` (``{partition: rows}``) of the store ``output`` into their shards."""
    gpus, cpus = cluster.cluster_gpus(), float(ray.cluster_resources().get("CPU", 1))
    if gpus and gpus_per_actor is None:
        gpus_per_actor = 1.0
    if gpus_per_actor and not gpus:
        raise ParameterError(f"--gpus-per-actor {gpus_per_actor} given but the Ray cluster has no GPUs")
    if pool is None:
        n = int(gpus // gpus_per_actor) if gpus_per_actor else int(cpus) // 4
        pool = (max(n, 1), max(n, 1))
    # Decoding is the usual bottleneck, so it gets every CPU of the cluster: 1-CPU tasks on
    # blocks of about 256 rows (whole batches), fewer when that leaves under two blocks per CPU,
    # whatever the partition size (a streaming repartition splits the plan files). Nothing else
    # reserves a CPU on one node: a GPU actor only copies batches, writes are light, and CPU actors
    # run cluster CPUs / actors torch threads beside the decode tasks, as a DataLoader's main process
    # runs beside its workers; their OpenMP threads sleep rather than spin at barriers, or they
    # would take the cores decoding needs. On several nodes a CPU actor reserves one CPU, so that Ray
    # spreads the actors by free CPUs: without, Ray's SPREAD put both of two on the head in 2 of 5
    # runs on 3 nodes (tests/multinode.py), with threads for the whole cluster. A CPU always stays
    # free for decoding, or no image would reach the actors.
    nodes = sum(node["Alive"] for node in ray.nodes())
    reserve = 0 if gpus_per_actor or nodes < 2 or pool[1] >= cpus else 1
    rows = min(batch_size * max(1, 256 // batch_size), math.ceil(sum(todo.values()) / (2 * cpus)))
    threads = None if gpus_per_actor else max(1, int(cpus) // pool[1])
    ds = ray.data.read_datasource(PlanSource(output, todo), concurrency=1).repartition(target_num_rows_per_block=rows)
    ds = ds.map_batches(decode_batch, batch_format="pyarrow", batch_size=None, fn_kwargs={"config": config},
                        num_cpus=1)
    ds = ds.map_batches(Embedder, batch_format="pyarrow", batch_size=batch_size,
                        fn_constructor_kwargs={"spec": spec, "config": config, "dim": dim, "dtype": dtype,
                                               "threads": threads},
                        compute=ray.data.ActorPoolStrategy(min_size=pool[0], max_size=pool[1],
                                                           initial_size=pool[1] if gpus_per_actor else pool[0]),
                        num_cpus=reserve, num_gpus=gpus_per_actor or None,
                        runtime_env=None if gpus_per_actor else {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}})
    # one write at a time: two writes of one partition could race on its staging directory
    ds.write_datasink(ShardSink(output, todo, columns), ray_remote_args={"num_cpus": 0}, concurrency=1)


def decode_batch(batch: pa.Table, config: dict) -> pa.Table:
    """Read, decode and preprocess each row's image into an ``image`` tensor column
    ``(n, 3, H, W)`` uint8 (Ray Data's tensor extension, built from one ndarray); failures
    become an ``error`` string."""
    images, errors = read_images(batch.column("uri").to_pylist(), config)
    return batch.append_column("image", ArrowTensorArray.from_numpy(images)).append_column(
        "error", pa.array(errors, pa.string()))


def take_rows(column: pa.ChunkedArray, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The tensors of a tensor ``column`` at the sorted ``rows``, copied once into ``out`` (a new
    array when None) chunk by chunk: a batch of several blocks is never combined first."""
    chunks = [c.to_numpy() for c in column.chunks if len(c)]  # zero-copy views
    if out is None:
        out = np.empty((len(rows), *chunks[0].shape[1:]), chunks[0].dtype)
    starts = np.cumsum([0] + [len(c) for c in chunks])
    bounds = np.searchsorted(rows, starts)
    for chunk, start, lo, hi in zip(chunks, starts[:-1], bounds[:-1], bounds[1:], strict=True):
        np.take(chunk, rows[lo:hi] - start, axis=0, out=out[lo:hi], mode="clip")  # "clip": no temporary
    return out


class Embedder:
    """A Ray Data actor holding one backbone; uint8 images in, L2-normalised float32 features out.

    On CUDA each batch is copied once into a pinned buffer and sent with a non-blocking copy;
    the model runs under bf16 (or fp16) autocast. Ray Data fetches the next batches while one runs.
    """

    def __init__(self, spec: BackboneSpec, config: dict, dim: int, dtype: str, threads: int | None = None):
        import torch

        self.model, _ = spec.build()
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.amp = None
        if self.device.type == "cuda":
            self.amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif threads:
            torch.set_num_threads(min(threads, os.cpu_count() or threads))
        self.model.to(self.device)
        self.pre = Preprocess(config)
        self.dim, self.dtype = dim, dtype
        self.pinned = None

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch
        import torch.nn.functional as F

        ok = np.flatnonzero(pc.equal(batch.column("error"), "").to_numpy(zero_copy_only=False))
        out = np.zeros((batch.num_rows, self.dim), np.float32)
        if len(ok):
            images = batch.column("image")
            if self.device.type == "cuda":
                if self.pinned is None or len(self.pinned) < len(ok):
                    self.pinned = torch.empty((len(ok), *images.type.shape), dtype=torch.uint8).pin_memory()
                x = self.pinned[:len(ok)]
                take_rows(images, ok, x.numpy())  # the previous batch's copy is done (its results were read)
                x = x.to(self.device, non_blocking=True)
            else:
                x = torch.from_numpy(take_rows(images, ok))
            with torch.inference_mode(), torch.autocast(self.device.type, self.amp, enabled=self.amp is not None):
                feats = pooled_features(self.model, self.pre.normalize(x))
            out[ok] = F.normalize(feats.float(), dim=1).cpu().numpy()
        batch = batch.drop_columns(["image"])
        return batch.append_column("embedding", embedding_array(out, self.dtype))


class PlanSource(Datasource):
    """The plan files of the partitions to embed, one read task each.

    Not ``read_parquet``: the plan's sizes are known, and its footer reader starts a pool of up to
    32 actors per read (Ray 2.60), which cost more than the reads themselves on small clusters.
    """

    def __init__(self, output: str, sizes: dict[int, int]):
        super().__init__()
        self.output, self.sizes = output, sizes

    def estimate_inmemory_data_size(self) -> int:
        return 256 * sum(self.sizes.values())  # an id, a uri and a few pass-through columns a row

    def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None) -> list[ReadTask]:
        def read(uri):
            return lambda: [storage.read_parquet(uri)]

        return [ReadTask(read(shards.plan_uri(self.output, p)),
                         BlockMetadata(num_rows=n, size_bytes=256 * n, input_files=None, exec_stats=None),
                         per_task_row_limit=per_task_row_limit)
                for p, n in sorted(self.sizes.items())]


class ShardSink(Datasink):
    """Stages embedded rows per partition and writes each shard once its rows are all there."""

    def __init__(self, output: str, sizes: dict[int, int], columns: list[str]):
        self.output, self.sizes, self.columns = output, sizes, columns

    @property
    def min_rows_per_write(self) -> int:
        """About a partition per write task (blocks are much smaller), so shards come from few staged runs."""
        return max(self.sizes.values())

    def write(self, blocks, ctx) -> list[int]:
        blocks = [b for b in blocks if b.num_rows]
        if not blocks:
            return []
        touched = shards.stage(self.output, pa.concat_tables(blocks))
        for p in touched:
            shards.consolidate(self.output, p, self.sizes[p], self.columns)
        return touched

    def on_write_complete(self, write_result) -> None:
        missing = [p for p, n in self.sizes.items()
                   if not shards.consolidate(self.output, p, n, self.columns)]
        if missing:
            raise StoreError(f"{len(missing)} partitions of {self.output} were not fully written "
                             f"(e.g. {shard_name(missing[0])}); rerun with --resume")
