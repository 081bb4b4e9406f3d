"""Label tables (``id,label``, CSV or Parquet) and the class map built from them.

Labels may be strings or integers; they are kept as given. The class map orders classes
numerically when every label is an integer (so 2 < 10) and lexically otherwise, and is
recorded with every result that depends on it.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import LabelsError
from . import storage


def _few(values, n: int = 3) -> str:
    return ", ".join(repr(v) for v in list(values)[:n])


def read_labels(source, what: str = "labels") -> pa.Table:
    """An ``id,label`` table (a URI or an Arrow table): ids as strings, no nulls, no duplicate ids."""
    try:
        table = source if isinstance(source, pa.Table) else storage.read_table(str(source))
    except Exception as e:
        raise LabelsError(f"{what}: {e}") from e
    missing = [c for c in ("id", "label") if c not in table.column_names]
    if missing:
        raise LabelsError(f"{what} table {source if isinstance(source, str) else ''} has no "
                          f"{' and '.join(map(repr, missing))} column (columns: {', '.join(table.column_names)})")
    table = table.select(["id", "label"] + [c for c in table.column_names if c not in ("id", "label")])
    table = table.set_column(0, "id", pc.cast(table.column("id"), pa.string()))
    if table.num_rows == 0:
        raise LabelsError(f"{what} table is empty")
    name = f"{what} table" if isinstance(source, pa.Table) else f"{what} table {source}"
    ids = table.column("id")
    if ids.null_count:
        row = int(pc.index(pc.is_null(ids), True).as_py())
        raise LabelsError(f"{name}: column 'id' has {ids.null_count} empty values (first: row {row + 1})")
    label = table.column("label")
    bad = pc.is_null(label, nan_is_null=True) if pa.types.is_floating(label.type) else pc.is_null(label)
    if pa.types.is_string(label.type) or pa.types.is_large_string(label.type):  # "" or "nan" in a text column
        bad = pc.or_(bad, pc.is_in(pc.utf8_lower(pc.utf8_trim_whitespace(label)), pa.array(["", "nan"])))
    count = pc.sum(pc.fill_null(bad, True)).as_py() or 0
    if count:
        first = ids[int(pc.index(pc.fill_null(bad, True), True).as_py())].as_py()
        raise LabelsError(f"{name}: column 'label' has {count} empty or NaN values (first: id {first!r})")
    counts = Counter(table.column("id").to_pylist())
    dupes = sorted(k for k, v in counts.items() if v > 1)
    if dupes:
        raise LabelsError(f"{what} table has {len(dupes)} duplicate ids (e.g. {_few(dupes)})")
    return table


def class_map(labels) -> list:
    """The sorted list of distinct classes; a class's index is its position."""
    values = set(labels.to_pylist() if hasattr(labels, "to_pylist") else labels)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return sorted(values)
    return sorted(values, key=str)


def class_indices(labels, classes: list) -> np.ndarray:
    """Each label's index in ``classes`` (:func:`class_map`'s order)."""
    position = {c: i for i, c in enumerate(classes)}
    return np.array([position[v] for v in (labels.to_pylist() if hasattr(labels, "to_pylist") else labels)],
                    dtype=np.int64)


def check_against(table: pa.Table, selected_ids) -> None:
    """Labels must cover exactly the selection: no extra ids, none missing."""
    have, want = set(table.column("id").to_pylist()), set(selected_ids)
    extra, missing = sorted(have - want), sorted(want - have)
    if extra:
        raise LabelsError(f"labels table has {len(extra)} ids that are not in the selection (e.g. {_few(extra)})")
    if missing:
        raise LabelsError(f"{len(missing)} ids of the selection have no label in the labels table "
                          f"(e.g. {_few(missing)})")
