"""The loop stage: multi-round active learning through a proxy (ASVP; Wen, Pizarro, Williams, TMLR 2024).

Official code: github.com/ZiTingW/asvp. Each round trains the proxy (ASVP's MLP, from scratch, on
the labeled embeddings: :func:`activeft.models.heads.train_mlp`), scores the unlabeled pool on the sharded
engine and selects the round's budget with a strategy (:mod:`.strategies`, or any selection
method through :func:`activeft.select`); the first round has no labels, so it uses a selection
method (ActiveFT by default: cold start) instead of the official code's random.

Feature refresh (ASVP's "aligned selection"): the released code hard-codes one switch at 15,000
labels and has no LogME/PED rule, so ours is designed and documented here. ``at-labels:N``
refreshes once, when the label count first reaches N. ``logme`` computes the LogME evidence of
the current embeddings on the labeled set every round and refreshes when it stops improving
(no higher than the previous round's); after a refresh the comparison restarts on the new
embeddings. A refresh finetunes the backbone on all labels so far (the finetune stage, lp-ft or
full) and re-embeds the pool with it (the embed stage, into a new store); the labeled set is
kept (the official script restarts it; we do not).

Final model, ``auto``: LP-FT below ``final_threshold`` labels per class (100 by default), full
finetuning from there. ASVP finds LP-FT better "when the number of labeled samples is small"
and finetuning necessary "when more labels are available" but gives no number: 100 is our
choice, not ASVP's, and not measured yet (no GPU here); users can move it. A store of imported
embeddings has no backbone to finetune: the final model is then the linear probe.

State (``STATE/state.json``, written after every step) holds the rounds (selected ids, proxy
metrics, LogME, refresh decisions, evaluation), the current store and the cost account (labels,
CPU and GPU seconds per stage, and dollars: ASVP's total cost = labeling + compute). A stop at
any point resumes there. With ``labels`` (human in the loop) each round exports its selection
(CSV + Label Studio) and the loop stops until the labels table covers it; with
``oracle="store-labels"`` the store's ``label`` column answers at once (benchmarks).
"""

from __future__ import annotations

import functools
import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ..runtime import metrics
from ..io import protocol, storage
from ..runtime.runner import run
from ..errors import ConfigError, ParameterError, check
from ..export import export
from ..models.heads import train_mlp
from ..io.labels import class_indices, class_map, read_labels
from ..models.logme import logme
from ..params import BOOL, STORE, TABLE, TEXT, declared, integer, number, one_of, optional, parsed, validate
from ..select import list_selectors, select
from ..io.store import EmbeddingStore
from .strategies import STRATEGIES, strategy_job

log = logging.getLogger(__name__)
STATE = "state.json"


def parse_budgets(round_budget, rounds: int | None) -> list[int]:
    """``"60"`` / ``60`` with ``rounds=5`` -> five rounds of 60; ``"60,60,120"`` -> three rounds."""
    try:
        budgets = [int(b) for b in str(round_budget).split(",")] if not isinstance(round_budget, (list, tuple)) \
            else [int(b) for b in round_budget]
    except ValueError:
        budgets = []
    check(bool(budgets) and min(budgets) >= 1, "round_budget", "loop", "a count or counts 'B1,B2,...' >= 1",
          round_budget)
    if rounds is None:
        return budgets
    check(isinstance(rounds, int) and rounds >= 1, "rounds", "loop", "an int >= 1", rounds)
    if len(budgets) == 1:
        return budgets * rounds
    check(len(budgets) == rounds, "rounds", "loop", f"{len(budgets)} (one per --round-budget entry) or unset", rounds)
    return budgets


def parse_refresh(refresh: str) -> tuple[str, int | None]:
    if refresh in ("never", "logme"):
        return refresh, None
    if refresh.startswith("at-labels:") and refresh[10:].isdigit() and int(refresh[10:]) >= 1:
        return "at-labels", int(refresh[10:])
    raise ParameterError(f"The 'refresh' parameter of loop must be 'never', 'logme' or 'at-labels:N'. "
                         f"Got {refresh!r} instead.")


