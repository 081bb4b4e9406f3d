"""Selection: ActiveFT against the official code, the baselines, sharding, resume and bad input.

The contract every registered selector meets runs over :func:`activeft.list_selectors`, each with
the ``test_params`` its class declares: a new selector is covered by adding its one module (and its
import line), as ``test_a_new_selector_needs_one_class`` shows with a throwaway one.
"""

import functools
import importlib
import json
import os
import re
import typing

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from reference import official_loss, official_select

import activeft
from activeft.config import load_config
from activeft.engine import Collectives, Pool, greedy_unique, kmeans, search
from activeft.errors import ActiveftError, ConfigError, OutputExistsError, ParameterError
from activeft.params import Param, Rule, integer, validate
from activeft.select import get_selector, list_selectors, registry, resolve_budget
from activeft.select.activeft import loss_and_grad
from activeft.select.registry import Result, Selector, register_selector

pytestmark = pytest.mark.timeout(240)


def clustered(n_per=120, k=6, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 3
    x = np.concatenate([c + rng.normal(size=(n_per, d)) for c in centres]).astype(np.float32)
    return x, np.repeat(np.arange(k), n_per)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("pool")
    x, labels = clustered()
    ids = [f"img{i:04d}" for i in range(len(x))]
    pq.write_table(pa.table({"id": ids, "embedding": list(x), "label": labels}), d / "emb.parquet")
    return activeft.import_embeddings(str(d / "emb.parquet"), str(d / "store"), partition_size=250)


def unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


@pytest.mark.parametrize("chunk_bytes", [search.CHUNK_BYTES, 4096])
@pytest.mark.parametrize("balance", [1.0, 0.3])
def test_loss_and_gradient_equal_official_formula(monkeypatch, chunk_bytes, balance):
    monkeypatch.setattr(search, "CHUNK_BYTES", chunk_bytes)
    x, theta = unit(500, 24, 0), torch.randn(40, 24, generator=torch.Generator().manual_seed(1))
    ref_theta = theta.double().requires_grad_()
    ref = official_loss(x.double(), ref_theta, 0.07, balance)
    ref.backward()
    loss, grad = loss_and_grad(Pool(x, 0, len(x)), Collectives(), theta, x[:0], None, len(x), 0.07, balance)
    assert loss == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(grad.double(), ref_theta.grad, rtol=1e-4, atol=1e-6)

    rows = torch.tensor([3, 17, 250, 499, 42])  # a mini-batch step: the same formula on those rows
    ref_theta.grad = None
    official_loss(x[rows].double(), ref_theta, 0.07, balance).backward()
    loss, grad = loss_and_grad(Pool(x, 0, len(x)), Collectives(), theta, x[:0], rows, len(rows), 0.07, balance)
    torch.testing.assert_close(grad.double(), ref_theta.grad, rtol=1e-4, atol=1e-6)


def test_whole_run_matches_official_loop(store):
    sel = activeft.select(store, 18, method="activeft", iterations=80, seed=3)
    x = torch.from_numpy(store.embeddings())
    ours = sorted(store.rows_of(sel.ids).tolist())
    assert ours == official_select(x, sel.info["init_rows"], iterations=80)


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_nearest_torch_chunks_equal_faiss(monkeypatch, metric):
    monkeypatch.setattr(search, "CHUNK_BYTES", 4096)  # many chunks: the path GPUs take
    x, c = unit(1000, 32, 1) * 3, unit(50, 32, 2) * 2
    i1, v1 = search.nearest(x, c, metric, backend="faiss")
    i2, v2 = search.nearest(x, c, metric, backend="torch")
    assert torch.equal(i1, i2) and torch.equal(v1, v2)
    best = (x @ c.T).argmax(1) if metric == "ip" else torch.cdist(x, c).argmin(1)
    assert torch.equal(i1, best)


def brute_greedy(x, c):
    taken, out = set(), []
    for row in torch.argsort(c @ x.T, dim=1, descending=True, stable=True):
        out.append(next(int(r) for r in row if int(r) not in taken))
        taken.add(out[-1])
    return out


def test_mapping_conflicts_resolve_in_centroid_order():
    x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    c = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1], [1.0, 0.05], [0.1, 1.0]]), dim=1)
    rows, sims = greedy_unique(Pool(x, 0, 4), Collectives(), c)
    assert rows.tolist() == [0, 1, 2]  # centroid 1 also wants sample 0; centroid 0 comes first
    assert sims[1] == pytest.approx(float(c[1] @ x[1]))
    rows, _ = greedy_unique(Pool(x, 0, 4), Collectives(), c, taken=[0])
    assert rows.tolist() == [1, 2, 3]
    # many centroids wanting the same few rows: rounds with growing candidate lists, same as the full sort
    x, c = unit(300, 8, 5), unit(60, 8, 6) * 0.1 + torch.tensor([1.0] + [0.0] * 7)
    rows, _ = greedy_unique(Pool(x, 0, 300), Collectives(), torch.nn.functional.normalize(c, dim=1), candidates=1)
    assert rows.tolist() == brute_greedy(x, torch.nn.functional.normalize(c, dim=1))


