"""The embed stage: images -> resumable Parquet embedding store, on Ray Data.

The source is listed and planned into partitions here; the Ray Data pipeline
(:mod:`activeft.embed.pipeline`) writes one ``part-N.parquet`` per partition; then
``_errors.parquet`` and, last, ``_manifest.json``.
"""

from __future__ import annotations

import logging
import re
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import TooManyErrors, check
from ..io import protocol, storage
from ..io.store import DTYPES, ERRORS, KIND, MANIFEST, WORK, EmbeddingStore, shard_name, write_manifest
from ..models.backbone import BackboneSpec
from ..params import BOOL, TEXT, integer, number, one_of, optional, parsed
from ..runtime import cluster, metrics
from ..stages import Command, Section, stage
from . import shards, sources

log = logging.getLogger(__name__)


def _summary(store, values: dict) -> str:
    run = store.manifest["last_run"]
    return (f"{store.uri}: {len(store)} rows, dim {store.dim}, {store.manifest['errors']} errors; "
            f"embedded {run['embedded']} images in {run['seconds']} s ({run['images_per_s']} images/s)")


def _pool_size(num_actors) -> tuple[int, int] | None:
    """``N`` / ``"N"`` -> (N, N); ``(MIN, MAX)`` / ``"MIN,MAX"`` -> (MIN, MAX)."""
    if num_actors is None:
        return None
    given = num_actors
    if isinstance(num_actors, str):
        try:
            num_actors = tuple(int(x) for x in num_actors.split(","))
        except ValueError:
            num_actors = ()
    if isinstance(num_actors, int):
        num_actors = (num_actors,)
    sizes = tuple(num_actors) * (2 if len(num_actors) == 1 else 1)
    check(len(sizes) == 2 and all(isinstance(v, int) for v in sizes) and 1 <= sizes[0] <= sizes[1],
          "num_actors", "embed", "an int >= 1 or 'MIN,MAX' with 1 <= MIN <= MAX", given)
    return sizes


@stage({
    "source": TEXT, "output": TEXT, "model": TEXT, "pretrained": TEXT, "batch_size": integer(1),
    "image_size": optional(integer(8)),
    "num_actors": parsed(_pool_size, "an int >= 1 or 'MIN,MAX' with 1 <= MIN <= MAX", int | str | None, str | None),
    "gpus_per_actor": optional(number(0, strict=True)), "partition_size": integer(1), "dtype": one_of(*DTYPES),
    "max_error_fraction": number(0, maximum=1), "resume": BOOL, "overwrite": BOOL},
       flags={"output": ("-o",)}, output=KIND,
       command=Command("embed", arguments=("source",), summary=_summary,
                       example="activeft embed s3://bucket/images/ --output s3://bucket/stores/pool --pretrained hub"),
       section=Section("embed", fixed=("output", "resume", "overwrite"), extra={"store": (str, "{output}/store")}))
