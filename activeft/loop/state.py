"""The loop's records: a round (:class:`Round`), the loop as a whole (:class:`LoopState`), and the
stage outputs they are kept in (:data:`LOOP`, :data:`ROUND`; the layout is in :mod:`activeft.loop`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from ..io import protocol, storage
from .cost import settle

LOOP = protocol.Kind("loop", "state.json", r"state\.json|(round-\d+|final)/.*",
                     "use another --state, or the same options (more rounds may be added)")
ROUND = protocol.Kind("loop round", "round.json",
                      r"selected\.json|labels\.parquet|round\.json|(refresh|store|eval-store|export)/.*")
SELECTED, LABELED = "selected", "labeled"


def round_uri(state: str, r: int) -> str:
    return storage.join(state, f"round-{r}")


@dataclass
class Round:
    """One round: selected (``selected.json``, waiting for labels) or labeled (its marker ``round.json``).

    ``store`` and ``eval_store`` are the stores it used (new ones when it refreshed the features);
    ``cost`` its CPU and GPU seconds per stage (:class:`~activeft.loop.cost.Account`)."""

    round: int
    budget: int
    strategy: str
    store: str
    selected: list[str]
    status: str = SELECTED
    proxy: dict | None = None
    refresh_decision: dict | None = None
    eval_store: str | None = None
    eval_accuracy: float | None = None
    labels: int | None = None
    cost: dict = field(default_factory=dict)

    @property
    def refreshed(self) -> bool:
        return bool(self.refresh_decision and self.refresh_decision["refresh"])

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, record: dict) -> Round:
        return cls(**{f.name: record[f.name] for f in fields(cls) if f.name in record})

    @classmethod
    def read(cls, uri: str) -> Round:
        return cls.from_json(storage.read_json(uri))


@dataclass
class LoopState:
    """The rounds so far (the last one may wait for labels), the final model and the prices of the
    cost account; the current stores follow from the rounds."""

    config: dict
    prices: dict
    rounds: list[Round] = field(default_factory=list)
    final: dict | None = None

    @property
    def store(self) -> str:
        return self.rounds[-1].store if self.rounds else self.config["store"]

    @property
    def eval_store(self) -> str | None:
        return self.rounds[-1].eval_store if self.rounds else self.config["eval_store"]

    @property
    def stores(self) -> list[str]:
        return [self.config["store"]] + [r.store for r in self.rounds if r.refreshed]

    @property
    def labels(self) -> int:
        return sum(len(r.selected) for r in self.rounds if r.status == LABELED)

    def to_json(self) -> dict:
        """The loop's marker (``state.json``), and what :func:`activeft.loop` returns."""
        costs = [r.cost for r in self.rounds] + ([self.final["cost"]] if self.final else [])
        return {"config": self.config, "store": self.store, "stores": self.stores, "eval_store": self.eval_store,
                "rounds": [r.to_json() for r in self.rounds], "final": self.final,
                "cost": settle(costs, self.labels, self.prices)}
