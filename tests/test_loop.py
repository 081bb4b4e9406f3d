"""The ASVP loop: strategies, LogME, resume at every step, human in the loop, feature refresh, cost."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import activeft
from activeft.engine import Collectives, Pool
from activeft.loop.refresh import parse_refresh
from activeft.loop.strategies import STRATEGIES, select_with_proxy
from activeft.models.heads import train_mlp
from activeft.models.logme import logme

pytestmark = pytest.mark.timeout(300)


def labeled_store(path, n_per=80, k=4, d=12, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 3
    y = np.repeat(np.arange(k), n_per)
    x = (centres[y] + rng.normal(size=(len(y), d))).astype(np.float32)
    pq.write_table(pa.table({"id": [f"s{i:04d}" for i in range(len(y))], "embedding": list(x), "label": y}),
                   path / "emb.parquet")
    return activeft.import_embeddings(str(path / "emb.parquet"), str(path / "store"))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return labeled_store(tmp_path_factory.mktemp("loop"))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategies_return_budget_unique_unlabeled_rows(store, strategy):
    x = torch.from_numpy(store.embeddings())
    y = torch.from_numpy(np.array(store.read(columns=["label"]).column("label").to_pylist()))
    labeled = np.arange(0, 320, 16)  # 20 labeled rows, 5 per class
    proxy = train_mlp(x[labeled], y[labeled], 4, epochs=20)
    rows = select_with_proxy(Pool(x, 0, len(x)), Collectives(), proxy, strategy, 25, labeled)
    assert len(rows) == 25 and len(set(rows.tolist())) == 25
    assert not set(rows.tolist()) & set(labeled.tolist()) and rows.min() >= 0 and rows.max() < 320


def icml_logme(f, y):
    """The ICML 2021 iteration of the official code (``each_evidence``), transcribed directly in numpy."""
    fh, ft = f, f.T
    d, n = ft.shape
    v, s, vh = np.linalg.svd(ft @ fh, full_matrices=True)
    out = []
    for c in range(int(y.max()) + 1):
        y_ = (y == c).astype(np.float64)
        alpha, beta = 1.0, 1.0
        lam = alpha / beta
        tmp = vh @ (ft @ y_)
        for _ in range(11):
            gamma = (s / (s + lam)).sum()
            m = v @ (tmp * beta / (alpha + beta * s))
            alpha_de = (m * m).sum()
            alpha = gamma / (alpha_de + 1e-5)
            beta_de = ((y_ - fh @ m) ** 2).sum()
            beta = (n - gamma) / (beta_de + 1e-5)
            new_lam = alpha / beta
            if np.abs(new_lam - lam) / lam < 0.01:
                break
            lam = new_lam
        evidence = (d / 2.0 * np.log(alpha) + n / 2.0 * np.log(beta) - 0.5 * np.sum(np.log(alpha + beta * s))
                    - beta / 2.0 * (beta_de + 1e-5) - alpha / 2.0 * (alpha_de + 1e-5) - n / 2.0 * np.log(2 * np.pi))
        out.append(evidence / n)
    return float(np.mean(out))


@pytest.mark.parametrize("n,d", [(200, 16), (40, 64)])
def test_logme_equals_the_official_iteration(n, d):
    rng = np.random.default_rng(n)
    y = rng.integers(0, 4, n)
    f = np.eye(4)[y] @ rng.normal(size=(4, d)) + rng.normal(size=(n, d))
    assert logme(f, y) == pytest.approx(icml_logme(f, y), rel=2e-3)
    assert logme(f, y) > logme(rng.normal(size=(n, d)), y)  # informative features score higher


def run_loop(store, state, **kw):
    args = {"round_budget": 8, "rounds": 3, "strategy": "margin", "first": "random", "oracle": "store-labels",
            "final": "none", "eval_store": store.uri, **kw}
    return activeft.loop(store, state=str(state), **args)


def test_loop_resumes_after_a_stop_at_every_step(store, tmp_path):
    clean = run_loop(store, tmp_path / "clean")
    for step in ("selected", "labeled", "selected", "labeled"):
        with pytest.raises(RuntimeError, match=f"after step '{step}'"):
            run_loop(store, tmp_path / "stopped", _stop_at=step)
    resumed = run_loop(store, tmp_path / "stopped")
    for a, b in zip(clean["rounds"], resumed["rounds"], strict=True):
        assert a["selected"] == b["selected"] and a["eval_accuracy"] == b["eval_accuracy"]
    assert resumed["cost"]["labels"] == 24 and resumed["rounds"][2]["proxy"]["classes"] == 4
    ids = [i for r in resumed["rounds"] for i in r["selected"]]
    assert len(set(ids)) == 24  # no id selected twice across rounds
    assert resumed["rounds"][0]["eval_accuracy"] > 0.9  # separable classes: 8 random labels make a good probe
    assert all(0 <= r["eval_accuracy"] <= 1 for r in resumed["rounds"])
    assert resumed["cost"]["cpu_seconds"]["select"] > 0 and "dollars" in resumed["cost"]
    assert json.loads((tmp_path / "stopped" / "state.json").read_text())["rounds"] == resumed["rounds"]
    assert json.loads((tmp_path / "stopped" / "round-2" / "round.json").read_text())["status"] == "labeled"
    more = run_loop(store, tmp_path / "stopped", rounds=4)  # more rounds later: continues, keeps the first three
    assert [r["selected"] for r in more["rounds"][:3]] == [r["selected"] for r in resumed["rounds"]]
    assert len(more["rounds"]) == 4 and more["cost"]["labels"] == 32
    with pytest.raises(activeft.errors.OutputExistsError, match="different config \\(strategy\\)"):
        run_loop(store, tmp_path / "stopped", strategy="entropy")
    with pytest.raises(activeft.errors.OutputExistsError,
                       match=r"round-1 was started with a different config \(budget\)"):  # a started round's budget
        run_loop(store, tmp_path / "stopped", round_budget="8,9,8,8", rounds=None)


def test_human_in_the_loop_stops_and_continues(store, tmp_path):
    labels_csv = tmp_path / "labels.csv"
    truth = dict(zip(store.ids(), store.read(columns=["label"]).column("label").to_pylist(), strict=True))
    args = {"round_budget": 6, "rounds": 2, "strategy": "coreset", "first": "activeft", "final": "none",
            "labels": str(labels_csv)}
    st = activeft.loop(store, state=str(tmp_path / "s"), **args)
    assert [r["status"] for r in st["rounds"]] == ["selected"]
    exported = (tmp_path / "s" / "round-0" / "export" / "selection.csv").read_text().splitlines()[1:]
    assert [line.split(",")[0].strip('"') for line in exported] == st["rounds"][0]["selected"]
    assert activeft.loop(store, state=str(tmp_path / "s"), **args)["rounds"][0]["status"] == "selected"  # still waits
    answered = st["rounds"][0]["selected"]
    labels_csv.write_text("id,label\n" + "".join(f"{i},{truth[i]}\n" for i in answered))
    st = activeft.loop(store, state=str(tmp_path / "s"), **args)
    assert [r["status"] for r in st["rounds"]] == ["labeled", "selected"]
    answered += st["rounds"][1]["selected"]
    labels_csv.write_text("id,label\n" + "".join(f"{i},{truth[i]}\n" for i in answered))
    st = activeft.loop(store, state=str(tmp_path / "s"), **args)
    assert [r["status"] for r in st["rounds"]] == ["labeled", "labeled"] and st["cost"]["labels"] == 12


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_refresh_creates_a_new_store_and_keeps_the_labels(stripes_store, tmp_path):
    store = stripes_store[0]
    st = activeft.loop(store, state=str(tmp_path / "state"), round_budget=4, rounds=2, strategy="margin",
                       first="random", refresh="at-labels:4", refresh_mode="lp-ft", refresh_epochs=1,
                       oracle="store-labels", final="none", seed=1)  # (seed 1: both classes in round 0)
    assert len(st["stores"]) == 2 and st["store"] == st["stores"][1] != store.uri
    refreshed = activeft.EmbeddingStore(st["store"])
    assert sorted(refreshed.ids()) == sorted(store.ids()) and refreshed.backbone["weights"]["sha256"]
    weights = str(tmp_path / "state" / "round-1" / "refresh" / "model.safetensors")
    assert refreshed.embed_settings == {**store.embed_settings, "pretrained": weights}  # as the pool was, new weights
    assert store.embed_settings["batch_size"] == 8 and store.embed_settings["image_size"] == 32
    assert not np.allclose(refreshed.embeddings(), store.embeddings())  # the finetuned backbone embeds differently
    decision = st["rounds"][1]["refresh_decision"]
    assert decision == {"policy": "at-labels", "labels": 4, "refresh": True, "threshold": 4, "store": store.uri}
    assert st["rounds"][1]["store"] == st["store"] and st["cost"]["labels"] == 8
    assert not set(st["rounds"][0]["selected"]) & set(st["rounds"][1]["selected"])  # the labels were kept
    assert "refresh_finetune" in st["cost"]["cpu_seconds"] and "refresh_embed" in st["cost"]["cpu_seconds"]


def test_logme_refresh_policy_and_bad_options(store, tmp_path):
    with pytest.raises(activeft.errors.ConfigError, match="holds imported embeddings"):
        run_loop(store, tmp_path / "a", refresh="logme")
    with pytest.raises(activeft.errors.ParameterError, match="at-labels:N, logme, never"):  # the registered policies
        run_loop(store, tmp_path / "b", refresh="sometimes")
    with pytest.raises(activeft.errors.ParameterError, match="exactly one of oracle and labels"):
        run_loop(store, tmp_path / "c", labels="x.csv")
    with pytest.raises(activeft.errors.ParameterError, match="'strategy' parameter of loop must be one of margin"):
        run_loop(store, tmp_path / "d", strategy="typicality")  # not a strategy nor a selector


def test_refresh_policies_parse_from_their_registry():
    assert parse_refresh("at-labels:40").threshold == 40 and not parse_refresh("never").refreshes
    with pytest.raises(activeft.errors.ParameterError, match=r"^unknown refresh policy 'logm'; available: "
                                                             r"at-labels:N, logme, never \(did you mean 'logme'\?\)$"):
        parse_refresh("logm")
    for bad in ("at-labels:0", "at-labels", "logme:3"):
        with pytest.raises(activeft.errors.ParameterError, match="'refresh' parameter of loop must be"):
            parse_refresh(bad)
