"""Curation: quotas (``select --balance-by``) over every registered selector, outliers
(``--drop-outliers``) and the per-row scores (``activeft scores``) with their report."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from sharding import sharded

import activeft
from activeft.cli import main
from activeft.engine import lowest, neighbourhood
from activeft.errors import ActiveftError
from activeft.select import get_selector, list_selectors
from activeft.select.quotas import split_budget

pytestmark = pytest.mark.timeout(240)
SIZES = {"rain": 160, "snow": 12, "sun": 400}
LABELED = [f"r{i}" for i in range(172, 182)]  # ten "sun" rows


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """572 rows in six blobs with a pass-through ``weather`` column: rain 160, snow 12, sun 400 rows."""
    d = tmp_path_factory.mktemp("curation")
    rng = np.random.default_rng(0)
    n = sum(SIZES.values())
    x = rng.normal(size=(6, 8))[rng.integers(0, 6, n)] + 0.5 * rng.normal(size=(n, 8))
    x[-1] = x[0] * 1.0001  # a near-copy
    weather = [w for w, k in SIZES.items() for _ in range(k)]
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(n)], "embedding": list(x.astype("float32")),
                             "weather": weather}), d / "e.parquet")
    return activeft.import_embeddings(str(d / "e.parquet"), str(d / "store"))


def test_budget_split_counts_labeled_rows_toward_their_group():
    # uniform over 3 groups, 45 picks, 10 labeled in the third: targets of 55 are 18.33 each; the 12-row
    # group gives all 12 and the rest is split as evenly as the labeled rows allow
    assert split_budget(np.ones(3), np.array([160, 12, 390]), 45, np.array([0, 0, 10])).tolist() == [22, 12, 11]
    # a group above its share through its labeled rows gets nothing
    assert split_budget(np.ones(2), np.array([100, 100]), 10, np.array([0, 30])).tolist() == [10, 0]
    # weights 0 (a group the shares do not name) get nothing
    assert split_budget(np.array([0.5, 0.0, 0.5]), np.array([50, 50, 3]), 10).tolist() == [7, 0, 3]


@pytest.mark.parametrize("method", list_selectors())
def test_quotas_are_exact_for_every_selector(store, tmp_path, method):
    params = get_selector(method).test_params
    sel = activeft.select(store, 45, method=method, balance_by="weather", exclude=LABELED,
                          output=str(tmp_path / "s"), **params)
    got = {w: sel.table.column("weather").to_pylist().count(w) for w in SIZES}
    assert got == {"rain": 22, "snow": 12, "sun": 11} and not set(sel.ids) & set(LABELED)
    assert len(set(sel.ids)) == 45
    groups = json.loads((tmp_path / "s" / "selection.json").read_text())["balance"]["groups"]
    assert [(g["value"], g["labeled"], g["budget"]) for g in groups] == [("rain", 0, 22), ("snow", 0, 12),
                                                                         ("sun", 10, 11)]


def test_proportional_and_named_shares_with_cells(store):
    prop = activeft.select(store, 57, balance_by="weather", quotas="proportional", partitions=2)
    w = prop.table.column("weather").to_pylist()
    assert [w.count(k) for k in SIZES] == [16, 1, 40]  # 57 x (160, 12, 400) / 572 = 15.9, 1.2, 39.9
    assert {c["group"] for c in prop.info["partitions"]["cells_table"]} == {0, 1, 2}
    named = activeft.select(store, 20, balance_by="weather", quotas={"snow": 0.5, "sun": 0.5})
    w = named.table.column("weather").to_pylist()
    assert [w.count(k) for k in SIZES] == [0, 10, 10]


def test_bad_quotas_are_one_line_and_write_nothing(store, tmp_path, capsys):
    out = tmp_path / "s"
    for kwargs, message in (({"balance_by": "season"}, "balance_by 'season' is not a column of the store; it has "
                                                       "id, weather"),
                            ({"balance_by": "weather", "quotas": {"sun": 0.5, "rain": 0.4}}, "summing to 1. Got"),
                            ({"balance_by": "weather", "quotas": {"hail": 1.0}}, "quotas name 'hail', not a value"),
                            ({"balance_by": "weather", "quotas": {"snow": 1.0}}, "budget 20 is larger than the 12"),
                            ({"balance_by": "weather", "dedup": 0.9}, "dedup with balance_by"),
                            ({"drop_outliers": 1.5}, "drop_outliers")):
        with pytest.raises(ActiveftError, match=message):
            activeft.select(store, 20, output=str(out), **kwargs)
        assert not out.exists()
    assert main(["select", store.uri, "--budget", "20", "-o", str(out), "--balance-by", "weather",
                 "--quotas", '{"snow": 0.5, "sun": 0.6}']) == 1
    assert "shares summing to 1" in capsys.readouterr().err and not out.exists()
    assert main(["select", store.uri, "--budget", "20", "-o", str(out), "--balance-by", "weather",
                 "--quotas", '{"snow": 0.5, "sun": 0.5}']) == 0
    assert pq.read_table(out / "selection.parquet").column("weather").to_pylist().count("snow") == 10


def brute_force(x, k):
    d2 = np.maximum(((x[:, None] - x[None]) ** 2).sum(-1), 0)
    np.fill_diagonal(d2, np.inf)
    near = np.sort(d2, 1)[:, :k]
    return np.sqrt(near[:, -1]), (1 - near / 2).mean(1)


def test_scores_are_the_exact_neighbourhood_for_any_number_of_ranks(store):
    x = torch.from_numpy(store.embeddings())
    unique, density = brute_force(x.double().numpy(), 7)
    for bounds in ([0, len(x)], [0, 200, 401, len(x)]):
        for u, d in sharded(lambda pool, comm: neighbourhood(pool, comm, 7), x, bounds):
            np.testing.assert_allclose(u.numpy(), unique, atol=1e-5)
            np.testing.assert_allclose(d.numpy(), density, atol=1e-5)
    assert lowest(torch.tensor([3.0, 1.0, 2.0, 1.0]), 0.5).tolist() == [1, 3]  # ties to the smaller row


def test_outliers_are_never_selected_and_are_what_scores_flags(store, tmp_path):
    table = activeft.scores(store, outliers=0.05, output=str(tmp_path / "scores"))
    flagged = set(np.asarray(table.column("id"))[table.column("outlier").to_numpy(zero_copy_only=False)])
    assert len(flagged) == int(0.05 * len(store))
    sel = activeft.select(store, 30, method="herding", drop_outliers=0.05, exclude=LABELED,
                          output=str(tmp_path / "s"))
    dropped = set(pq.read_table(tmp_path / "s" / "outliers.parquet").column("id").to_pylist())
    assert dropped == flagged - set(LABELED) and not dropped & set(sel.ids)
    assert sel.info["outliers"]["dropped"] == len(dropped)
    # the same rows left out by the cells path
    cells = activeft.select(store, 30, method="kmeans", drop_outliers=0.05, partitions=3)
    assert not set(cells.ids) & flagged


def test_scores_table_groups_and_report_with_thumbnails(tmp_path, capsys):
    rng = np.random.default_rng(1)
    uris = []
    for i in range(30):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path)
        uris.append(str(path))
    x = rng.normal(size=(30, 6)).astype("float32")
    x[28:] = x[3] * 1.0001  # a group of three: row 3 and its two copies
    pq.write_table(pa.table({"id": [f"i{j}" for j in range(30)], "embedding": list(x), "uri": uris}),
                   tmp_path / "e.parquet")
    store = activeft.import_embeddings(str(tmp_path / "e.parquet"), str(tmp_path / "store"))
    assert main(["scores", store.uri, "-o", str(tmp_path / "sc"), "--k", "3", "--outliers", "0.1"]) == 0
    assert "3 in near-duplicate groups, 3 outliers" in capsys.readouterr().out
    table = pq.read_table(tmp_path / "sc" / "scores.parquet")
    assert table["group_size"].to_pylist()[3] == 3 and table["duplicate_of"].to_pylist()[28:] == ["i3"] * 2
    assert table.column("duplicate_of").null_count == 28
    page = (tmp_path / "sc" / "report.html").read_text()
    for title in ("Uniqueness", "Density", "Most unique", "Largest near-duplicate groups", "Outliers"):
        assert f"<h2>{title}</h2>" in page
    assert page.count("data:image/jpeg") >= 24 + 3 + 3 and "3 rows, kept i3" in page
    info = json.loads((tmp_path / "sc" / "scores.json").read_text())
    assert (info["k"], info["outliers"], info["groups"]) == (3, 3, 1)