# ---- the contract over the registry: every selector, with the test_params its class declares ----------------------


def invalid_value(rule: Rule):
    """A value ``rule`` refuses (as scikit-learn's ``generate_invalid_param_val``): of the rule's own
    type where one is refused (below a bound, outside the choices), else of another type."""
    kinds = typing.get_args(rule.type) or (rule.type,)
    own = {int: [0, -1], float: [0.0, -1.0, 1.5], str: ["no-such-value"]}
    for value in [v for kind in kinds for v in own.get(kind, [])] + [-1, "no-such-value", object()]:
        if not rule.ok(value):
            return value
    raise AssertionError(f"no value found that a rule expecting {rule.expected} refuses")


def check_budget_contract(store, method, tmp_path):
    """``budget`` unique ids of the store, the same for the same seed, written as selection.*."""
    cls = get_selector(method)
    sel = activeft.select(store, 25, method=method, seed=7, output=str(tmp_path / "sel"), **cls.test_params)
    assert len(sel.ids) == 25 and len(set(sel.ids)) == 25
    assert set(sel.ids) <= set(store.ids())
    again = activeft.select(store, 25, method=method, seed=7, **cls.test_params)
    assert again.ids == sel.ids
    other = activeft.select(store, 25, method=method, seed=8, **cls.test_params)
    assert (other.ids == sel.ids) == cls.test_seed_free, "another seed, another selection (unless test_seed_free)"
    table = pq.read_table(tmp_path / "sel" / "selection.parquet")
    assert table.column("id").to_pylist() == sel.ids and table.column("rank").to_pylist() == list(range(25))
    assert (tmp_path / "sel" / "selection.csv").read_text().splitlines()[1] == f'"{sel.ids[0]}"'
    info = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert info["budget"] == 25 and info["pool_size"] == 720 and info["config"]["method"] == method
    assert 0 < info["coverage"] <= 1 and 0 < info["coverage_random"] <= 1
    assert min(info["seconds_select"], info["seconds_coverage"]) >= 0
    assert info["seconds_total"] >= info["seconds_select"] + info["seconds_coverage"] - 0.002  # (rounding)
    if method == "activeft":  # its phases, for the GPU timings
        phases = info["seconds_init"] + info["seconds_optimize"] + info["seconds_mapping"]
        assert min(info["seconds_init"], info["seconds_optimize"], info["seconds_mapping"]) >= 0
        assert info["seconds_select"] >= phases - 0.002


def check_bad_params(store, method):
    """Each declared parameter given a value its rule refuses, and an undeclared one: one line naming it."""
    cls = get_selector(method)
    validate(cls.params, cls.test_params, method, "method")  # the declared test_params are valid ones
    for name, p in cls.params.items():
        assert p.required or p.rule.ok(p.default), f"the default of {method}'s {name!r} breaks its own rule"
        bad = invalid_value(p.rule)
        with pytest.raises(ParameterError, match=f"^The '{name}' parameter of {method} ") as e:
            activeft.select(store, 5, method=method, **{name: bad})
        assert "\n" not in str(e.value), str(e.value)
    with pytest.raises(ParameterError, match=f"^The 'no_such_param' parameter does not apply to method {method}; "):
        activeft.select(store, 5, method=method, no_such_param=1)


