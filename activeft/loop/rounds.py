"""A round of the loop (a feature refresh when due, selection through the proxy, labels, a probe), and the
final model.

A round is a stage output (:data:`~activeft.loop.state.ROUND`, its budget as its settings): its
selection is recorded once (``selected.json``) before anything is labeled, its marker
(``round.json``) once it is labeled, so a stop anywhere resumes at the first step without a
record, and a round waiting for labels is simply one without its marker.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

import pyarrow as pa
import torch

from ..io import protocol, storage
from ..io.labels import class_map
from ..io.store import EmbeddingStore, open_store
from ..models.heads import train_mlp
from ..runtime import metrics
from ..runtime.runner import run
from ..select import list_selectors, select
from .cost import Account
from .labels import Labels, labeled
from .refresh import Policy, refresh_features
from .state import LABELED, ROUND, LoopState, Round, round_uri
from .strategies import strategy_job

log = logging.getLogger(__name__)
SELECTED = "selected.json"


@dataclass(frozen=True)
class Setup:
    """The loop's parameters, resolved: what every round and the final model read."""

    state: str
    pool: EmbeddingStore  # the first store: its ids, images and (for the oracle) labels
    labels: Labels
    policy: Policy
    strategy: str
    first: str
    refresh_mode: str
    refresh_epochs: int | None
    eval_store: str | None
    final: str
    final_threshold: int
    final_labels: str
    seed: int
    proxy_epochs: int
    num_workers: int
    use_gpu: bool
    stop_at: str | None = None

    def stop(self, step: str) -> None:
        if self.stop_at == step:  # test hook: stop right after this step was recorded
            raise RuntimeError(f"loop stopped after step {step!r} (test hook)")


def finetunable(store: EmbeddingStore) -> bool:
    """Whether ``store`` has a backbone and images to finetune it on (not imported embeddings)."""
    return store.model is not None and "uri" in store.columns


def play(setup: Setup, st: LoopState, r: int, budget: int) -> Round:
    """Round ``r`` after the rounds of ``st``, from where it stopped; its status is ``selected``
    while it waits for labels."""
    with protocol.writing(round_uri(setup.state, r), ROUND, {"budget": budget}, resume=True) as out:
        if out.finished:
            return Round.read(out.join(ROUND.marker))
        if storage.exists(out.join(SELECTED)):
            rec = Round.read(out.join(SELECTED))
        else:
            rec = _select(setup, st, r, budget)
            storage.write_json(out.join(SELECTED), rec.to_json())
            setup.stop("selected")
        given = _ask(setup, st.rounds + [rec])
        if given is None:
            return rec
        account = Account(rec.cost)
        if rec.eval_store:
            rec.eval_accuracy = account.time("evaluate", 1, False, _probe, open_store(rec.store), given, rec.eval_store)
        rec.labels, rec.status = given.num_rows, LABELED
        out.commit(rec.to_json())
    metrics.set("activeft_loop_round", r + 1, stage="loop")
    log.info("loop: round %d done: %d labels%s", r, rec.labels,
             "" if rec.eval_accuracy is None else f", probe top-1 {rec.eval_accuracy:.4f}")
    setup.stop("labeled")
    return rec


def _select(setup: Setup, st: LoopState, r: int, budget: int) -> Round:
    """Refresh the features if the policy says so, then select the round's ``budget``."""
    account = Account()
    given = setup.labels.of(st.rounds)
    store, eval_store = open_store(st.store), st.eval_store and open_store(st.eval_store)
    decision = setup.policy.decide(store, given, st.rounds) if r > 0 else None
    if decision and decision["refresh"]:
        store, eval_store = refresh_features(
            store, eval_store, given, round_uri(setup.state, r), mode=setup.refresh_mode, epochs=setup.refresh_epochs,
            account=account, num_workers=setup.num_workers, use_gpu=setup.use_gpu)
        log.info("loop: round %d refreshed the features (%s): new store %s", r, decision, store.uri)
    rec = Round(r, budget, setup.first if r == 0 else setup.strategy, store.uri, [], refresh_decision=decision,
                eval_store=eval_store and eval_store.uri, cost=account.cost)
    rec.selected = account.time("select", setup.num_workers, setup.use_gpu, _choose, setup, store, rec, given)
    return rec


