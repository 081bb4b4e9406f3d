"""The loop stage: multi-round active learning through a proxy (ASVP; Wen, Pizarro, Williams, TMLR 2024).

Official code: github.com/ZiTingW/asvp. Each round trains the proxy (ASVP's MLP, from scratch, on
the labeled embeddings: :func:`activeft.models.heads.train_mlp`), scores the unlabeled pool on the sharded
engine and selects the round's budget with a strategy (:mod:`.strategies`, or any selection
method through :func:`activeft.select`); the first round has no labels, so it uses a selection
method (ActiveFT by default: cold start) instead of the official code's random. Before a round,
a refresh policy (:mod:`.refresh`) may refresh the features (ASVP's "aligned selection").

Final model, ``auto``: LP-FT below ``final_threshold`` labels per class (100 by default), full
finetuning from there. ASVP finds LP-FT better "when the number of labeled samples is small"
and finetuning necessary "when more labels are available" but gives no number: 100 is our
choice, not ASVP's, and not measured yet (no GPU here); users can move it. A store of imported
embeddings has no backbone to finetune: the final model is then the linear probe.

The state is a stage output (:mod:`activeft.io.protocol`: one writer, the settings recorded and a
change refused, naming it), and so is each round; :mod:`.state` holds their records::

    STATE/                  the loop: _work/config.json holds its settings (not the budgets)
      state.json            marker: what the last call returned (rounds, stores, final model, cost)
      round-N/              round N: _work/config.json holds its budget
        refresh/            a refresh: the backbone finetuned on the labels so far (finetune stage)
        store/, eval-store/ the pool and the eval store re-embedded with it (embed stage)
        selected.json       the selection: ids, strategy, store, proxy metrics, refresh decision, cost
        labels.parquet      the oracle's answers (oracle="store-labels")
        export/             the selection for annotators (labels table: CSV + Label Studio)
        round.json          marker: the round is labeled (label count, probe top-1, cost)
      final/round-N/        the final model on the labels of rounds 0..N (finetune stage)

A stop at any point resumes there; more rounds (``rounds``, or more ``round_budget`` entries)
continue a finished loop, whose other settings and started rounds' budgets are fixed. With
``labels`` (human in the loop) each round exports its selection and the call returns until the
labels table covers it (the round stays ``selected``); with ``oracle="store-labels"`` the store's
``label`` column answers at once (benchmarks). The cost account is ASVP's total cost, labeling
plus compute (:mod:`.cost`).
"""

from __future__ import annotations

from ..errors import ConfigError, check
from ..io import protocol, storage
from ..io.store import open_store
from ..params import BOOL, STORE, TABLE, TEXT, integer, number, one_of, optional, parsed
from ..select import list_selectors
from ..stages import Command, Section, stage
from .labels import Labels
from .refresh import list_policies, parse_refresh
from .rounds import Setup, final_model, finetunable, play
from .state import LABELED, LOOP, LoopState
from .strategies import STRATEGIES


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


def _summary(st: dict, values: dict) -> str:
    done = sum(r["status"] == LABELED for r in st["rounds"])
    return (f"{values['state']}: {done} of {len(st['config']['budgets'])} rounds done, {st['cost']['labels']} "
            f"labels; final model: {st['final'] and st['final']['run']}")


@stage({
    "store": STORE, "state": TEXT,
    "round_budget": parsed(lambda v: parse_budgets(v, None), "a count >= 1 or counts 'B1,B2,...'", int | str),
    "rounds": optional(integer(1)), "strategy": one_of(*STRATEGIES, *list_selectors()),
    "first": one_of(*list_selectors()),
    "refresh": parsed(parse_refresh, "one of " + ", ".join(list_policies()), choices=list_policies),
    "refresh_mode": one_of("lp-ft", "full"), "refresh_epochs": optional(integer(1)),
    "final": one_of("auto", "linear", "lp-ft", "full", "none"), "final_threshold": integer(1),
    "final_labels": one_of("labels", "labelprop"),
    "oracle": optional(one_of("store-labels")), "labels": optional(TABLE), "eval_store": optional(STORE),
    "num_workers": integer(1), "use_gpu": BOOL, "seed": integer(), "proxy_epochs": integer(1),
    "label_cost": number(0), "gpu_hour_cost": number(0), "cpu_hour_cost": number(0)},
       command=Command("loop", arguments=("store",), summary=_summary, example="activeft loop stores/pool --state "
                       "loops/l1 --round-budget 1000 --rounds 5 --labels labels.csv"),
       section=Section("loop", fixed=("store", "state"), extra={"store": (str, "{output}/store"),
                                                           "state": (str, "{output}/loop")}))
def loop(store, *, state: str, round_budget, rounds: int | None = None, strategy: str = "margin",
         first: str = "activeft", refresh: str = "never", refresh_mode: str = "lp-ft",
         refresh_epochs: int | None = None, final: str = "auto", final_threshold: int = 100,
         final_labels: str = "labels", oracle: str | None = None, labels=None, eval_store=None, num_workers: int = 1,
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
    final_labels : str, default="labels"
        What the final model trains on: the labels, or (``labelprop``) every pool row labeled by label
        propagation from them (``activeft.calibrate(method="labelprop")``), weighted by confidence.
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
    state = storage.output_uri(state, "state")
    check((oracle is None) != (labels is None), "oracle", owner,
          "'store-labels' when no labels table is given (exactly one of oracle and labels)", oracle)
    policy, pool = parse_refresh(refresh), open_store(store)
    check(sum(budgets) <= len(pool), "round_budget", owner, f"at most the pool's {len(pool)} samples over all rounds",
          round_budget)
    if oracle and not pool.has_labels:
        raise ConfigError(f"--oracle store-labels needs a 'label' column in the store {pool.uri}")
    if policy.refreshes and not finetunable(pool):
        raise ConfigError(f"--refresh {refresh} finetunes and re-embeds the backbone, but the store "
                          f"{pool.uri} holds imported embeddings (no backbone or images)")
    eval_uri = eval_store and open_store(eval_store).uri
    settings = {"store": pool.uri, "strategy": strategy, "first": first, "refresh": refresh,
                "refresh_mode": refresh_mode, "refresh_epochs": refresh_epochs, "final": final,
                "final_threshold": final_threshold, "final_labels": final_labels, "oracle": oracle,
                "labels": labels if labels is None else str(labels), "seed": seed, "proxy_epochs": proxy_epochs,
                "eval_store": eval_uri}
    setup = Setup(state, pool, Labels(state, pool, labels, oracle is not None), policy, strategy=strategy, first=first,
                  refresh_mode=refresh_mode, refresh_epochs=refresh_epochs, eval_store=eval_uri, final=final,
                  final_threshold=final_threshold, final_labels=final_labels, seed=seed, proxy_epochs=proxy_epochs,
                  num_workers=num_workers, use_gpu=use_gpu, stop_at=_stop_at)
    st = LoopState({**settings, "budgets": budgets},
                   {"label": label_cost, "gpu_hour": gpu_hour_cost, "cpu_hour": cpu_hour_cost})
    with protocol.writing(state, LOOP, settings, resume=True) as out:
        for r, budget in enumerate(budgets):
            st.rounds.append(play(setup, st, r, budget))
            if st.rounds[-1].status != LABELED:
                break
        else:
            st.final = final_model(setup, st)
        return out.commit(st.to_json())