@pytest.mark.parametrize("method", list_selectors())
def test_every_selector_gives_budget_unique_ids_deterministically(store, method, tmp_path):
    check_budget_contract(store, method, tmp_path)


@pytest.mark.parametrize("method", list_selectors())
def test_every_selector_refuses_each_bad_parameter_in_one_line(store, method):
    check_bad_params(store, method)


@pytest.mark.usefixtures("ray_session")
def test_two_workers_select_the_same_as_one(store):
    """Every selector declared worker-invariant, the mapping, the scores (neighbours, density, near-duplicate
    groups: ``activeft dedup``'s job), the coverage and ActiveDC's calibration (on Tukey-transformed rows), on
    a real Ray Train worker group of 2 (one group for all)."""
    from jobs import each_job, mapping_job, selectors_job, transformed_job

    from activeft.calibrate import activedc
    from activeft.runtime.runner import run
    from activeft.scores import _scores_job
    from activeft.select.coverage import coverage_job

    methods = [m for m in list_selectors() if get_selector(m).worker_invariant]
    job = functools.partial(selectors_job, methods, 20, 5)
    x = torch.from_numpy(store.embeddings())
    g = torch.Generator().manual_seed(0)
    # the mapping alone: 80 centroids crowding around 4 samples: most candidates are taken, lists run
    # past the frontier; the sequential greedy's rows on two workers
    c = x[torch.tensor([5, 300, 301, 700])].repeat(20, 1) + 0.02 * torch.randn(80, x.shape[1], generator=g)
    c = torch.nn.functional.normalize(c, dim=1)
    labeled = np.arange(0, len(x), 25)
    calibration = functools.partial(activedc._job, labeled, labeled % 3, 3,
                                    {"alpha": 0.7, "xi": 0.2, "samples_per_label": 2, "clusters": 3, "seed": 0,
                                     "emd_filter": True, "max_draws": 5, "kmeans_runs": 2})
    same = [functools.partial(_scores_job, 10, 0.01, 0.98, 0),
            functools.partial(coverage_job, list(range(0, 720, 9)), list(range(3, 720, 7))),
            functools.partial(transformed_job, functools.partial(activedc.tukey, lam=0.5), calibration)]
    one, *others = run(functools.partial(each_job, [job, *same]), store)
    two, mapping, *others_two = run(functools.partial(each_job, [job, functools.partial(mapping_job, c, 2), *same]),
                                    store, num_workers=2)
    assert mapping["rows"] == brute_greedy(x, c)
    assert len(others[0]["duplicates"]) == 36 and others_two[0] == others[0]
    assert others_two[1]["coverage"] == pytest.approx(others[1]["coverage"], abs=1e-6)
    assert others_two[2].pop("kmeans_inertia") == pytest.approx(others[2].pop("kmeans_inertia"), rel=1e-9)
    assert others_two[2] == others[2] and others[2]["rows"]  # ActiveDC: the same pseudo-labels
    for method in methods:
        assert two[method]["rows"] == one[method]["rows"], method
        for key, values in one[method]["history"].items():  # loss, inertia: the same run, step by step
            np.testing.assert_allclose(two[method]["history"][key], values, rtol=1e-6, err_msg=f"{method} {key}")


@pytest.fixture
def throwaway():
    """A selector that exists for one test: one class and its registration, no other edit anywhere."""

    @register_selector
    class Throwaway(Selector):
        """Every ``throwaway_stride``-th row that is not excluded."""

        name = "throwaway"
        params = {"throwaway_stride": Param(1, integer(1), "Take every stride-th free row (a test's selector).")}
        test_params = {"throwaway_stride": 3}
        test_seed_free = True

        def fit(self, pool, comm, budget, exclude, checkpoints) -> Result:
            free = np.setdiff1d(np.arange(pool.size), np.asarray(exclude))
            return Result(free[::self.throwaway_stride][:budget])

    try:
        yield Throwaway
    finally:
        registry._SELECTORS.pop(Throwaway.name, None)


