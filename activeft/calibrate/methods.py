"""Calibration methods register themselves by name, as the selectors do; their parameters are declared once."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ParameterError, check, suggest
from ..params import Param, validate

_CALIBRATORS: dict[str, type[Calibrator]] = {}


@dataclass
class Pseudo:
    """What a method adds: pool ``rows`` (global), their class indices ``labels``, per-row ``columns`` of the
    output table (``labeled``: those columns' value on the labeled rows) and run ``info`` for
    ``calibration.json`` (whose ``params`` may give values resolved at fit time)."""

    rows: np.ndarray
    labels: np.ndarray
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    labeled: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


class Calibrator:
    """Base class. Subclasses set ``name``, ``params`` (``{name: Param}``), ``history`` (whether labels of ids
    outside the selection count too) and implement :meth:`fit`."""

    name: str = ""
    params: dict[str, Param] = {}
    history: bool = False

    def __init__(self, seed: int = 0, **params):
        check(isinstance(seed, int) and not isinstance(seed, bool), "seed", self.name, "an int", seed)
        self.seed = seed
        for key, value in validate(self.params, params, self.name, "method").items():
            setattr(self, key, value)

    def config(self) -> dict:
        return {"method": self.name, "seed": self.seed, **{k: getattr(self, k) for k in self.params}}

    def fit(self, store, rows: np.ndarray, klass: np.ndarray, classes: list, *, num_workers: int,
            use_gpu: bool) -> Pseudo:  # pragma: no cover - interface
        """The pseudo-labeled rows, from the labeled global ``rows`` and their indices ``klass`` into ``classes``."""
        raise NotImplementedError


def register_calibrator(cls: type[Calibrator]) -> type[Calibrator]:
    if cls.name in _CALIBRATORS:
        raise ValueError(f"calibration method {cls.name!r} registered twice")
    _CALIBRATORS[cls.name] = cls
    return cls


def list_calibrators() -> list[str]:
    return sorted(_CALIBRATORS)


def get_calibrator(name: str) -> type[Calibrator]:
    if name not in _CALIBRATORS:
        raise ParameterError(suggest(name, _CALIBRATORS, "calibration method"))
    return _CALIBRATORS[name]