def embed(source: str, output: str, *, model: str = "vit_small_patch16_224.dino", pretrained: str = "hub",
          batch_size: int = 64, image_size: int | None = None, num_actors: int | tuple[int, int] | None = None,
          gpus_per_actor: float | None = None, partition_size: int = 10_000, dtype: str = "float32",
          max_error_fraction: float = 0.01, resume: bool = False, overwrite: bool = False) -> EmbeddingStore:
    """Embed every image of ``source`` into the embedding store ``output``.

    Parameters
    ----------
    source : str
        A directory or prefix (local, ``s3://``, ``gs://``, any fsspec URI), listed recursively
        for image files, or a ``.csv`` / ``.parquet`` manifest with a ``uri`` column and optional
        ``id``, ``label`` and pass-through columns (recommended for very large pools).
    output : str
        Store directory or prefix.
    model : str, default="vit_small_patch16_224.dino"
        timm model name.
    pretrained : str, default="hub"
        Weights: ``"hub"`` (timm download), ``"none"`` (seeded random init) or a
        ``.safetensors`` / ``.pth`` path or URI.
    batch_size : int, default=64
        Images per forward pass of an actor.
    image_size : int, optional
        Override the model's input size.
    num_actors : int, str or (min, max), optional
        Model actors: N, or ``"MIN,MAX"`` to autoscale; default: one actor per GPU (per
        ``gpus_per_actor``), or one CPU actor per 4 CPUs (reserving one CPU each on a cluster of several
        nodes, so that Ray spreads them, while a CPU is left for decoding).
    gpus_per_actor : float, optional
        GPUs per actor (fractions share a GPU); default 1 on GPU clusters.
    partition_size : int, default=10000
        Images per input partition, i.e. rows per output shard and the unit of resume.
    dtype : {"float32", "float16"}
        Storage dtype of the embeddings; readers always get float32.
    max_error_fraction : float, default=0.01
        Fail (without writing the manifest) when more images than this fraction cannot be decoded.
    resume : bool
        Continue an existing store: embed only the partitions and new images not done yet.
    overwrite : bool
        Replace an existing store. Without either, a non-empty ``output`` is an error.

    Returns
    -------
    EmbeddingStore

    Examples
    --------
    >>> import activeft, numpy as np, tempfile
    >>> from PIL import Image
    >>> d = tempfile.mkdtemp()
    >>> for i in range(4):
    ...     Image.fromarray(np.full((32, 32, 3), 60 * i, np.uint8)).save(f"{d}/img{i}.png")
    >>> store = activeft.embed(d, f"{d}/_store", model="resnet18", pretrained="none",
    ...                        image_size=32, batch_size=2)
    >>> len(store), store.dim
    (4, 512)
    """
    pool = _pool_size(num_actors)
    start = time.perf_counter()
    output = storage.output_uri(output)
    spec = BackboneSpec(model, pretrained, image_size)
    protocol.check(output, KIND, None, resume=resume, overwrite=overwrite)  # fail before any work
    table = sources.read_source(source)
    net, weights = spec.build()
    config = spec.data_config(net)
    dim = int(net.num_features)
    del net
    settings = {"backbone": {"model": model, "pretrained": pretrained, "image_size": image_size,
                             "weights": weights}, "dtype": dtype, "partition_size": partition_size}
    # only now that source and model are known to be good. A finished store is resumed too: new images of
    # the source go into new shards. On --overwrite the new store is written beside the old one and swapped
    # in once complete; too many decode errors keep a new store's work for --resume.
    with protocol.writing(output, KIND, settings, resume=resume, overwrite=overwrite,
                       verb="embedded", keep_on=(TooManyErrors,)) as out:
        work = out.dir  # the store itself, or on --overwrite the staging beside it
        sizes, new = _plan(work, table, partition_size)
        columns = ["id", "uri", "embedding"] + [c for c in table.column_names if c not in ("id", "uri")]
        todo = {p: n for p, n in sizes.items()
                if not shards.consolidate(work, p, n, columns)}
        for p in todo:  # partitions left half-staged by an interrupted run are redone whole
            storage.delete(shards.staging_uri(work, p))
        log.info("embed: %d images in %d partitions; %d new images; %d partitions to embed",
                 sum(sizes.values()), len(sizes), new, len(todo))
        fresh = _uncounted(work, sizes)
        if todo or fresh:  # (fresh alone: shards a killed run left, counted on Ray's metrics by _commit)
            cluster.init()
        if todo:
            from .pipeline import run  # Ray Data: imported by the runs that embed

            run(work, todo, columns, spec, config, dim, dtype, batch_size, pool, gpus_per_actor)
        _commit(work, sizes, columns, settings, config, dim, source, max_error_fraction, fresh,
                embedded=sum(todo.values()), seconds=time.perf_counter() - start,
                replacing=out.state == protocol.REPLACE,
                throughput={"batch_size": batch_size, "num_actors": num_actors, "gpus_per_actor": gpus_per_actor})
        out.commit()  # _work/files.json, then the swap on --overwrite
    return EmbeddingStore(output)




