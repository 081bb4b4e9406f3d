"""The engine: the sharded pool view, its chunked primitives and the pool algorithms every stage
shares, in pure torch.

Nothing here imports Ray, storage or the store: :mod:`activeft.runtime.runner` runs an engine job
in this process or on a Ray Train worker group, and the engine is tested without Ray.
"""

from .density import K as DENSITY_K
from .density import lowest, neighbourhood
from .graph import coverage_graph, greedy_cover, knn_graph, neighbours
from .kcenter import k_center_greedy
from .kmeans import DEFAULT_SEEDING, SEEDINGS, kmeans, kmeans_parallel, kmeans_plusplus, lloyd, seed_rows
from .mapping import greedy_unique
from .pool import (
    Collectives,
    Pool,
    TorchCollectives,
    all_sum,
    gauge,
    generator,
    log_every,
    merge_topk,
    on_gauge,
    row_uniforms,
    sample_rows,
)
from .search import (
    PRECISIONS,
    FlatIndex,
    chunk_rows,
    default_precision,
    exact_scores,
    nearest,
    resolve_precision,
    stream_rows,
)

__all__ = ["Pool", "Collectives", "TorchCollectives", "merge_topk", "generator", "sample_rows", "row_uniforms",
           "all_sum", "log_every", "FlatIndex", "nearest", "exact_scores", "chunk_rows", "stream_rows", "PRECISIONS",
           "default_precision", "resolve_precision", "kmeans", "kmeans_plusplus", "kmeans_parallel", "seed_rows",
           "SEEDINGS", "DEFAULT_SEEDING", "lloyd", "k_center_greedy", "neighbours", "knn_graph", "coverage_graph",
           "greedy_cover", "greedy_unique", "gauge", "on_gauge", "neighbourhood", "lowest", "DENSITY_K"]