def test_a_new_selector_needs_one_class(throwaway, store, tmp_path, capsys):
    from activeft.cli import main

    assert "throwaway" in list_selectors() and get_selector("throwaway") is throwaway
    assert main(["select", "--help"]) == 0
    assert "--throwaway-stride" in capsys.readouterr().out
    check_budget_contract(store, "throwaway", tmp_path)  # the registry-wide tests' checks hold for it
    check_bad_params(store, "throwaway")
    sel = activeft.select(store, 4, method="throwaway", throwaway_stride=2, exclude=store.ids()[:1])
    assert sel.ids == store.ids()[1:9:2]
    assert sel.info["config"]["method"] == "throwaway" and sel.info["config"]["throwaway_stride"] == 2
    config = tmp_path / "c.yaml"
    config.write_text(f"output: {tmp_path}/out\nselect: {{budget: 5, method: throwaway, "
                      f"params: {{throwaway_stride: 2}}}}\n")
    cfg = load_config(str(config))
    assert cfg.select.method == "throwaway" and cfg.select.params == {"throwaway_stride": 2}
    with pytest.raises(ConfigError, match="config key 'select.params': The 'throwaway_stride' parameter of throwaway"):
        load_config(str(config), ["select.params.throwaway_stride=0"])


def test_every_selector_parameter_is_a_select_option(capsys):
    from activeft.cli import main

    assert main(["select", "--help"]) == 0
    out = capsys.readouterr().out
    for method in list_selectors():
        for name in get_selector(method).params:
            assert "--" + name.replace("_", "-") in out, (method, name)
    # a method parameter named as one of select's own would never reach the method
    from activeft.stages import get_stage

    assert not set(get_stage("select").params) & {n for m in list_selectors() for n in get_selector(m).params}


