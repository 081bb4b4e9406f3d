"""Quotas: the budget split over the groups of a column (``select --balance-by COLUMN --quotas RULE``).

The rule gives each group a weight: ``uniform`` (the default: equal), ``proportional`` (its rows,
"as in the input") or a ``{value: share}`` dict (shares >= 0 summing to 1; groups not named get
none). A group's target is its weight's share of the labeled rows plus the budget: its labeled
(``--exclude``d) rows count toward it, and :func:`split_budget` gives each group its target less its
labeled rows, exactly, by largest remainders; a group with fewer free rows than that gives them all,
and the rest goes to the others by the same rule. The method then runs inside each group
(:func:`activeft.select.cells.select_in_cells`), so every registered selector meets the quotas exactly.
"""

from __future__ import annotations

import json

import numpy as np

from ..errors import ParameterError
from ..io.store import EmbeddingStore
from ..runtime.tasks import tasks, within

RULES = ("uniform", "proportional")
NULL = "null"  # the group of rows whose column is empty


def parse_quotas(value) -> str | dict[str, float]:
    """``"uniform"``, ``"proportional"`` or ``{value: share}`` (a dict, or its JSON text): shares >= 0
    summing to 1 (within 1e-6); the keys are the column's values as text."""
    if value in RULES:
        return value
    try:
        shares = json.loads(value) if isinstance(value, str) else value
        shares = {str(k): float(v) for k, v in shares.items()}
    except (ValueError, TypeError, AttributeError):
        raise ValueError(f"quotas {value!r}: expected uniform, proportional or {{value: share}} "
                         "(JSON on the command line)") from None
    if not shares or min(shares.values()) < 0 or abs(sum(shares.values()) - 1) > 1e-6:
        raise ValueError(f"quota shares must be >= 0 and sum to 1; got {shares} (sum {sum(shares.values()):.6g})")
    return shares


def split_budget(weights: np.ndarray, free: np.ndarray, budget: int, held: np.ndarray | None = None) -> np.ndarray:
    """Each group's share of ``budget`` (module docstring): ``held + share`` as near the group's ``weights``
    share of ``budget + held.sum()`` as its ``free`` rows allow; the floors of the exact targets, then one
    more for the largest remainders (ties to the first group); a group already above its target, or out
    of free rows, is closed and the rest split over the others by the same rule. Sums to ``budget``
    unless the open groups have fewer free rows."""
    weights = np.asarray(weights, dtype=np.float64)
    held = np.zeros(len(weights), np.int64) if held is None else np.asarray(held, np.int64)
    out = np.zeros(len(weights), dtype=np.int64)
    open_ = (free > 0) & (weights > 0)
    while budget > out.sum() and open_.any():
        left = budget - out.sum()
        have = held + out
        want = (left + have[open_].sum()) * weights * open_ / weights[open_].sum() - have * open_
        if (want[open_] < 0).any():  # above its target already: no more for it
            open_ &= want >= 0
            continue
        add = np.floor(want).astype(np.int64)
        order = np.lexsort((np.arange(len(weights)), -np.round(want - add, 9)))  # largest remainder, then the first
        add[order[:left - add.sum()]] += 1
        out = np.minimum(out + add, free)
        open_ &= out < free
    return out


def check_column(store: EmbeddingStore, column: str) -> None:
    """One line naming the store's columns, unless ``column`` is one to balance by."""
    if column not in store.columns or column == "embedding":
        raise ParameterError(f"balance_by {column!r} is not a column of the store; it has "
                             + ", ".join(c for c in store.columns if c != "embedding"))


def group_text(store: EmbeddingStore, column: str, start: int, stop: int) -> np.ndarray:
    """Each of rows ``[start, stop)``'s group: its value in ``column`` as text, :data:`NULL` when empty."""
    values = store.read(start, stop, [column]).column(column).to_pylist()
    return np.array([NULL if v is None else str(v) for v in values])


def _count_groups(store_uri: str, column: str, start: int, stop: int, held: np.ndarray,
                  dropped: np.ndarray) -> dict[str, list[int]]:
    """One shard's groups: ``{value: [rows, held rows, dropped rows]}``."""
    values, codes = np.unique(group_text(EmbeddingStore(store_uri), column, start, stop), return_inverse=True)
    counts = [np.bincount(c, minlength=len(values)) for c in (codes, codes[held - start], codes[dropped - start])]
    return {v: [int(c[g]) for c in counts] for g, v in enumerate(values.tolist())}


def column_groups(store: EmbeddingStore, column: str, exclude: np.ndarray, dropped: np.ndarray,
                  num_workers: int = 1) -> tuple[list[str], np.ndarray]:
    """The distinct values of ``column`` as text (sorted; empty ones are :data:`NULL`) and each one's rows,
    labeled (``exclude``) rows and ``dropped`` rows (``(values, 3)``): a task a shard, so the driver holds a
    few numbers a group, never one a row."""
    check_column(store, column)
    args = {i: (store.uri, column, lo, hi, within(exclude, lo, hi), within(dropped, lo, hi))
            for i, (lo, hi) in enumerate(store.shard_bounds)}
    total: dict[str, np.ndarray] = {}
    for _, part in tasks(_count_groups, args, num_workers, use_gpu=False):
        for v, c in part.items():
            total[v] = total.get(v, 0) + np.array(c, np.int64)
    values = sorted(total)
    return values, np.array([total[v] for v in values], np.int64).reshape(-1, 3)


def group_budgets(values: list[str], counts: np.ndarray, quotas, budget: int) -> tuple[np.ndarray, list[dict]]:
    """Each group's budget under ``quotas`` (module docstring) from its :func:`column_groups` ``counts``, and
    a table of the groups: value, rows, labeled, free, target and budget."""
    sizes, held, dropped = counts.T
    free = sizes - held - dropped
    if isinstance(quotas, dict):
        unknown = sorted(set(quotas) - set(values))
        if unknown:
            raise ParameterError(f"quotas name {unknown[0]!r}, not a value of the column (values: "
                                 + ", ".join(values[:10]) + (", ..." if len(values) > 10 else "") + ")")
        weights = np.array([quotas.get(v, 0.0) for v in values])
    else:
        weights = np.ones(len(values)) if quotas == "uniform" else sizes.astype(np.float64)
    if free[weights > 0].sum() < budget:
        raise ParameterError(f"budget {budget} is larger than the {int(free[weights > 0].sum())} selectable rows of "
                             "the groups the quotas give a share")
    budgets = split_budget(weights, free, budget, held)
    target = (budget + held[weights > 0].sum()) * weights / weights.sum()
    return budgets, [{"value": v, "rows": int(sizes[g]), "labeled": int(held[g]), "free": int(free[g]),
                      "target": round(float(target[g]), 3), "budget": int(budgets[g])} for g, v in enumerate(values)]