def _choose(setup: Setup, store: EmbeddingStore, rec: Round, given: pa.Table) -> list[str]:
    """``rec.budget`` ids by a selection method, or by a proxy strategy (ASVP's MLP trained from scratch
    on the labeled embeddings, its metrics into ``rec.proxy``)."""
    labeled_ids, seed = given.column("id").to_pylist(), setup.seed + rec.round
    if rec.strategy in list_selectors():
        return select(store, rec.budget, method=rec.strategy, exclude=labeled_ids or None, seed=seed,
                      num_workers=setup.num_workers, use_gpu=setup.use_gpu).ids
    x, y, classes = labeled(store, given)
    start = time.perf_counter()
    proxy = train_mlp(x, y, len(classes), epochs=setup.proxy_epochs, seed=seed)
    with torch.no_grad():
        rec.proxy = {"train_accuracy": float((proxy(x).argmax(1) == y).float().mean()), "classes": len(classes),
                     "seconds": round(time.perf_counter() - start, 3)}
    dims = (x.shape[1], len(classes), proxy.fc1.out_features)
    job = functools.partial(strategy_job, rec.strategy, {k: v.cpu() for k, v in proxy.state_dict().items()}, dims,
                            rec.budget, store.rows_of(labeled_ids).tolist(), seed)
    chosen = run(job, store, num_workers=setup.num_workers, use_gpu=setup.use_gpu)["rows"]
    return store.take(chosen, ["id"]).column("id").to_pylist()


def _ask(setup: Setup, rounds: list[Round]) -> pa.Table | None:
    """All labels so far once the last round's selection has its labels; None while some are missing."""
    rec = rounds[-1]
    asked = setup.labels.ask(rec)
    given = setup.labels.of(rounds)
    missing = sorted(set(rec.selected) - set(given.column("id").to_pylist()))
    if missing:
        log.info("loop: round %d waits for %d labels (e.g. %s); send %s to annotators, then re-run",
                 rec.round, len(missing), missing[0], asked)
        return None
    return given


def _probe(store: EmbeddingStore, given: pa.Table, eval_store: str) -> float:
    """Top-1 on ``eval_store`` of the linear probe trained on all labels so far."""
    from ..finetune import accuracy, validation_set
    from ..models.heads import train_linear

    x, y, classes = labeled(store, given)
    source, rows, target = validation_set(store, None, eval_store, classes)
    return accuracy(train_linear(x, y, len(classes)), source.embeddings_of(rows), target)


def final_model(setup: Setup, st: LoopState) -> dict | None:
    """The final model on all labels (``STATE/final/round-N``, after round N): ``final``, or with
    ``auto`` LP-FT below ``final_threshold`` labels per class and full finetuning from there; on the labels, or
    with ``final_labels="labelprop"`` on every pool row labeled by label propagation (``final/round-N-labelprop``)."""
    if setup.final == "none":
        return None
    from ..finetune import finetune

    given = setup.labels.of(st.rounds)
    mode = setup.final
    if mode == "auto" and not finetunable(setup.pool):
        log.info("loop: the store holds imported embeddings: the final model is the linear probe")
        mode = "linear"
    elif mode == "auto":
        per_class = given.num_rows / max(1, len(class_map(given.column("label"))))
        mode = "lp-ft" if per_class < setup.final_threshold else "full"
    uri = storage.join(setup.state, "final", f"round-{len(st.rounds) - 1}")
    train = given
    if setup.final_labels == "labelprop":
        from ..calibrate import calibrate

        train = calibrate(setup.pool, labels=given, method="labelprop", seed=setup.seed, num_workers=setup.num_workers,
                          use_gpu=setup.use_gpu, output=f"{uri}-labelprop", overwrite=True)
    info = finetune(setup.pool, train=train, output=uri, mode=mode, val_store=setup.eval_store,
                    num_workers=setup.num_workers, use_gpu=setup.use_gpu, seed=setup.seed, resume=True)
    account = Account()  # the run's own seconds: also those of a run an earlier call finished
    account.add("final", info["seconds"], setup.num_workers, setup.use_gpu)
    return {"mode": mode, "run": uri, "val_accuracy": info["final_val_accuracy"], "cost": account.cost}