def test_coverage_of_a_large_pool_is_a_fixed_sample_the_same_on_every_rank(monkeypatch):
    from sharding import sharded

    select_stage = importlib.import_module("activeft.select.coverage")
    x = torch.nn.functional.normalize(torch.randn(6000, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    rows = torch.arange(0, 6000, 300)
    exact = select_stage.coverage(Pool(x, 0, 6000), Collectives(), rows)
    monkeypatch.setattr(select_stage, "COVERAGE_ROWS", 1500)
    sims = (x @ x[rows].T).max(1).values.double()
    sampled = select_stage.coverage(Pool(x, 0, 6000), Collectives(), rows)
    assert exact == pytest.approx(float(sims.mean()), abs=1e-6) and sampled != exact
    assert abs(sampled - exact) < 4 * float(sims.std()) / 1500 ** 0.5  # within 4 standard errors
    three = sharded(lambda pool, comm: select_stage.coverage(pool, comm, rows), x, [0, 1000, 4096, 6000])
    assert three == pytest.approx([sampled] * 3, abs=1e-9)


def test_activeft_beats_random_coverage_and_loss_goes_down(store):
    sel = activeft.select(store, 12, method="activeft", iterations=150)
    history = sel.info["loss_history"]
    assert history[-1] < history[0]
    labels = np.array(store.read(columns=["label"]).column("label").to_pylist())
    picked = labels[store.rows_of(sel.ids)]
    assert len(set(picked.tolist())) == 6  # all six clusters covered with 12 picks
    assert sel.info["coverage"] > sel.info["coverage_random"]


@pytest.mark.parametrize("method", list_selectors())
def test_exclude_is_honoured(store, method, tmp_path):
    excluded = store.ids()[:120]  # the whole first cluster is labeled already
    pq.write_table(pa.table({"id": excluded}), tmp_path / "labeled.parquet")
    params = get_selector(method).test_params
    sel = activeft.select(store, 20, method=method, exclude=str(tmp_path / "labeled.parquet"), **params)
    assert not set(sel.ids) & set(excluded) and len(set(sel.ids)) == 20
    if method == "activeft":  # fixed centroids on the labeled cluster: new ones go elsewhere
        plain = activeft.select(store, 20, method=method, **params)
        near = lambda s: sum(i < 120 for i in store.rows_of(s.ids))  # noqa: E731
        assert near(plain) > 0 and near(sel) == 0
    with pytest.raises(ParameterError, match="budget 601 is larger than the pool of 720 rows minus 120 excluded"):
        activeft.select(store, 601, method=method, exclude=excluded)


def test_kmeans_inertia_within_one_percent_of_faiss(store):
    import faiss

    x = store.embeddings()
    init = x[np.random.default_rng(0).choice(len(x), 30, replace=False)]
    km = faiss.Kmeans(x.shape[1], 30, niter=20, max_points_per_centroid=10**6, seed=1)
    km.train(x, init_centroids=init.copy())
    faiss_inertia = float(km.index.search(x, 1)[0].sum())
    pool = Pool(torch.from_numpy(x), 0, len(x))
    from activeft.engine import lloyd

    centroids, history = lloyd(pool, Collectives(), torch.from_numpy(init), 20, 0.0, torch.Generator())
    ours = float(pool.x.sub(centroids[search.nearest(pool.x, centroids, "l2")[0]]).pow(2).sum())
    assert ours == pytest.approx(faiss_inertia, rel=0.01)
    c2, h2 = kmeans(pool, Collectives(), 30, iterations=20, seed=4)
    assert h2 == sorted(h2, reverse=True)  # Lloyd never increases the inertia


def test_kmeans_restarts_keep_the_lowest_inertia(store):
    three = activeft.select(store, 12, method="kmeans", restarts=3, seed=1, iterations=20)
    inertias, kept = three.info["restart_inertias"], three.info["restart_kept"]
    assert len(set(inertias)) == 3 and inertias[kept] == min(inertias)
    alone = activeft.select(store, 12, method="kmeans", seed=3 + kept, iterations=20)  # restart r: seed x 3 + r
    assert alone.ids == three.ids and alone.info["inertia_history"][-1] == inertias[kept]


def test_budget_parsing():
    assert resolve_budget("1%", 6000) == resolve_budget("0.01", 6000) == resolve_budget(0.01, 6000) == 60
    assert resolve_budget(60, 6000) == resolve_budget("60", 6000) == 60
    assert resolve_budget("0.5%", 1999) == 9  # rounded down as the official int(N * p * 0.01)
    for bad in (0, "0", -5, "abc", "0.0001%", 1.5):
        with pytest.raises(ParameterError, match="The 'budget' parameter of select must be"):
            resolve_budget(bad, 1000)


@pytest.mark.usefixtures("ray_session")
@pytest.mark.timeout(120)
def test_workers_the_cluster_cannot_give_fail_in_the_declared_time(store, tmp_path, monkeypatch):
    """Ray Train alone waits for a worker group forever; a run waits ACTIVEFT_WORKER_WAIT_S, then says so."""
    monkeypatch.setenv("ACTIVEFT_WORKER_WAIT_S", "3")  # the session's Ray has 2 CPUs
    with pytest.raises(ActiveftError, match=r"^waited 3 s for 3 Ray Train workers \(1 CPU each\) and the cluster "
                                            r"did not provide them: .*\(ACTIVEFT_WORKER_WAIT_S\)$"):
        activeft.select(store, 5, method="random", num_workers=3, output=str(tmp_path / "sel"))
    assert not os.path.exists(tmp_path / "sel" / "selection.json")
    monkeypatch.setenv("ACTIVEFT_WORKER_WAIT_S", "soon")
    with pytest.raises(ActiveftError, match=r"^ACTIVEFT_WORKER_WAIT_S='soon': expected a positive number"):
        activeft.select(store, 5, method="random", num_workers=2)


def test_resume_continues_a_stopped_run(store, tmp_path):
    params = dict(method="activeft", iterations=60, seed=2, checkpoint_every=10)
    clean = activeft.select(store, 15, **params)
    out = str(tmp_path / "sel")
    with pytest.raises(RuntimeError, match="injected failure"):
        activeft.select(store, 15, output=out, _fail_at=20, **params)
    assert not os.path.exists(os.path.join(out, "selection.json"))
    with pytest.raises(OutputExistsError, match="--resume"):
        activeft.select(store, 15, output=out, **params)
    with pytest.raises(OutputExistsError, match="different config .*seed=2"):
        activeft.select(store, 15, output=out, resume=True, **{**params, "seed": 3})
    resumed = activeft.select(store, 15, output=out, resume=True, **params)
    assert resumed.info["resumed_from_iteration"] == 20
    assert resumed.ids == clean.ids
    np.testing.assert_allclose(resumed.info["loss_history"], clean.info["loss_history"], rtol=1e-6)
    assert activeft.select(store, 15, output=out, resume=True, **params).ids == clean.ids  # finished: read back


def test_bad_inputs_one_line_each(store, tmp_path, capsys):
    from activeft.cli import main

    broken = tmp_path / "broken"
    os.makedirs(broken)
    for name in ("part-00000.parquet", "part-00001.parquet", "part-00002.parquet", "_manifest.json"):
        (broken / name).write_bytes(open(os.path.join(store.uri, name), "rb").read())
    mixed = tmp_path / "mixed"
    os.system(f"cp -r {broken} {mixed}")
    pq.write_table(pa.table({"id": ["z"] * 220, "embedding": pa.FixedSizeListArray.from_arrays(
        pa.array(np.zeros(220 * 3, np.float32)), 3), "label": [0] * 220}), mixed / "part-00002.parquet")
    nan = tmp_path / "nan"
    os.system(f"cp -r {broken} {nan}")
    t = pq.read_table(nan / "part-00001.parquet")
    x = np.stack(t.column("embedding").to_numpy(zero_copy_only=False))
    x[7, 2] = np.nan
    t = t.set_column(1, "embedding", pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 16))
    pq.write_table(t, nan / "part-00001.parquet")
    (tmp_path / "incomplete").mkdir()
    (tmp_path / "incomplete" / "part-00000.parquet").write_bytes(b"")
    pq.write_table(pa.table({"id": ["img0001", "nope-1", "nope-2"]}), tmp_path / "ex.parquet")
    out = str(tmp_path / "out")
    cases = [
        ([store.uri, "--budget", "0"], "'budget' parameter of select must be a count >= 1"),
        ([store.uri, "--budget", "721"], "budget 721 is larger than the pool of 720 rows"),
        ([str(tmp_path / "incomplete"), "--budget", "5"], "is incomplete \\(no _manifest.json\\)"),
        ([str(tmp_path / "missing"), "--budget", "5"], "embedding store .*missing does not exist"),
        ([str(mixed), "--budget", "5"], "shard .*part-00002.parquet has embedding type .*, the store's dim is 16"),
        ([str(nan), "--budget", "5"], "1 embeddings with NaN/inf \\(first: id 'img0257'\\)"),
        ([store.uri, "--budget", "5", "--method", "kmean"], "unknown selection method 'kmean'.*did you mean 'kmeans'"),
        ([store.uri, "--budget", "5", "--exclude", str(tmp_path / "ex.parquet")],
         "2 excluded ids are not in the store .* \\(e.g. 'nope-1', 'nope-2'\\)"),
        ([store.uri, "--budget", "5", "--method", "fds", "--temperature", "0.1"],
         "'temperature' parameter does not apply to method fds"),
        ([store.uri, "--budget", "5", "--num-workers", "0"], "'num_workers' parameter of select must be an int >= 1"),
    ]
    for argv, pattern in cases:
        assert main(["select", *argv, "-o", out]) == 1, argv
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and re.search(pattern, err), (pattern, err)
        assert not os.path.exists(out), argv
    assert main(["select", store.uri, "--budget", "5", "-o", out]) == 0
    capsys.readouterr()
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\nimg0001,a\nimg0002,b\n")
    assert main(["finetune", store.uri, "--train", str(labels), "-o", out, "--overwrite"]) == 1  # not a finetuning run
    assert "is not a finetuning run; refusing to overwrite it" in capsys.readouterr().err
    assert activeft.read_selection(out).ids


def test_cli_select_prints_summary(store, tmp_path, capsys):
    from activeft.cli import main

    assert main(["select", store.uri, "--budget", "2%", "-o", str(tmp_path / "s"), "--method", "kmeans",
                 "--iterations", "10"]) == 0
    assert re.search(r"14 of 720 selected by kmeans in .* s; coverage 0\.\d+ \(random: 0\.\d+\)",
                     capsys.readouterr().out)
