"""The engine: the sharded pool view, its chunked primitives, the pool algorithms every stage
shares, and the one runner (in-process or a Ray Train worker group).

Stages (select, calibrate, the loop, the report, finetune) import from here; nothing here
imports a stage.
"""

from .kcenter import k_center_greedy
from .kmeans import kmeans, kmeans_plusplus, lloyd
from .mapping import greedy_unique
from .pool import Collectives, Pool, TorchCollectives, all_sum, generator, log_every, merge_topk, sample_rows
from .runner import Checkpoints, run
from .search import FlatIndex, chunk_rows, nearest

__all__ = ["Pool", "Collectives", "TorchCollectives", "merge_topk", "generator", "sample_rows", "all_sum",
           "log_every", "FlatIndex", "nearest", "chunk_rows", "kmeans", "kmeans_plusplus", "lloyd",
           "k_center_greedy", "greedy_unique", "Checkpoints", "run"]
