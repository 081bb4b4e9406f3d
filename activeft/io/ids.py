"""Id lists given as tables: the ids already labeled (``select --exclude``, ``dedup --labeled``)."""

from __future__ import annotations

import numpy as np

from ..errors import ParameterError
from ..params import Rule
from . import storage

IDS = Rule(str | None, lambda v: v is None or isinstance(v, (str, list, tuple, np.ndarray)),
           "a table of ids or a list of ids")


def read_ids(source, what: str) -> list[str]:
    """Ids from a ``.csv``/``.parquet`` table with an ``id`` column, or from a list; duplicates dropped."""
    if isinstance(source, (list, tuple, np.ndarray)):
        ids = [str(i) for i in source]
    else:
        table = storage.read_table(str(source))
        if "id" not in table.column_names:
            raise ParameterError(f"{what} table {source} has no 'id' column (columns: {', '.join(table.column_names)})")
        ids = [str(i) for i in table.column("id").to_pylist() if i is not None]
    return list(dict.fromkeys(ids))