def _plan(output: str, table: pa.Table, partition_size: int) -> tuple[dict[int, int], int]:
    """Partition sizes of the store, adding partitions for source rows not planned before."""
    plan_dir = storage.join(output, WORK, "plan")
    planned = storage.list_files(plan_dir, recursive=False)
    sizes, known = {}, []
    for key, uri in planned:
        if match := re.fullmatch(r"part-(\d+)\.parquet", key):
            ids = storage.read_parquet(uri, columns=["id"]).column("id")
            sizes[int(match[1])] = len(ids)
            known.extend(ids.cast(pa.large_string()).chunks)  # large: over 2 GB of ids at a billion rows
    if known:
        table = table.filter(pc.invert(pc.is_in(table.column("id"), pa.chunked_array(known).combine_chunks())))
    first = max(sizes, default=-1) + 1
    for i, lo in enumerate(range(0, table.num_rows, partition_size)):
        part = table.slice(lo, partition_size)
        part = part.append_column("partition", pa.array(np.full(part.num_rows, first + i, np.int32)))
        part = part.append_column("row", pa.array(np.arange(part.num_rows, dtype=np.int32)))
        storage.write_parquet(shards.plan_uri(output, first + i), part)
        sizes[first + i] = part.num_rows
    return sizes, table.num_rows


def _commit(output, sizes, columns, settings, config, dim, source, max_error_fraction, fresh, embedded, seconds,
            replacing=False, throughput=None):
    """Gather errors, enforce the error budget, then write the manifest (last) and count what it commits.
    The manifest's ``embed`` is ``throughput``: the settings that shape the run, not the store (a refresh
    re-embeds with them: :attr:`~activeft.io.store.EmbeddingStore.embed_settings`).

    ``activeft_images_embedded`` and ``activeft_decode_errors`` are counted here, on the driver, from the
    store itself: the rows and errors of the ``fresh`` partitions, whose shards this manifest lists and the
    previous one did not. A shard is written once from its partition's de-duplicated rows and first listed
    by one manifest, so each image counts once however often Ray retried or re-executed the tasks that
    decoded or embedded it (counting in those tasks counted every attempt); the shards of a killed run
    count with the next run's manifest.
    """
    error_parts = {k: storage.read_parquet(u) for k, u in storage.list_files(storage.join(output, WORK, "errors"))
                   if k.endswith(".parquet")}
    schema = pa.schema([("id", pa.string()), ("uri", pa.string()), ("error", pa.string())])
    errors = pa.concat_tables(error_parts.values()).sort_by("id") if error_parts else schema.empty_table()
    storage.write_parquet(storage.join(output, ERRORS), errors)
    total = sum(sizes.values())
    if errors.num_rows > max_error_fraction * total:
        failed = f"{errors.num_rows} of {total} images could not be decoded " \
            f"({errors.num_rows / total:.1%} > max_error_fraction {max_error_fraction:.1%})"
        if replacing:  # the staging is dropped: the old store stays as it was
            raise TooManyErrors(f"{failed}, e.g. {errors.column('id')[0].as_py()!r}: "
                                f"{errors.column('error')[0].as_py()}; the old store is unchanged; rerun "
                                "--overwrite with a higher --max-error-fraction")
        raise TooManyErrors(f"{failed}; see {storage.join(output, ERRORS)}; the store has no manifest until a rerun "
                            "with --resume and a higher --max-error-fraction")
    rate = round(embedded / seconds, 2) if embedded else None
    store = write_manifest(output, shards=[shard_name(p) for p in sorted(sizes)], dim=dim, dtype=settings["dtype"],
                           columns=columns, source=source, errors=errors.num_rows, backbone=settings["backbone"],
                           preprocessing=config, partition_size=settings["partition_size"], embed=throughput,
                           last_run={"embedded": embedded, "seconds": round(seconds, 2), "images_per_s": rate})
    rows = {s["name"]: s["rows"] for s in store.manifest["shards"]}
    metrics.inc("activeft_images_embedded", sum(rows[shard_name(p)] for p in fresh), stage="embed")
    metrics.inc("activeft_decode_errors", sum(error_parts[shard_name(p)].num_rows for p in fresh
                                              if shard_name(p) in error_parts), stage="embed")
    log.info("embed: %s: %d rows in %d shards, %d errors; embedded %d images in %.1f s (%s images/s)",
             output, len(store), len(sizes), errors.num_rows, embedded, seconds, rate)
    return store


def _uncounted(store: str, sizes: dict[int, int]) -> list[int]:
    """The partitions whose shards the store's manifest does not list yet (an earlier run committed, and
    counted, those it lists)."""
    uri = storage.join(store, MANIFEST)
    listed = {s["name"] for s in storage.read_json(uri)["shards"]} if storage.exists(uri) else set()
    return [p for p in sorted(sizes) if shard_name(p) not in listed]
