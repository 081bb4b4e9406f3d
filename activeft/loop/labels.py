"""The loop's labels: the oracle's answers (benchmarks) or the user's growing labels table (human in
the loop), and the labeled embeddings the proxy, LogME and the probe train on."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ..export import export
from ..io import storage
from ..io.labels import class_indices, class_map, read_labels
from ..io.store import EmbeddingStore
from ..select import Selection
from .state import Round, round_uri

ANSWERS = "labels.parquet"  # the oracle's answers to a round, in its directory


class Labels:
    """The labels of the ``pool``'s ids: with ``oracle``, its ``label`` column answers each round at once
    (into ``round-N/labels.parquet``); else they come from ``table`` as the user fills it."""

    def __init__(self, state: str, pool: EmbeddingStore, table=None, oracle: bool = False):
        self.state, self.pool, self.table, self.oracle = state, pool, table, oracle

    def ask(self, rec: Round) -> str:
        """Ask for the labels of ``rec``'s selection: the oracle answers; for a labels table the
        selection is exported for annotators (once). Returns where the question went."""
        uri = round_uri(self.state, rec.round)
        rows = self.pool.rows_of(rec.selected)
        if self.oracle:
            storage.write_parquet(storage.join(uri, ANSWERS), self.pool.take(rows, ["id", "label"]))
            return uri
        uri = storage.join(uri, "export")
        if not storage.exists(storage.join(uri, "export.json")):
            table = self.pool.take(rows, [c for c in ("id", "uri") if c in self.pool.columns])
            table = table.append_column("rank", pa.array(np.arange(len(rows), dtype=np.int32)))
            export(Selection(rec.selected, table, {}, None), uri)
        return uri

    def of(self, rounds: list[Round]) -> pa.Table:
        """``id,label`` of the ids the ``rounds`` selected that have a label so far."""
        if self.oracle:
            uris = [storage.join(round_uri(self.state, r.round), ANSWERS) for r in rounds]
            parts = [storage.read_parquet(u) for u in uris if storage.exists(u)]
            table = pa.concat_tables(parts) if parts else None
        else:
            table = read_labels(self.table) if storage.exists(str(self.table)) else None
        if table is None:
            return pa.table({"id": pa.array([], pa.string()), "label": pa.array([], pa.int64())})
        selected = pa.array([i for r in rounds for i in r.selected], pa.string())
        return table.filter(pc.is_in(table.column("id"), selected)).select(["id", "label"])


def labeled(store: EmbeddingStore, given: pa.Table) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Embeddings and class indices of the labeled ids, and the class map."""
    classes = class_map(given.column("label"))
    x = torch.from_numpy(store.embeddings_at(store.rows_of(given.column("id").to_pylist())))
    return x, torch.from_numpy(class_indices(given.column("label"), classes)), classes
