"""Selection methods register themselves by name; their parameters are declared once (:mod:`activeft.params`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ParameterError, check, suggest
from ..params import Param, integer, optional, validate

_SELECTORS: dict[str, type[Selector]] = {}


def graph_params(reach: int) -> dict[str, Param]:
    """The neighbour graph's parameters of a coverage selector keeping ``reach`` x pool / budget rows per row
    by default (:func:`activeft.engine.coverage_graph`)."""
    return {
        "neighbours": Param(None, optional(integer(1)), f"Rows kept per row in the graph (None: {reach} x pool / "
                                                        "budget, at least 32, within the engine's edge budget)."),
        "candidates": Param(1 << 16, integer(1), "Rows each row is compared with when building the graph; pools up "
                                                 "to this size are searched exactly."),
    }


@dataclass
class Result:
    """What a selector returns: global ``rows`` in selection order, per-row ``columns`` and run ``info``."""

    rows: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


class Selector:
    """Base class. Subclasses set ``name``, ``params`` (``{name: Param}``), ``test_params`` and implement :meth:`fit`.

    ``fit(pool, comm, budget, exclude, checkpoints)`` runs on every worker with its rows of the
    pool and returns the same :class:`Result` on every rank.
    """

    name: str = ""
    params: dict[str, Param] = {}
    test_params: dict = {}
    """The cheapest parameters that still exercise the method on the tests' small pools (registry-wide tests)."""
    test_seed_free: bool = False
    """True where no random choice is made on those pools: another seed gives the same selection."""
    worker_invariant: bool = True
    """True when the same seed selects the same rows for any number of workers (tested 1 vs W)."""

    def __init__(self, seed: int = 0, **params):
        check(isinstance(seed, int) and not isinstance(seed, bool), "seed", self.name, "an int", seed)
        self.seed = seed
        for key, value in validate(self.params, params, self.name, "method").items():
            setattr(self, key, value)

    def config(self) -> dict:
        return {"method": self.name, "seed": self.seed, **{k: getattr(self, k) for k in self.params}}

    def fit(self, pool, comm, budget: int, exclude, checkpoints) -> Result:  # pragma: no cover - interface
        raise NotImplementedError


def register_selector(cls: type[Selector]) -> type[Selector]:
    if cls.name in _SELECTORS:
        raise ValueError(f"selector {cls.name!r} registered twice")
    _SELECTORS[cls.name] = cls
    return cls


def list_selectors() -> list[str]:
    """Names of the registered selection methods.

    Examples
    --------
    >>> import activeft
    >>> activeft.list_selectors()
    ['activeft', 'bilaf', 'fds', 'herding', 'kmeans', 'probcover', 'random', 'typiclust']
    """
    return sorted(_SELECTORS)


def get_selector(name: str) -> type[Selector]:
    if name not in _SELECTORS:
        raise ParameterError(suggest(name, _SELECTORS, "selection method"))
    return _SELECTORS[name]