class _Account:
    """Wall time of each stage x the workers it reserves, as CPU or GPU seconds: an estimate (the proxy
    training inside ``select`` runs on the driver but is counted at the round's rate)."""

    def __init__(self, cost: dict):
        self.cost = cost

    def time(self, stage: str, workers: int, gpu: bool, fn, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        seconds = (time.perf_counter() - start) * workers
        key = "gpu_seconds" if gpu else "cpu_seconds"
        per = self.cost.setdefault(key, {})
        per[stage] = round(per.get(stage, 0.0) + seconds, 2)
        return out


def _one_writer(fn):
    """Hold the lease of the loop's ``state`` for the whole call: one loop writes a state at a time."""
    @functools.wraps(fn)
    def locked(*args, **kwargs):
        if "state" not in kwargs:
            return fn(*args, **kwargs)
        state = storage.output_uri(kwargs["state"], "state")
        with protocol.lease(state, "loop"):
            return fn(*args, **{**kwargs, "state": state})
    return locked


@_one_writer
def loop(store, *, state: str, round_budget, rounds: int | None = None, strategy: str = "margin",
         first: str = "activeft", refresh: str = "never", refresh_mode: str = "lp-ft",
         refresh_epochs: int | None = None, final: str = "auto",
         final_threshold: int = 100, oracle: str | None = None, labels=None, eval_store=None, num_workers: int = 1,
         use_gpu: bool = False, seed: int = 0, proxy_epochs: int = 50, label_cost: float = 0.0,
         gpu_hour_cost: float = 3.0, cpu_hour_cost: float = 0.05, _stop_at: str | None = None) -> dict:
    """Run (or continue) the multi-round loop recorded in ``state``; return the state.

    Parameters
    ----------
    store : str or EmbeddingStore
        The pool's embeddings (the loop's first store).
    state : str
        Directory (local or ``s3://``) of the loop's state; re-running continues it.
    round_budget : int or str
        Labels per round: N (with ``rounds``) or ``"B1,B2,..."``.
    rounds : int, optional
        Number of rounds (with a single ``round_budget``).
    strategy : str, default="margin"
        Selection of rounds after the first: a proxy strategy (margin, entropy, confidence, badge,
        coreset) or any selection method (:func:`activeft.list_selectors`).
    first : str, default="activeft"
        The cold-start round: any selection method.
    refresh : {"never", "at-labels:N", "logme"}
        When to refresh the features (finetune the backbone and re-embed the pool).
    refresh_mode : {"lp-ft", "full"}
        How the backbone is finetuned for a refresh.
    refresh_epochs : int, optional
        Epochs of that finetuning (default: the finetune stage's).
    final : {"auto", "linear", "lp-ft", "full", "none"}
        The final model: auto is LP-FT below ``final_threshold`` labels per class, full above.
    final_threshold : int, default=100
        Labels per class from which auto picks full finetuning.
    oracle : "store-labels", optional
        Take labels from the store's ``label`` column (benchmarks).
    labels : str, optional
        The human-in-the-loop labels table (``id,label``) that grows round by round; each round
        exports its selection and stops.
    eval_store : str, optional
        A labeled store (e.g. the test set) to score a linear probe on after every round.
    num_workers : int, default=1
        Ray Train workers for scoring and finetuning.
    use_gpu : bool
        Use GPUs.
    seed : int, default=0
        Random seed.
    proxy_epochs : int, default=50
        Epochs of the proxy MLP each round.
    label_cost : float, default=0
        Dollars per label, for the cost account.
    gpu_hour_cost : float, default=3
        Dollars per GPU-hour, for the cost account.
    cpu_hour_cost : float, default=0.05
        Dollars per CPU-hour, for the cost account.

    Examples
    --------
    >>> import activeft, numpy as np, pyarrow as pa, pyarrow.parquet as pq, tempfile
    >>> d = tempfile.mkdtemp()
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat(np.arange(3), 100)
    >>> x = (np.eye(8)[y] * 3 + rng.normal(size=(300, 8))).astype("float32")
    >>> pq.write_table(pa.table({"id": [f"i{j}" for j in range(300)], "embedding": list(x), "label": y}),
    ...                f"{d}/e.parquet")
    >>> store = activeft.import_embeddings(f"{d}/e.parquet", f"{d}/store")
    >>> st = activeft.loop(store, state=f"{d}/state", round_budget=6, rounds=2, oracle="store-labels",
    ...                    first="random", final="none")
    >>> [len(r["selected"]) for r in st["rounds"]], st["cost"]["labels"]
    ([6, 6], 12)
    """
    owner = "loop"
    budgets = parse_budgets(round_budget, rounds)
    validate(PARAMS, {k: v for k, v in locals().items() if k in PARAMS}, owner)
    check((oracle is None) != (labels is None), "oracle", owner,
          "'store-labels' when no labels table is given (exactly one of oracle and labels)", oracle)
    policy, at_labels = parse_refresh(refresh)
    first_store = store if isinstance(store, EmbeddingStore) else EmbeddingStore(store)
    check(sum(budgets) <= len(first_store), "round_budget", owner,
          f"at most the pool's {len(first_store)} samples over all rounds", round_budget)
    if oracle and not first_store.has_labels:
        raise ConfigError(f"--oracle store-labels needs a 'label' column in the store {first_store.uri}")
    if policy != "never" and (first_store.model is None or "uri" not in first_store.columns):
        raise ConfigError(f"--refresh {refresh} finetunes and re-embeds the backbone, but the store "
                          f"{first_store.uri} holds imported embeddings (no backbone or images)")
    state = storage.output_uri(state, "state")
    config = {"store": first_store.uri, "budgets": budgets, "strategy": strategy, "first": first, "refresh": refresh,
              "refresh_mode": refresh_mode, "refresh_epochs": refresh_epochs, "final": final,
              "final_threshold": final_threshold, "oracle": oracle,
              "labels": labels if labels is None else str(labels), "seed": seed, "proxy_epochs": proxy_epochs,
              "eval_store": str(eval_store) if eval_store else None}
    st = _load(state, config)
    account = _Account(st["cost"])
    for r, budget in enumerate(budgets):
        if r == len(st["rounds"]):
            st["rounds"].append({"round": r, "budget": budget, "status": "new"})
        rec = st["rounds"][r]
        if rec["status"] == "labeled":
            continue
        given = _labels(state, st, labels, oracle)
        if rec["status"] == "new":
            store = EmbeddingStore(st["store"])
            if r > 0:
                _maybe_refresh(st, rec, r, given, policy, at_labels, refresh_mode, refresh_epochs, state, account,
                               num_workers, use_gpu)
                store = EmbeddingStore(st["store"])
            rec["strategy"] = first if r == 0 else strategy
            rec["store"] = store.uri
            rec["selected"] = account.time("select", num_workers, use_gpu, _select, store, rec, given, budget,
                                           seed + r, proxy_epochs, num_workers, use_gpu)
            rec["status"] = "selected"
            _save(state, st, _stop_at, "selected")
        if rec["status"] == "selected":
            uri = storage.join(state, f"round-{r}", "export")
            if oracle:
                truth = first_store.take(first_store.rows_of(rec["selected"]), ["id", "label"])
                _append_labels(state, truth)
            elif not storage.exists(storage.join(uri, "export.json")):
                _export(first_store, rec["selected"], uri)
            given = _labels(state, st, labels, oracle)
            missing = sorted(set(rec["selected"]) - set(given.column("id").to_pylist()))
            if missing:  # only with a labels table: the oracle has just answered
                log.info("loop: round %d waits for %d labels (e.g. %s); send %s to annotators, then re-run",
                         r, len(missing), missing[0], uri)
                _save(state, st)
                return st
            if eval_store:
                rec["eval_accuracy"] = account.time("evaluate", 1, False, _probe, EmbeddingStore(st["store"]), given,
                                                    st.get("eval_store") or eval_store)
            rec["labels"] = given.num_rows
            rec["status"] = "labeled"
            metrics.set("activeft_loop_round", r + 1, stage="loop")
            log.info("loop: round %d done: %d labels%s", r, given.num_rows,
                     f", probe top-1 {rec['eval_accuracy']:.4f}" if "eval_accuracy" in rec else "")
            _save(state, st, _stop_at, "labeled")
    if final != "none" and st.get("final") is None:
        given = _labels(state, st, labels, oracle)
        mode = _final_mode(first_store, given, final, final_threshold)
        from ..finetune import finetune

        run_dir = storage.join(state, "final")
        info = account.time("final", num_workers, use_gpu, finetune, first_store, train=given, output=run_dir,
                            mode=mode, val_store=eval_store, num_workers=num_workers, use_gpu=use_gpu, seed=seed,
                            resume=storage.has_entries(run_dir))
        st["final"] = {"mode": mode, "run": run_dir, "val_accuracy": info["final_val_accuracy"]}
    _settle_cost(st, label_cost, gpu_hour_cost, cpu_hour_cost)
    _save(state, st)
    return st


PARAMS = declared(loop, {
    "store": STORE, "state": TEXT,
    "round_budget": parsed(lambda v: parse_budgets(v, None), "a count >= 1 or counts 'B1,B2,...'", int | str),
    "rounds": optional(integer(1)), "strategy": one_of(*STRATEGIES, *list_selectors()),
    "first": one_of(*list_selectors()),
    "refresh": parsed(parse_refresh, "'never', 'logme' or 'at-labels:N'"),
    "refresh_mode": one_of("lp-ft", "full"), "refresh_epochs": optional(integer(1)),
    "final": one_of("auto", "linear", "lp-ft", "full", "none"), "final_threshold": integer(1),
    "oracle": optional(one_of("store-labels")), "labels": optional(TABLE), "eval_store": optional(STORE),
    "num_workers": integer(1), "use_gpu": BOOL, "seed": integer(), "proxy_epochs": integer(1),
    "label_cost": number(0), "gpu_hour_cost": number(0), "cpu_hour_cost": number(0)})


def _load(state: str, config: dict) -> dict:
    uri = storage.join(state, STATE)
    if not storage.exists(uri):
        storage.check_writable(state)
        return {**protocol.header(), "config": config, "store": config["store"],
                "stores": [config["store"]], "rounds": [], "final": None, "cost": {"labels": 0}}
    st = storage.read_json(uri)
    before = {k: v for k, v in st["config"].items() if k != "budgets"}
    now = {k: v for k, v in config.items() if k != "budgets"}
    done = st["config"]["budgets"]
    diff = protocol.changes(before, now)
    if diff is None and config["budgets"][:len(done)] != done[:len(config["budgets"])]:
        diff = protocol.changes({"budgets": done}, {"budgets": config["budgets"]})
    if diff:
        raise ConfigError(f"state {state} was started with a different config {diff}; "
                          "use another --state, or the same options (more rounds may be added)")
    st["config"]["budgets"] = config["budgets"]
    return st


def _save(state: str, st: dict, stop_at: str | None = None, step: str | None = None) -> None:
    storage.write_json(storage.join(state, STATE), st)
    if stop_at is not None and stop_at == step:  # test hook: stop right after this step was saved
        raise RuntimeError(f"loop stopped after step {step!r} (test hook)")


def _labels(state: str, st: dict, labels, oracle) -> pa.Table:
    """All labels so far: the loop's own file (oracle) or the user's table, restricted to selected ids."""
    selected = [i for rec in st["rounds"] for i in rec.get("selected", [])]
    if oracle:
        uri = storage.join(state, "labels.parquet")
        table = storage.read_parquet(uri) if storage.exists(uri) else None
    else:
        table = read_labels(labels) if storage.exists(str(labels)) else None
    if table is None:
        return pa.table({"id": pa.array([], pa.string()), "label": pa.array([], pa.int64())})
    keep = pc.is_in(table.column("id"), pa.array(selected, pa.string()))
    return table.filter(keep).select(["id", "label"])


def _append_labels(state: str, truth: pa.Table) -> None:
    uri = storage.join(state, "labels.parquet")
    old = storage.read_parquet(uri) if storage.exists(uri) else None
    if old is not None:  # a stop between this write and the round's saved status must not add them twice
        truth = truth.filter(pc.invert(pc.is_in(truth.column("id"), old.column("id"))))
    table = truth if old is None else pa.concat_tables([old, truth.cast(old.schema)])
    storage.write_parquet(uri, table)


def _select(store: EmbeddingStore, rec: dict, given: pa.Table, budget: int, seed: int, epochs: int,
            num_workers: int, use_gpu: bool) -> list[str]:
    labeled = given.column("id").to_pylist()
    if rec["strategy"] in list_selectors():
        sel = select(store, budget, method=rec["strategy"], exclude=labeled or None, seed=seed,
                     num_workers=num_workers, use_gpu=use_gpu)
        return sel.ids
    x, y, classes = _labeled(store, given)
    start = time.perf_counter()
    proxy = train_mlp(x, y, len(classes), epochs=epochs, seed=seed)
    with torch.no_grad():
        rec["proxy"] = {"train_accuracy": float((proxy(x).argmax(1) == y).float().mean()), "classes": len(classes),
                        "seconds": round(time.perf_counter() - start, 3)}
    dims = (x.shape[1], len(classes), proxy.fc1.out_features)
    job = functools.partial(strategy_job, rec["strategy"], {k: v.cpu() for k, v in proxy.state_dict().items()}, dims,
                            budget, store.rows_of(labeled).tolist(), seed)
    chosen = run(job, store, num_workers=num_workers, use_gpu=use_gpu)["rows"]
    return store.take(chosen, ["id"]).column("id").to_pylist()


def _maybe_refresh(st, rec, r, given, policy, at_labels, mode, epochs, state, account, num_workers, use_gpu) -> None:
    if policy == "never":
        return
    store = EmbeddingStore(st["store"])
    decision = {"policy": policy, "labels": given.num_rows, "refresh": False}
    if policy == "at-labels":
        decision["threshold"] = at_labels
        decision["refresh"] = given.num_rows >= at_labels and len(st["stores"]) == 1
    else:
        x, y, _ = _labeled(store, given)
        decision["logme"] = logme(x.numpy(), y.numpy())
        previous = next((q["refresh_decision"].get("logme") for q in reversed(st["rounds"][:r])
                         if q.get("refresh_decision", {}).get("store") == store.uri), None)
        decision["previous_logme"] = previous
        decision["refresh"] = previous is not None and decision["logme"] <= previous
    decision["store"] = store.uri
    rec["refresh_decision"] = decision
    if not decision["refresh"]:
        return
    from ..embed import embed
    from ..finetune import finetune

    run_dir = storage.join(state, f"refresh-{r}")
    account.time("refresh_finetune", num_workers, use_gpu, finetune, store, train=given, output=run_dir, mode=mode,
                 epochs=epochs, num_workers=num_workers, use_gpu=use_gpu, resume=storage.has_entries(run_dir))
    b = store.manifest["backbone"]
    like = {"model": b["model"], "pretrained": storage.join(run_dir, "model.safetensors"),
            "image_size": b.get("image_size"), "dtype": store.manifest["dtype"],
            "partition_size": store.manifest["partition_size"], "resume": True}
    # the embed stage sizes its own actor pool: its wall time is counted once
    new = account.time("refresh_embed", 1, use_gpu, embed, store.manifest["source"],
                       storage.join(state, "stores", f"round-{r}"), **like)
    if st["config"].get("eval_store"):
        old_eval = EmbeddingStore(st.get("eval_store") or st["config"]["eval_store"])
        st["eval_store"] = account.time("refresh_embed", 1, use_gpu, embed, old_eval.manifest["source"],
                                        storage.join(state, "stores", f"eval-round-{r}"), **like).uri
    st["store"] = new.uri
    st["stores"].append(new.uri)
    log.info("loop: round %d refreshed the features (%s): new store %s", r, decision, new.uri)


def _labeled(store: EmbeddingStore, given: pa.Table) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Embeddings and class indices of the labeled ids, and the class map."""
    classes = class_map(given.column("label"))
    x = torch.from_numpy(store.embeddings_at(store.rows_of(given.column("id").to_pylist())))
    return x, torch.from_numpy(class_indices(given.column("label"), classes)), classes


def _probe(store: EmbeddingStore, given: pa.Table, eval_store) -> float:
    """Top-1 on ``eval_store`` of the linear probe trained on all labels so far."""
    from ..finetune import accuracy, validation_set
    from ..models.heads import train_linear

    x, y, classes = _labeled(store, given)
    source, rows, target = validation_set(store, None, eval_store, classes)
    return accuracy(train_linear(x, y, len(classes)), source.embeddings_of(rows), target)


def _final_mode(store: EmbeddingStore, given: pa.Table, final: str, threshold: int) -> str:
    if final != "auto":
        return final
    if store.model is None or "uri" not in store.columns:
        log.info("loop: the store holds imported embeddings: the final model is the linear probe")
        return "linear"
    per_class = given.num_rows / max(1, len(class_map(given.column("label"))))
    return "lp-ft" if per_class < threshold else "full"


def _export(store: EmbeddingStore, ids: list[str], uri: str) -> None:
    from ..select import Selection

    table = store.take(store.rows_of(ids), [c for c in ("id", "uri") if c in store.columns])
    table = table.append_column("rank", pa.array(np.arange(len(ids), dtype=np.int32)))
    export(Selection(ids, table, {}, None), uri)


def _settle_cost(st: dict, label_cost: float, gpu_hour_cost: float, cpu_hour_cost: float) -> None:
    cost = st["cost"]
    cost["labels"] = sum(len(r.get("selected", [])) for r in st["rounds"] if r["status"] == "labeled")
    gpu_h = sum(cost.get("gpu_seconds", {}).values()) / 3600
    cpu_h = sum(cost.get("cpu_seconds", {}).values()) / 3600
    cost["dollars"] = {"labeling": round(cost["labels"] * label_cost, 2), "gpu": round(gpu_h * gpu_hour_cost, 4),
                       "cpu": round(cpu_h * cpu_hour_cost, 4)}
    cost["dollars"]["total"] = round(sum(cost["dollars"].values()), 4)
    cost["prices"] = {"label": label_cost, "gpu_hour": gpu_hour_cost, "cpu_hour": cpu_hour_cost}
