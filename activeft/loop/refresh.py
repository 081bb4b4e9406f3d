"""Feature refresh, ASVP's "aligned selection" (Wen, Pizarro, Williams, TMLR 2024): when, and how.

The official code (github.com/ZiTingW/asvp) hard-codes one switch at 15,000 labels and has no
LogME/PED rule, so the policies are ours, registered by name as the selection methods are:
``never``; ``at-labels:N`` refreshes once, when the label count first reaches N; ``logme``
computes the LogME evidence of the current embeddings on the labeled set every round and
refreshes when it stops improving (no higher than the previous round's on the same store: after
a refresh the comparison restarts). A refresh (:func:`refresh_features`) finetunes the backbone
on all labels so far and re-embeds the pool, and the eval store, with it; the labeled set is kept
(the official script restarts it).
"""

from __future__ import annotations

import pyarrow as pa

from ..errors import ParameterError, check, suggest
from ..io import storage
from ..io.store import EmbeddingStore
from ..models.logme import logme
from .cost import Account
from .labels import labeled
from .state import Round

_POLICIES: dict[str, type[Policy]] = {}


def register_policy(name: str):
    """Register a :class:`Policy` subclass as ``refresh=name`` (``name:N`` when it takes a count)."""
    def add(cls: type[Policy]) -> type[Policy]:
        if name in _POLICIES:
            raise ValueError(f"refresh policy {name!r} registered twice")
        cls.name = name
        _POLICIES[name] = cls
        return cls
    return add


def list_policies() -> list[str]:
    """How each refresh policy is spelled: ``['at-labels:N', 'logme', 'never']``."""
    return sorted(f"{n}:N" if cls.counted else n for n, cls in _POLICIES.items())


def parse_refresh(text: str) -> Policy:
    """``"never"``, ``"logme"``, ``"at-labels:N"`` -> its policy; an unknown name is one line naming the
    registered ones."""
    name, colon, count = str(text).partition(":")
    if name not in _POLICIES:
        raise ParameterError(suggest(name, _POLICIES, "refresh policy", "available: " + ", ".join(list_policies())))
    cls = _POLICIES[name]
    check(count.isdigit() and int(count) >= 1 if cls.counted else not colon, "refresh", "loop",
          f"'{name}:N' with N >= 1" if cls.counted else f"{name!r}", text)
    return cls(int(count)) if cls.counted else cls()


class Policy:
    """Decides, before each round after the first, whether to refresh the features of ``store``:
    :meth:`decide` returns the decision's record (``refresh``: its outcome), or None."""

    name = ""
    counted = False  # spelled name:N
    refreshes = True

    def decide(self, store: EmbeddingStore, given: pa.Table, history: list[Round]) -> dict | None:
        raise NotImplementedError

    def _record(self, store: EmbeddingStore, given: pa.Table, refresh: bool, **numbers) -> dict:
        return {"policy": self.name, "labels": given.num_rows, "refresh": refresh, **numbers, "store": store.uri}


@register_policy("never")
class Never(Policy):
    """Keep the first store's features."""

    refreshes = False

    def decide(self, store, given, history):
        return None


@register_policy("at-labels")
class AtLabels(Policy):
    """Refresh once, when the label count first reaches N (the official script: 15,000)."""

    counted = True

    def __init__(self, threshold: int):
        self.threshold = threshold

    def decide(self, store, given, history):
        first = not any(q.refreshed for q in history)
        return self._record(store, given, first and given.num_rows >= self.threshold, threshold=self.threshold)


@register_policy("logme")
class LogME(Policy):
    """Refresh when the LogME evidence on the labeled set is no higher than the previous round's on
    the same store."""

    def decide(self, store, given, history):
        x, y, _ = labeled(store, given)
        now = logme(x.numpy(), y.numpy())
        previous = next((q.refresh_decision["logme"] for q in reversed(history)
                         if q.refresh_decision and q.refresh_decision["store"] == store.uri), None)
        return self._record(store, given, previous is not None and now <= previous, logme=now, previous_logme=previous)


def refresh_features(store: EmbeddingStore, eval_store: EmbeddingStore | None, given: pa.Table, uri: str, *,
                     mode: str, epochs: int | None, account: Account, num_workers: int,
                     use_gpu: bool) -> tuple[EmbeddingStore, EmbeddingStore | None]:
    """Finetune ``store``'s backbone on ``given`` (``uri/refresh``, the finetune stage), then re-embed
    the pool (``uri/store``) and ``eval_store`` (``uri/eval-store``) with the pool's embed settings
    and the new weights. Both stages resume."""
    from ..embed import embed
    from ..finetune import finetune

    run = storage.join(uri, "refresh")
    account.time("refresh_finetune", num_workers, use_gpu, finetune, store, train=given, output=run, mode=mode,
                 epochs=epochs, num_workers=num_workers, use_gpu=use_gpu, resume=True)
    settings = {**store.embed_settings, "pretrained": storage.join(run, "model.safetensors"), "resume": True}

    def again(old: EmbeddingStore, name: str) -> EmbeddingStore:  # embed sizes its own actor pool: counted once
        return account.time("refresh_embed", 1, use_gpu, embed, old.source, storage.join(uri, name), **settings)

    return again(store, "store"), eval_store and again(eval_store, "eval-store")
