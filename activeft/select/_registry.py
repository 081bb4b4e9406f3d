"""Selection methods register themselves by name; parameters are declared, checked and documented once."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ParameterError, check, suggest

_SELECTORS: dict[str, type[Selector]] = {}


@dataclass(frozen=True)
class Param:
    """A selector parameter: default, validity test, and the phrase for the error message."""

    default: Any
    ok: Callable[[Any], bool]
    expected: str
    help: str = ""


def positive_int(help: str, default=None) -> Param:
    return Param(default, lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an int >= 1", help)


def positive_float(help: str, default) -> Param:
    return Param(default, lambda v: isinstance(v, (int, float)) and v > 0, "a float > 0", help)


def one_of(help: str, default, choices) -> Param:
    return Param(default, lambda v: v in choices, "one of " + ", ".join(map(repr, choices)), help)


@dataclass
class Result:
    """What a selector returns: global ``rows`` in selection order, per-row ``columns`` and run ``info``."""

    rows: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


class Selector:
    """Base class. Subclasses set ``name``, ``params`` and implement :meth:`fit`.

    ``fit(pool, comm, budget, exclude, checkpoints)`` runs on every worker with its rows of the
    pool and returns the same :class:`Result` on every rank.
    """

    name: str = ""
    params: dict[str, Param] = {}

    def __init__(self, seed: int = 0, **params):
        check(isinstance(seed, int) and not isinstance(seed, bool), "seed", self.name, "an int", seed)
        self.seed = seed
        unknown = set(params) - set(self.params)
        if unknown:
            name = sorted(unknown)[0]
            raise ParameterError(f"The '{name}' parameter does not apply to method {self.name}; its parameters: "
                                 f"{', '.join(self.params) or 'none'}")
        for key, spec in self.params.items():
            value = params.get(key, spec.default)
            if value is not None or spec.default is not None:
                check(spec.ok(value), key, self.name, spec.expected, value)
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
    ['activeft', 'fds', 'kmeans', 'random']
    """
    return sorted(_SELECTORS)


def get_selector(name: str) -> type[Selector]:
    if name not in _SELECTORS:
        raise ParameterError(suggest(name, _SELECTORS, "selection method"))
    return _SELECTORS[name]
